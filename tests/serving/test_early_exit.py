"""The early-exit servers: the host loop and the on-device loop against each other and against the
policy applied to a full-depth pass, on a tiny random encoder.

Tolerance for margins: exit layers must be equal exactly; margins (a few units) to rtol = atol =
1e-5 in float32. The servers run each layer on different row counts (host: multiples of the
bucket; device: the ladder; full depth: the whole batch), so XLA's matrix products sum in
different orders and the margins differ by float32 rounding (seen here: up to 2e-6, about 16 ulp
at these magnitudes); 1e-5 leaves room for that and for nothing else.
"""

import logging
import re

import jax
import numpy as np
import pytest

from jaxrec.layers.exit_heads import exits_at
from jaxrec.serving import early_exit as ee
from tests.serving.fake_run import CONFIG, full_margins_fn, random_params, random_prompts

L, T, BUCKET = CONFIG.num_layers, 10, 8
TOL = dict(rtol=1e-5, atol=1e-5)
POLICIES = [(th, agree, min_layer) for th in (0.0, 0.5, 1.0, 2.0, float('inf'))
            for agree in (1, 2) for min_layer in (0, 2)]


@pytest.fixture(scope='module')
def model():
  params = random_params(CONFIG, seed=0, length=T)
  ids, mask = random_prompts(np.random.default_rng(0), 64, T, CONFIG.vocab_size)
  full = np.asarray(full_margins_fn(CONFIG)(params, ids, mask))  # [L, 64]
  host = ee.EarlyExitServer(CONFIG, params, BUCKET)
  device = ee.DeviceEarlyExitServer(CONFIG, params, BUCKET)
  return params, ids, mask, full, host, device


def _running(exit_layer: np.ndarray) -> np.ndarray:
  """Rows still running at each layer ``[L]``, from the exit layers."""
  return np.array([(exit_layer >= l).sum() for l in range(L)])


def test_bucket_ladder():
  assert ee.bucket_ladder(64, 8) == (64, 32, 16, 8)
  assert ee.bucket_ladder(100, 8) == (100, 56, 32, 16, 8)
  assert ee.bucket_ladder(5, 8) == (5,)
  assert ee.bucket_ladder(1, 1) == (1,)
  assert ee.bucket_ladder(20, 8, 'multiples') == (20, 16, 8)
  assert ee.bucket_ladder(64, 16, 'multiples') == (64, 48, 32, 16)
  assert ee.bucket_size(5, 4) == 8 and ee.bucket_size(8, 4) == 8


@pytest.mark.parametrize('batch', [1, 5, 64])
def test_servers_equal_each_other_and_the_policy(model, batch):
  _, ids, mask, full, host, device = model
  ids, mask, full = ids[:batch], mask[:batch], full[:, :batch]
  ladder = np.array(ee.bucket_ladder(batch, BUCKET))
  exited_early = False
  for th, agree, min_layer in POLICIES:
    want_layer, want_margin = exits_at(full, th, agree, min_layer)
    h_margin, h_layer, h_rows = host(ids, mask, th, agree, min_layer)
    d_margin, d_layer, d_rows = device(ids, mask, th, agree, min_layer)
    where = f'threshold={th} agree={agree} min_layer={min_layer}'
    np.testing.assert_array_equal(h_layer, want_layer, err_msg=where)
    np.testing.assert_array_equal(d_layer, want_layer, err_msg=where)
    np.testing.assert_allclose(d_margin, h_margin, **TOL, err_msg=where)
    np.testing.assert_allclose(d_margin, want_margin, **TOL, err_msg=where)
    # each layer ran on the rows not yet exited, padded: host to a multiple of the bucket,
    # device to the smallest ladder size that holds them
    running = _running(want_layer)
    np.testing.assert_array_equal(h_rows, np.where(running > 0, -(-running // BUCKET) * BUCKET,
                                                   0), err_msg=where)
    smallest = np.array([ladder[ladder >= n].min() if n else 0 for n in running])
    np.testing.assert_array_equal(d_rows, smallest, err_msg=where)
    assert d_margin.dtype == h_margin.dtype and d_layer.dtype == h_layer.dtype
    exited_early |= bool(want_layer.min() < L - 1)
  assert exited_early


def test_deeper_layers_run_fewer_rows(model):
  _, ids, mask, full, _, device = model
  _, layer, rows = device(ids, mask, 0.0)
  assert (layer < L - 1).sum() > 32 and rows[0] == 64 and rows[-1] <= 32
  assert np.all(np.diff(rows) <= 0)


def test_multiples_ladder_runs_the_host_loops_rows(model):
  params, ids, mask, _, _, _ = model
  host = ee.EarlyExitServer(CONFIG, params, 16)
  device = ee.DeviceEarlyExitServer(CONFIG, params, 16, ladder='multiples')  # 64, 48, 32, 16
  for th in (0.5, 1.0, 2.0):
    h = host(ids, mask, th)
    d = device(ids, mask, th)
    np.testing.assert_array_equal(d[1], h[1])
    np.testing.assert_array_equal(d[2], h[2])
    np.testing.assert_allclose(d[0], h[0], **TOL)


def test_everyone_exiting_at_layer_zero_runs_one_layer(model):
  _, ids, mask, full, host, device = model
  for server, first in ((host, 64), (device, 64)):
    margin, layer, rows = server(ids, mask, 0.0, agree=0)
    np.testing.assert_array_equal(layer, np.zeros(64))
    np.testing.assert_array_equal(rows, [first] + [0] * (L - 1))
    np.testing.assert_allclose(margin, full[0], **TOL)


def test_one_program_per_batch_size_and_no_host_callback(model, caplog):
  params, ids, mask, _, _, _ = model
  device = ee.DeviceEarlyExitServer(CONFIG, params, BUCKET)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    for th, agree, min_layer in POLICIES:
      device(ids[:5], mask[:5], th, agree, min_layer)
  compiled = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith('Compiling jit(serve_on_device)')]
  assert len(compiled) == 1, compiled  # every policy: one program for batch 5
  text = device.compiled_text(16, T)  # ladder 16, 8
  assert 'while' in text and 'conditional' in text
  assert not _host_transfers(text), _host_transfers(text)

  # the check sees a host callback where there is one
  def with_callback(x):
    jax.debug.callback(lambda v: None, x)
    return x + 1
  assert _host_transfers(jax.jit(with_callback).lower(np.ones(3)).compile().as_text())


def _host_transfers(hlo: str) -> list[str]:
  """HLO instructions that stop for the host: custom calls into Python callbacks, in/outfeed,
  send/recv."""
  op = re.compile(r'= \S+ (infeed|outfeed|send|recv|send-done|recv-done)\(|'
                  r'custom_call_target="[^"]*callback')
  return [line.strip()[:200] for line in hlo.splitlines() if op.search(line)]


@pytest.mark.parametrize('server_cls', [ee.EarlyExitServer, ee.DeviceEarlyExitServer])
def test_bad_requests_are_named(model, server_cls):
  params, ids, mask, _, _, _ = model
  for bucket in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match='bucket must be an int >= 1'):
      server_cls(CONFIG, params, bucket)
  server = server_cls(CONFIG, params, BUCKET)
  with pytest.raises(ValueError, match=r'input_ids \(4, 10\) and attention_mask \(4, 9\)'):
    server(ids[:4], mask[:4, :9], 1.0)
  with pytest.raises(ValueError, match='must both be'):
    server(ids[0], mask[0], 1.0)
  with pytest.raises(ValueError, match='empty request'):
    server(ids[:0], mask[:0], 1.0)
  with pytest.raises(TypeError, match='input_ids must be integers'):
    server(ids[:2].astype(np.float32), mask[:2], 1.0)
  with pytest.raises(ValueError, match='exceed max_position=12'):
    server(np.zeros((2, 13), np.int32), np.ones((2, 13), np.int32), 1.0)
  with pytest.raises(ValueError, match='agree and min_layer must be >= 0'):
    server(ids[:2], mask[:2], 1.0, agree=-1)


def test_bad_ladder_is_named(model):
  with pytest.raises(ValueError, match="ladder must be one of .* got 'thirds'"):
    ee.DeviceEarlyExitServer(CONFIG, model[0], BUCKET, ladder='thirds')
