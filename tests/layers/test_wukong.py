"""Tests of jaxrec.layers.wukong against plain and brute-force numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.wukong import (FactorizationMachineBlock, LinearCompression, WukongLayer,
                                  optimized_fm)
from tests.models.tiny import np_mlp

RTOL, ATOL = 1e-5, 1e-5


def _x(batch=4, n=5, d=3, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, n, d)).astype(np.float32)


def _params(module, *args, seed=1, scale=0.3):
  """Parameters of ``module`` drawn N(0, scale) from ``jax.eval_shape`` shapes (fast)."""
  shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32),
                      shapes['params'])


def _np_layer_norm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _brute_force_fm(x, y):
  """``out[b, i, j] = sum_l <x_bi, x_bl> y_lj`` by explicit loops, float64."""
  b, n, d = x.shape
  k = y.shape[-1]
  out = np.zeros((b, n, k))
  for e in range(b):
    ye = y[e] if y.ndim == 3 else y
    for i in range(n):
      for j in range(k):
        out[e, i, j] = sum(float(np.dot(x[e, i].astype(np.float64), x[e, l])) * ye[l, j]
                           for l in range(n))
  return out


@pytest.mark.parametrize('per_example', [False, True], ids=['shared_y', 'per_example_y'])
def test_optimized_fm_equals_gram_product_and_brute_force(per_example):
  x = _x(n=6, d=4)
  rng = np.random.default_rng(2)
  y = rng.normal(size=(4, 6, 3) if per_example else (6, 3)).astype(np.float32)
  out = np.asarray(optimized_fm(x, y))
  gram = np.einsum('bnd,bmd->bnm', x.astype(np.float64), x)  # the plain X X^T
  plain = gram @ y.astype(np.float64)  # [B, n, k]
  assert out.shape == (4, 6, 3)
  np.testing.assert_allclose(out, plain, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(out, _brute_force_fm(x, y), rtol=RTOL, atol=ATOL)


def test_optimized_fm_never_forms_the_gram_matrix():
  # The compiled contraction has no [B, n, n] intermediate: its FLOPs are 4 B n d k, not
  # 2 B n^2 d + 2 B n^2 k (n = 64, d = 4, k = 2: 4,096 vs 24,576 per example).
  b, n, d, k = 2, 64, 4, 2
  compiled = jax.jit(optimized_fm).lower(jnp.ones((b, n, d)), jnp.ones((n, k))).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert cost['flops'] == 4 * b * n * d * k


def test_optimized_fm_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r'y must be \[n, k\]'):
    optimized_fm(_x(n=5), np.ones((4, 2), np.float32))
  with pytest.raises(ValueError, match=r'x must be \[batch, n, d\]'):
    optimized_fm(np.ones((5, 3), np.float32), np.ones((5, 2), np.float32))


def test_linear_compression_matches_numpy():
  x = _x()
  lcb = LinearCompression(num_outputs=2)
  p = _params(lcb, x)
  assert p['kernel'].shape == (5, 2)
  out = lcb.apply({'params': p}, x)
  ref = np.einsum('bnd,nm->bmd', x.astype(np.float64), p['kernel'])
  loop = np.stack([sum(p['kernel'][i, j] * x[:, i].astype(np.float64) for i in range(5))
                   for j in range(2)], axis=1)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(out, loop, rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match='num_outputs'):
    LinearCompression(num_outputs=0)


@pytest.mark.parametrize('projection', ['learned', 'projected'])
def test_fmb_matches_numpy(projection):
  x = _x(n=5, d=3)
  fmb = FactorizationMachineBlock(num_outputs=4, rank=2, mlp_units=(6,), projection=projection)
  p = _params(fmb, x, False)
  out = fmb.apply({'params': p}, x, False)
  x64 = x.astype(np.float64)
  if projection == 'learned':
    assert p['fm_projection'].shape == (5, 2)
    y = p['fm_projection']
  else:
    assert p['fm_projection'].shape == (3, 2)
    y = x64 @ p['fm_projection']  # [B, n, k]
  fm = np.einsum('bnm,bmk->bnk', np.einsum('bnd,bmd->bnm', x64, x64),
                 np.broadcast_to(y, (4, 5, 2))).reshape(4, 10)
  ref = np_mlp(p['mlp'], _np_layer_norm(fm, p['norm'])).reshape(4, 4, 3)
  assert out.shape == (4, 4, 3)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('n, nf, nl', [(5, 2, 3), (4, 3, 3), (4, 0, 2), (4, 2, 0)],
                         ids=['identity_residual', 'projected_residual', 'lcb_only', 'fmb_only'])
@pytest.mark.parametrize('norm', ['embedding', 'layer'])
def test_wukong_layer_matches_numpy(n, nf, nl, norm):
  x = _x(n=n, d=3)
  layer = WukongLayer(num_fm_outputs=nf, num_lcb_outputs=nl, rank=2, mlp_units=(5,), norm=norm)
  p = _params(layer, x, False)
  out = layer.apply({'params': p}, x, False)
  x64 = x.astype(np.float64)
  parts = []
  if nf:
    y = p['fmb']['fm_projection']
    fm = (np.einsum('bnd,bmd->bnm', x64, x64) @ y).reshape(4, -1)
    parts.append(np_mlp(p['fmb']['mlp'], _np_layer_norm(fm, p['fmb']['norm'])).reshape(4, nf, 3))
  if nl:
    parts.append(np.einsum('bnd,nm->bmd', x64, p['lcb']['kernel']))
  if n == nf + nl:
    assert 'residual' not in p
    residual = x64
  else:
    residual = np.einsum('bnd,nm->bmd', x64, p['residual']['kernel'])
  pre = np.concatenate(parts, 1) + residual  # [4, nf + nl, 3]
  if norm == 'embedding':
    ref = _np_layer_norm(pre, p['norm'])
  else:
    assert p['norm']['scale'].shape == ((nf + nl) * 3,)
    ref = _np_layer_norm(pre.reshape(4, -1), p['norm']).reshape(pre.shape)
  assert out.shape == (4, nf + nl, 3)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_wukong_blocks_validate_arguments():
  with pytest.raises(ValueError, match='projection'):
    FactorizationMachineBlock(num_outputs=2, rank=2, projection='attention')
  with pytest.raises(ValueError, match='rank'):
    FactorizationMachineBlock(num_outputs=2, rank=0)
  with pytest.raises(ValueError, match='num_fm_outputs \\+ num_lcb_outputs'):
    WukongLayer(num_fm_outputs=0, num_lcb_outputs=0, rank=2)
  with pytest.raises(ValueError, match='num_lcb_outputs'):
    WukongLayer(num_fm_outputs=1, num_lcb_outputs=-1, rank=2)
  with pytest.raises(ValueError, match="norm must be one of \\('embedding', 'layer'\\)"):
    WukongLayer(num_fm_outputs=1, num_lcb_outputs=1, rank=2, norm='batch')


def test_wukong_layer_logical_axes():
  x = _x()
  layer = WukongLayer(num_fm_outputs=2, num_lcb_outputs=2, rank=3, mlp_units=(4,),
                      projection='projected')
  boxed = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, False))['params']
  names = {'/'.join(str(k.key) for k in path): leaf.names for path, leaf in
           jax.tree_util.tree_leaves_with_path(
               boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))}
  assert names['lcb/kernel'] == ('fields_in', 'fields')
  assert names['residual/kernel'] == ('fields_in', 'fields')
  assert names['fmb/fm_projection'] == ('embed', 'rank')
  assert names['fmb/norm/scale'] == ('mlp_in',)
  assert names['norm/bias'] == ('embed',)
  assert names['fmb/mlp/output/kernel'] == ('mlp_in', 'mlp_out')
