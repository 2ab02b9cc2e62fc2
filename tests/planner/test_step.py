"""The measured step: buckets, the fused layout, the same update as exact shapes, compiled once."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.planner import step
from jaxrec.planner.tasks import sample_ids
from tests.planner.common import table

B = 16


def _works(specs, seed=0):
  """``ShardWork`` s of tables ``(rows, width, pooling)``, ids drawn like the ground truth."""
  out = []
  for j, (rows, width, pooling) in enumerate(specs):
    t = table(f't{j}', rows, width, pooling, skew=0.5)
    ids, samples = sample_ids(t, B, np.random.default_rng([seed, j]))
    out.append(step.ShardWork(rows, width, ids, samples, B, t))
  return out


def test_round_up_is_a_geometric_grid():
  assert [step.round_up(n, 8) for n in (1, 8, 9, 17, 1000, 1024, 1025)] == [
      1, 8, 9, 18, 1024, 1024, 1152]
  assert step.round_up(1000, 0) == 1000
  for n in range(1, 5000, 37):
    v = step.round_up(n, 8)
    assert n <= v <= n * 1.125 and step.round_up(v, 8) == v  # at most +12.5 %, idempotent
  assert step.Buckets(buffer_bytes=4096).rows(10, 8) == 128  # 4096 bytes of width 8, a power of 2
  assert step.Buckets().rows(100, 8) == 128 and step.Buckets.exact().rows(100, 8) == 100
  assert step.Buckets(min_ids=256).ids(5) == 256 and step.Buckets(min_ids=256).ids(300) == 320


def test_shards_of_one_width_share_a_fused_buffer():
  works = _works([(30, 8, 3.0), (17, 4, 2.0), (40, 8, 1.5)])
  groups = step.group_works(works, step.Buckets(), 'rowwise_adagrad')
  assert [g.key.width for g in groups] == [8, 4]
  g = groups[0]
  n0, n2 = works[0].ids.size, works[2].ids.size
  assert g.real_ids == n0 + n2 and g.key.ids == step.round_up(n0 + n2, 8)
  assert (g.key.rows, g.key.segments) == (128, 2 * B)  # 70 rows -> 128; two batches
  # The second shard's rows and samples follow the first's; the padding is out of range.
  np.testing.assert_array_equal(g.ids[:n0], works[0].ids)
  np.testing.assert_array_equal(g.ids[n0:n0 + n2], works[2].ids + 30)
  np.testing.assert_array_equal(g.segments[n0:n0 + n2], works[2].samples + B)
  assert (g.ids[n0 + n2:] == g.key.rows).all() and (g.segments[n0 + n2:] == 2 * B).all()
  assert step.padded_fraction(works, step.Buckets.exact()) == 0.0


def _run(works, buckets):
  """One step of each group from the same start: per width, the real rows of the tables and of
  the accumulators, the loss, and the accumulators of the rows past the real ones."""
  cache = step.StepCache()
  out = {}
  for g in step.group_works(works, buckets, 'rowwise_adagrad'):
    opt = SparseOptimizer('rowwise_adagrad', 0.01)
    tab = jnp.asarray(np.random.default_rng(g.key.width).normal(size=(g.key.rows, g.key.width)),
                      jnp.float32)
    cot = jnp.asarray(np.random.default_rng(1).normal(size=(g.key.segments, g.key.width)),
                      jnp.float32)
    tab, state, loss = cache.program(g.key)(tab, opt.init(tab), jnp.asarray(g.ids),
                                            jnp.asarray(g.segments), cot)
    real = sum(w.rows for w in works if w.width == g.key.width)
    acc = np.asarray(state['acc'])
    out[g.key.width] = (np.asarray(tab)[:real], acc[:real], float(loss), acc[real:])
  return out


def test_padding_changes_no_update():
  # Bucketed shapes update the real rows exactly as exact shapes do (the padded rows, ids and
  # segments are no work's inputs): same tables and gradients of the real segments.
  works = _works([(30, 8, 3.0), (17, 4, 2.0), (40, 8, 1.5)], seed=3)
  exact, padded = step.Buckets.exact(), step.Buckets(ids_per_octave=2, segments_per_octave=1,
                                                       buffer_bytes=2 ** 12)
  assert step.padded_fraction(works, padded) > 0
  a, b = _run(works, exact), _run(works, padded)
  for w in a:
    # Tables and gradients are drawn row-major from the same seeds, so the real rows and
    # segments start alike in both shapes.
    np.testing.assert_allclose(a[w][1], b[w][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[w][0], b[w][0], rtol=1e-5, atol=1e-6)
    assert b[w][2] == pytest.approx(a[w][2], rel=1e-5)
    assert b[w][3].size and not b[w][3].any()  # no padding id updated a row


def test_the_step_updates_in_place_without_copying_the_buffer():
  # XLA on CPU copies a donated table when the lookup's output is not an input of the update;
  # the step's gradient depends on the pooled outputs so it does not (module docstring).
  key = step.GroupKey(8, 4096, 64, 32, 'rowwise_adagrad')
  text = step.StepCache().program(key).as_text()
  assert not re.search(r'= f32\[4096,8\]\{1,0\} copy\(', text)
  assert 'input_output_alias' in text


def test_programs_and_buffers_are_reused():
  cache = step.StepCache()
  a = _works([(30, 8, 3.0), (17, 8, 2.0)], seed=1)
  b = _works([(31, 8, 3.0), (16, 8, 2.0)], seed=1)  # same buckets
  ka = step.group_works(a, step.Buckets(), 'rowwise_adagrad')[0].key
  kb = step.group_works(b, step.Buckets(), 'rowwise_adagrad')[0].key
  assert ka == kb
  t = step.measure_device(a, warmup=1, runs=3, cache=cache)
  step.measure_device(b, warmup=0, runs=2, cache=cache)
  assert cache.compiles == 1 and len(cache.buffers) == 1
  assert t.runs == 3 and 0 < t.min_ms <= t.p25_ms <= t.median_ms <= t.p75_ms <= t.max_ms
  assert step.measure_device([], cache=cache).runs == 0


def test_buffers_beyond_the_budget_are_dropped():
  cache = step.StepCache(max_buffer_bytes=1)
  for width in (4, 8):
    cache.buffers_for(step.GroupKey(width, 64, 8, 8, 'sgd'))
  assert list(cache.buffers) == [(8, 64, 'sgd')]  # the latest is always kept


@pytest.mark.parametrize('kind', ['sgd', 'adam'])
def test_other_optimizers_compile(kind):
  works = _works([(20, 4, 2.0)])
  assert step.measure_device(works, optimizer=kind, warmup=0, runs=1).runs == 1
