"""Tests of jaxrec.layers.interactions against brute-force numpy references."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.layers import interactions
from jaxrec.layers.interactions import (CrossLayer, CrossNet, LowRankMoECrossLayer, bi_interaction,
                                        dot_interaction, fm_second_order, pair_indices)

RTOL, ATOL = 1e-5, 1e-6


def _emb(batch=4, fields=5, dim=3, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, fields, dim)).astype(np.float32)


def test_fm_second_order_equals_pairwise_loop():
  x = _emb()
  b, f, _ = x.shape
  ref = np.zeros(b)
  ref_bi = np.zeros((b, x.shape[2]))
  for i in range(f):
    for j in range(i + 1, f):
      ref += np.sum(x[:, i].astype(np.float64) * x[:, j], axis=-1)
      ref_bi += x[:, i].astype(np.float64) * x[:, j]
  np.testing.assert_allclose(fm_second_order(x), ref, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bi_interaction(x), ref_bi, rtol=RTOL, atol=ATOL)
  assert fm_second_order(x).shape == (b,)


def test_dot_interaction_equals_loop_in_row_major_order():
  x = _emb(fields=6)
  b, f, _ = x.shape
  cols = []
  for i in range(f):
    for j in range(i + 1, f):
      cols.append(np.sum(x[:, i].astype(np.float64) * x[:, j], axis=-1))
  ref = np.stack(cols, axis=1)
  out = dot_interaction(x)
  assert out.shape == (b, f * (f - 1) // 2)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
  rows, cols_ = pair_indices(4)
  assert list(zip(rows.tolist(), cols_.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3),
                                                      (2, 3)]
  assert dot_interaction(_emb(fields=1)).shape == (4, 0)


def _random_params(module, *args, seed=1, scale=0.3):
  """Parameters of ``module`` drawn N(0, scale); shapes from ``jax.eval_shape`` (fast)."""
  shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32),
                      shapes['params'])


def test_cross_layer_equals_formula():
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(5, 7)).astype(np.float32)
  xl = rng.normal(size=(5, 7)).astype(np.float32)
  layer = CrossLayer()
  params = _random_params(layer, x0, xl)
  w, b = params['kernel'].astype(np.float64), params['bias']
  ref = x0 * (xl @ w + b) + xl
  np.testing.assert_allclose(layer.apply({'params': params}, x0, xl), ref, rtol=RTOL, atol=ATOL)


def test_cross_net_stacks_on_the_same_x0():
  x0 = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  net = CrossNet(num_layers=3)
  params = _random_params(net, x0)
  x = x0.astype(np.float64)
  for i in range(3):
    p = params[f'cross_{i}']
    x = x0 * (x @ p['kernel'] + p['bias']) + x
  np.testing.assert_allclose(net.apply({'params': params}, x0), x, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(CrossNet(0).apply({}, x0), x0)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_low_rank_moe_cross_equals_formula():
  rng = np.random.default_rng(0)
  d, r, e = 6, 3, 4
  x0 = rng.normal(size=(5, d)).astype(np.float32)
  xl = rng.normal(size=(5, d)).astype(np.float32)
  layer = LowRankMoECrossLayer(low_rank=r, num_experts=e)
  params = _random_params(layer, x0, xl)
  assert params['V'].shape == (e, d, r) and params['C'].shape == (e, r, r)
  assert params['U'].shape == (e, r, d) and params['gate'].shape == (d, e)
  gates = _softmax(xl.astype(np.float64) @ params['gate'])  # [B, E]
  ref = xl.astype(np.float64).copy()
  for k in range(e):
    h = np.tanh(xl.astype(np.float64) @ params['V'][k])
    h = np.tanh(h @ params['C'][k])
    ref += gates[:, k:k + 1] * x0 * (h @ params['U'][k] + params['bias'])
  np.testing.assert_allclose(layer.apply({'params': params}, x0, xl), ref, rtol=RTOL, atol=ATOL)


def test_one_linear_full_rank_expert_is_the_full_cross_layer():
  rng = np.random.default_rng(1)
  d = 5
  x0 = rng.normal(size=(4, d)).astype(np.float32)
  xl = rng.normal(size=(4, d)).astype(np.float32)
  moe = LowRankMoECrossLayer(low_rank=d, num_experts=1, activation=None)
  p = _random_params(moe, x0, xl)
  w = (p['V'][0].astype(np.float64) @ p['C'][0] @ p['U'][0]).astype(np.float32)
  full = {'params': {'kernel': w, 'bias': p['bias']}}
  np.testing.assert_allclose(moe.apply({'params': p}, x0, xl),
                             CrossLayer().apply(full, x0, xl), rtol=RTOL, atol=ATOL)


def test_low_rank_init_matches_pytorch_fans():
  # Untruncated normals scaled as PyTorch's xavier_normal_ on [E, a, r] tensors:
  # fan_in = a * r, fan_out = E * r; each expert's gate as nn.Linear(D, 1): fans D and 1.
  d, r, e = 4, 3, 2
  key = jax.random.key(5)
  cases = ((interactions._expert_init_v, (e, d, r), d * r + e * r),   # V
           (interactions._expert_init_v, (e, r, r), r * r + e * r),   # C
           (interactions._expert_init_u, (e, r, d), d * r + e * r),   # U
           (interactions._gate_init, (d, e), d + 1))                  # gate
  for init_fn, shape, fan_sum in cases:
    expected = jax.random.normal(key, shape) * np.sqrt(2.0 / fan_sum)
    np.testing.assert_allclose(init_fn(key, shape), expected, rtol=RTOL, atol=ATOL)
  x = np.zeros((1, d), np.float32)
  shapes = jax.eval_shape(lambda: LowRankMoECrossLayer(r, e).init(jax.random.key(0), x, x))
  assert {k: v.value.shape for k, v in shapes['params'].items()} == {
      'V': (e, d, r), 'C': (e, r, r), 'U': (e, r, d), 'gate': (d, e), 'bias': (d,)}


def test_logical_axes():
  x = np.zeros((2, 4), np.float32)
  def names(module):
    v = jax.eval_shape(lambda: module.init(jax.random.key(0), x, x))
    return jax.tree.map(lambda b: b.names, v['params'],
                        is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))

  assert names(CrossLayer()) == {
      'kernel': ('cross_in', 'cross'), 'bias': ('cross',)}
  assert names(LowRankMoECrossLayer(2, 3)) == {
      'V': ('expert', 'cross_in', 'rank'), 'C': ('expert', 'rank_in', 'rank'),
      'U': ('expert', 'rank_in', 'cross'), 'gate': ('cross_in', 'expert'), 'bias': ('cross',)}


@pytest.mark.parametrize('make, match', [
    (lambda: LowRankMoECrossLayer(low_rank=0), 'low_rank'),
    (lambda: LowRankMoECrossLayer(num_experts=0), 'num_experts'),
    (lambda: LowRankMoECrossLayer(activation='nope'), 'nope'),
    (lambda: CrossNet(num_layers=-1), 'num_layers'),
    (lambda: pair_indices(0), 'num_fields'),
])
def test_bad_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()
