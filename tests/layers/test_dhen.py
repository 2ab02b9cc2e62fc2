"""Tests of jaxrec.layers.dhen: every module and the layer against numpy references."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.layers import LOGICAL_AXIS_NAMES
from jaxrec.layers import dhen as dhen_lib
from jaxrec.layers import wukong as wukong_lib
from jaxrec.layers.dhen import (AttentionModule, ConvModule, CrossModule, DHENLayer,
                                DotProductModule, LinearModule, SelfAttentionEncoder)
from tests.models.tiny import np_mlp

RTOL, ATOL = 1e-5, 1e-5
B, N, D = 4, 5, 4


def _x(seed=0, n=N, d=D):
  return np.random.default_rng(seed).normal(size=(B, n, d)).astype(np.float32)


def _params(module, *args, seed=1, scale=0.3):
  shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32),
                      shapes['params'])


def _ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _proj(p, z, m, d=D):
  return (z @ p['output']['kernel'] + p['output']['bias']).reshape(len(z), m, d)


def _np_dot(p, x, m):
  n = x.shape[1]
  pairs = np.stack([(x[:, i] * x[:, j]).sum(-1) for i in range(n) for j in range(i + 1, n)], 1)
  return _proj(p['projection'], pairs, m)


def _relu(x):
  return np.maximum(x, 0)


def _np_encoder(p, x, heads, act=_relu):
  b, n, d = x.shape
  dh = d // heads
  qkv = {k: np.einsum('bnd,dhk->bnhk', x, p[f'{k}_kernel']) + p[f'{k}_bias']
         for k in ('query', 'key', 'value')}
  att = np.zeros((b, n, heads, dh))
  for e in range(b):
    for h in range(heads):
      s = qkv['query'][e, :, h] @ qkv['key'][e, :, h].T / np.sqrt(dh)  # [n, n]
      w = np.exp(s - s.max(1, keepdims=True))
      w /= w.sum(1, keepdims=True)
      att[e, :, h] = w @ qkv['value'][e, :, h]
  out = np.einsum('bnhk,hkd->bnd', att, p['out_kernel']) + p['out_bias']
  h1 = _ln(x + out, p['norm_attention'])
  f = np_mlp(p['ffn'], h1.reshape(b * n, d), act=act).reshape(b, n, d)
  return _ln(h1 + f, p['norm_ffn'])


def _np_attention(p, x, m, heads, act=_relu):
  return np.einsum('bnd,nm->bmd', _np_encoder(p['encoder'], x, heads, act),
                   p['compression']['kernel'])


def _np_cross(p, x, m, layers):
  x0 = x.reshape(len(x), -1)
  h = x0
  for i in range(layers):
    q = p['crossnet'][f'cross_{i}']
    h = x0 * (h @ q['kernel'] + q['bias']) + h
  return _proj(p['projection'], h, m)


def _np_linear(p, x, m):
  return np.einsum('bnd,nm->bmd', x, p['compression']['kernel'])


def _np_conv(p, x, m, kh, kw, act=_relu):
  """SAME 2-D cross-correlation by explicit loops, then the activation, flatten, projection."""
  k, bias = p['conv']['kernel'], p['conv']['bias']  # [kh, kw, 1, C], [C]
  b, n, d = x.shape
  c = k.shape[-1]
  top, left = (kh - 1) // 2, (kw - 1) // 2
  pad = np.zeros((b, n + kh - 1, d + kw - 1))
  pad[:, top:top + n, left:left + d] = x
  out = np.zeros((b, n, d, c))
  for i in range(n):
    for j in range(d):
      window = pad[:, i:i + kh, j:j + kw]  # [B, kh, kw]
      out[:, i, j] = np.einsum('bhw,hwc->bc', window, k[:, :, 0]) + bias
  return _proj(p['projection'], act(out).reshape(b, -1), m)


def test_dot_module_matches_numpy():
  x = _x()
  mod = DotProductModule(num_outputs=3)
  p = _params(mod, x, False)
  assert p['projection']['output']['kernel'].shape == (N * (N - 1) // 2, 3 * D)
  np.testing.assert_allclose(mod.apply({'params': p}, x, False), _np_dot(p, x.astype(float), 3),
                             rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match='at least 2 embeddings'):
    mod.init(jax.random.key(0), _x(n=1), False)


@pytest.mark.parametrize('heads', [1, 2])
def test_attention_module_matches_numpy(heads):
  x = _x()
  mod = AttentionModule(num_outputs=3, num_heads=heads, ffn_units=6)
  p = _params(mod, x, False)
  assert p['encoder']['ffn']['dense_0']['kernel'].shape == (D, 6)
  np.testing.assert_allclose(mod.apply({'params': p}, x, False),
                             _np_attention(p, x.astype(float), 3, heads), rtol=RTOL, atol=ATOL)


def test_attention_encoder_defaults_and_head_check():
  x = _x()
  p = _params(SelfAttentionEncoder(), x, False)
  assert p['ffn']['dense_0']['kernel'].shape == (D, 4 * D)  # ffn_units=None -> 4 d
  with pytest.raises(ValueError, match='num_heads=3 must be >= 1 and divide'):
    SelfAttentionEncoder(num_heads=3).init(jax.random.key(0), x, False)


@pytest.mark.parametrize('layers', [1, 2])
def test_cross_module_matches_numpy(layers):
  x = _x()
  mod = CrossModule(num_outputs=2, num_layers=layers)
  p = _params(mod, x, False)
  np.testing.assert_allclose(mod.apply({'params': p}, x, False),
                             _np_cross(p, x.astype(float), 2, layers), rtol=RTOL, atol=ATOL)


def test_linear_module_matches_numpy():
  x = _x()
  mod = LinearModule(num_outputs=3)
  p = _params(mod, x, False)
  np.testing.assert_allclose(mod.apply({'params': p}, x, False),
                             _np_linear(p, x.astype(float), 3), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('kernel', [(3, 3), (2, 3)])
def test_conv_module_matches_numpy(kernel):
  x = _x()
  mod = ConvModule(num_outputs=2, channels=3, kernel_size=kernel)
  p = _params(mod, x, False)
  assert p['conv']['kernel'].shape == (*kernel, 1, 3)
  np.testing.assert_allclose(mod.apply({'params': p}, x, False),
                             _np_conv(p, x.astype(float), 2, *kernel), rtol=RTOL, atol=ATOL)


def _np_module(kind, p, x, m, act=_relu):
  """Reference of one module (attention with 2 heads, 1 cross layer, 3 x 3 conv)."""
  return {'dot': lambda: _np_dot(p, x, m), 'attention': lambda: _np_attention(p, x, m, 2, act),
          'cross': lambda: _np_cross(p, x, m, 1), 'linear': lambda: _np_linear(p, x, m),
          'conv': lambda: _np_conv(p, x, m, 3, 3, act)}[kind]()


@pytest.mark.parametrize('ensemble, shortcut, m', [
    ('concat', 'projection', 2), ('sum', 'projection', 3), ('weighted_sum', 'projection', 3),
    ('sum', 'identity', N), ('weighted_sum', 'identity', N)])
def test_dhen_layer_matches_numpy(ensemble, shortcut, m):
  kinds = ('dot', 'attention', 'cross', 'linear', 'conv')
  x = _x()
  layer = DHENLayer(kinds, m, ensemble, shortcut, num_heads=2, ffn_units=5, conv_channels=2)
  p = _params(layer, x, False)
  out = layer.apply({'params': p}, x, False)
  x64 = x.astype(np.float64)
  outs = [_np_module(k, p[f'{k}_{i}'], x64, m) for i, k in enumerate(kinds)]
  if ensemble == 'concat':
    y = np.concatenate(outs, 1)
  elif ensemble == 'sum':
    y = sum(outs)
  else:
    y = sum(w * o for w, o in zip(p['ensemble_weights'], outs))
  short = x64 if shortcut == 'identity' else np.einsum('bnd,nm->bmd', x64,
                                                       p['shortcut']['kernel'])
  ref = _ln(y + short, p['norm'])
  assert out.shape == ((B, len(kinds) * m, D) if ensemble == 'concat' else (B, m, D))
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_weighted_sum_starts_as_the_mean_and_repeated_modules_are_distinct():
  x = _x()
  layer = DHENLayer(('linear', 'linear'), 3, 'weighted_sum')
  variables = nn.unbox(layer.init(jax.random.key(0), x, False))
  np.testing.assert_array_equal(variables['params']['ensemble_weights'], [0.5, 0.5])
  assert not np.allclose(variables['params']['linear_0']['compression']['kernel'],
                         variables['params']['linear_1']['compression']['kernel'])


def test_dhen_layer_validates_arguments():
  x = _x()
  with pytest.raises(ValueError, match=r"unknown module\(s\) \['mlp'\]"):
    DHENLayer(('dot', 'mlp'), 3)
  with pytest.raises(ValueError, match='non-empty sequence'):
    DHENLayer((), 3)
  with pytest.raises(ValueError, match='ensemble'):
    DHENLayer(('dot',), 3, ensemble='max')
  with pytest.raises(ValueError, match='shortcut'):
    DHENLayer(('dot',), 3, shortcut='gate')
  with pytest.raises(ValueError, match='shortcut=identity needs the ensemble to keep the 5'):
    DHENLayer(('dot', 'linear'), N, ensemble='concat', shortcut='identity').init(
        jax.random.key(0), x, False)


def test_every_parameter_has_logical_axes():
  x = _x()
  layer = DHENLayer(('dot', 'attention', 'cross', 'linear', 'conv'), 3, 'weighted_sum',
                    num_heads=2)
  boxed = jax.eval_shape(lambda: layer.init(jax.random.key(0), x, False))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
  known = set(LOGICAL_AXIS_NAMES) | set(wukong_lib.AXIS_NAMES) | set(dhen_lib.AXIS_NAMES)
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == len(leaf.value.shape)
    assert set(leaf.names) <= known, leaf.names
