"""DLRMDCN and TorchRec-style initialisation, against numpy references (no torch needed)."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxrec.compat.dlrm_dcn import DLRMDCN, LowRankCrossLayer
from jaxrec.compat.torchrec_init import torchrec_init
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.dlrm import DLRM
from tests.models.tiny import MIXED, make_batch, np_embed, np_mlp, random_variables, relu

RTOL, ATOL = 1e-5, 1e-5
D = 3


def _model(**kw):
  return DLRMDCN(MIXED, embedding_dim=D, **{**dict(bottom_mlp_units=(5,), num_cross_layers=2,
                                                   low_rank=2, top_mlp_units=(6, 4)), **kw})


def _np_dlrm_dcn(params, schema, batch):
  emb = np_embed(params['embedding'], schema, batch)  # [B, F, d]
  x0 = emb.reshape(emb.shape[0], -1)
  if schema.num_dense:
    x0 = np.concatenate([x0, np_mlp(params['bottom_mlp'], batch['dense'], out_act=relu)], -1)
  x = x0
  cross = params.get('crossnet', {})
  i = 0
  while f'cross_{i}' in cross:
    p = cross[f'cross_{i}']
    x = x0 * ((x @ p['V']) @ p['U'] + p['bias']) + x
    i += 1
  return np_mlp(params['fc'], np_mlp(params['stacked_dnn'], x))[:, 0]


@pytest.mark.parametrize('layers', [0, 1, 3])
def test_dlrm_dcn_matches_numpy(layers):
  model = _model(num_cross_layers=layers)
  batch = make_batch(MIXED, rows=16)
  variables = random_variables(model, batch)
  out = model.apply(variables, batch, train=True)
  assert out.shape == (16,) and out.dtype == np.float32
  np.testing.assert_allclose(out, _np_dlrm_dcn(variables['params'], MIXED, batch),
                             rtol=RTOL, atol=ATOL)


def test_parameter_names_and_shapes():
  params = random_variables(_model(), make_batch(MIXED))['params']
  width = MIXED.num_fields * D + D  # fields plus the bottom MLP's d-wide output
  shapes = {'/'.join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
  assert shapes['crossnet/cross_0/V'] == (width, 2)
  assert shapes['crossnet/cross_1/U'] == (2, width)
  assert shapes['crossnet/cross_1/bias'] == (width,)
  assert shapes['bottom_mlp/output/kernel'] == (5, D)
  assert shapes['stacked_dnn/dense_0/kernel'] == (width, 6)
  assert shapes['fc/output/kernel'] == (4, 1)


def test_cross_layer_init_is_xavier_normal_and_zero_bias():
  dim, r = 300, 100
  x = np.zeros((1, dim), np.float32)
  params = nn.unbox(LowRankCrossLayer(r).init(jax.random.key(0), x, x)['params'])
  std = math.sqrt(2.0 / (dim + r))
  for name in ('V', 'U'):
    assert abs(params[name].std() / std - 1) < 0.03, name
  np.testing.assert_array_equal(params['bias'], 0)


def test_bad_arguments():
  with pytest.raises(ValueError, match='top_mlp_units'):
    _model(top_mlp_units=())
  with pytest.raises(ValueError, match='low_rank'):
    LowRankCrossLayer(0)


@pytest.mark.parametrize('model', [
    _model(),
    DLRM(MIXED, embedding_dim=D, top_mlp_units=(6, 4), bottom_mlp_units=(5,))],
    ids=['dlrm_dcn', 'dlrm'])
def test_torchrec_init_bounds_and_spread(model):
  params = random_variables(model, make_batch(MIXED))['params']
  new = torchrec_init(params, jax.random.key(3))
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, new)
  flat = traverse_util.flatten_dict(new)
  for path, value in flat.items():
    value = np.asarray(value)
    name = '/'.join(path)
    if path[0] == 'embedding':
      bound = math.sqrt(1.0 / value.shape[0])
    elif path[0] == 'crossnet':
      if path[-1] == 'bias':
        np.testing.assert_array_equal(value, 0, err_msg=name)
      continue
    else:
      bound = 1.0 / math.sqrt(flat[path[:-1] + ('kernel',)].shape[0])
    assert np.all(np.abs(value) <= bound), name
    # A uniform draw of >= 16 values covers most of its interval (P(max < 0.7 bound) < 0.4%).
    if value.size >= 16:
      assert np.max(np.abs(value)) > 0.7 * bound, name
  # The same key gives the same draw, another key another one.
  jax.tree.map(np.testing.assert_array_equal, new, torchrec_init(params, jax.random.key(3)))
  other = torchrec_init(params, jax.random.key(4))
  assert not np.array_equal(new['embedding']['user'], other['embedding']['user'])


def test_torchrec_init_rejects_other_models():
  model = DCNv2(MIXED, embedding_dim=D, num_cross_layers=1, parallel_dnn_hidden_units=(4,))
  params = random_variables(model, make_batch(MIXED))['params']
  with pytest.raises(ValueError, match='crossnet/cross_0/kernel'):
    torchrec_init(params, jax.random.key(0))
  bn = DLRM(MIXED, embedding_dim=D, top_mlp_units=(4,), bottom_mlp_units=(), batch_norm=True)
  with pytest.raises(ValueError, match='bn_0'):
    torchrec_init(random_variables(bn, make_batch(MIXED))['params'], jax.random.key(0))
