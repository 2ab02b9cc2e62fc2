"""Tests of jaxrec.layers.mlp against numpy references."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.layers.mlp import MLP, get_activation, xavier_normal

RTOL, ATOL = 1e-5, 1e-6


def _x(batch=16, dim=6, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, dim)).astype(np.float32)


def _random_params(mlp, x, seed=1):
  """Parameters of ``mlp`` drawn N(0, 0.5) (so biases and BN affine terms matter).

  Shapes come from ``jax.eval_shape``: no initialiser runs, which keeps the tests fast.
  """
  shapes = nn.unbox(jax.eval_shape(lambda: mlp.init(jax.random.key(0), x, train=False)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes['params'])


def test_forward_matches_numpy_with_output_layer():
  mlp = MLP(hidden_units=(5, 3), activation='relu', output_dim=2, output_activation='sigmoid')
  x = _x()
  params = _random_params(mlp, x)
  y = mlp.apply({'params': params}, x, train=False)
  h = x.astype(np.float64)
  for name in ('dense_0', 'dense_1'):
    h = np.maximum(h @ params[name]['kernel'] + params[name]['bias'], 0)
  ref = 1 / (1 + np.exp(-(h @ params['output']['kernel'] + params['output']['bias'])))
  assert y.shape == (16, 2)
  np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_empty_mlp_is_identity():
  x = _x()
  mlp = MLP()
  variables = mlp.init(jax.random.key(0), x, train=False)
  assert not variables
  np.testing.assert_array_equal(mlp.apply(variables, x, train=True), x)


def test_batch_norm_train_and_eval_match_numpy():
  mlp = MLP(hidden_units=(4,), batch_norm=True)
  x = _x(batch=32)
  params = _random_params(mlp, x)
  init_stats = {'bn_0': {'mean': np.zeros(4, np.float32), 'var': np.ones(4, np.float32)}}
  y, updates = mlp.apply({'params': params, 'batch_stats': init_stats}, x,
                         train=True, mutable=['batch_stats'])
  h = x.astype(np.float64) @ params['dense_0']['kernel'] + params['dense_0']['bias']
  mean, var = h.mean(0), h.var(0)
  bn = params['bn_0']
  ref = np.maximum((h - mean) / np.sqrt(var + 1e-5) * bn['scale'] + bn['bias'], 0)
  np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
  stats = updates['batch_stats']['bn_0']
  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch, from mean 0 / var 1.
  np.testing.assert_allclose(stats['mean'], 0.1 * mean, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var, rtol=RTOL, atol=ATOL)
  # Eval mode uses the running averages and leaves them alone.
  y_eval, same = mlp.apply({'params': params, 'batch_stats': updates['batch_stats']}, x,
                           train=False, mutable=['batch_stats'])
  ref_eval = np.maximum((h - stats['mean']) / np.sqrt(stats['var'] + 1e-5) * bn['scale']
                        + bn['bias'], 0)
  np.testing.assert_allclose(y_eval, ref_eval, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(same['batch_stats']['bn_0']['mean'], stats['mean'])


def test_dropout_only_in_train_mode():
  mlp = MLP(hidden_units=(64,), dropout_rate=0.5, output_dim=1)
  x = _x()
  variables = {'params': _random_params(mlp, x)}
  e1 = mlp.apply(variables, x, train=False, rngs={'dropout': jax.random.key(1)})
  e2 = mlp.apply(variables, x, train=False, rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(e1, e2)
  t1 = mlp.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  t2 = mlp.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(t1, e1) and not np.allclose(t1, t2)


def test_init_is_untruncated_xavier_normal_and_zero_bias():
  fan_in, fan_out = 512, 256
  mlp = MLP(hidden_units=(fan_out,))
  params = nn.unbox(mlp.init(jax.random.key(0), np.zeros((1, fan_in), np.float32), train=False))
  kernel = np.asarray(params['params']['dense_0']['kernel'])
  std = np.sqrt(2.0 / (fan_in + fan_out))
  # 131072 draws: the sample std is within ~0.4% of the truth with overwhelming probability.
  assert abs(kernel.std() / std - 1) < 0.02
  assert abs(kernel.mean()) < 0.02 * std
  # An untruncated normal has draws beyond 2 std (a truncated one, as glorot_normal, has none).
  assert np.abs(kernel).max() > 3 * std
  np.testing.assert_array_equal(params['params']['dense_0']['bias'], 0.0)
  key = jax.random.key(3)
  np.testing.assert_allclose(xavier_normal(key, (5, 7)),
                             jax.random.normal(key, (5, 7)) * np.sqrt(2 / 12), rtol=RTOL, atol=ATOL)


def test_logical_axes():
  mlp = MLP(hidden_units=(4,), batch_norm=True, output_dim=1)
  variables = jax.eval_shape(lambda: mlp.init(jax.random.key(0), _x(), train=False))
  names = jax.tree.map(lambda b: b.names, variables['params'],
                       is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
  assert names == {'dense_0': {'kernel': ('mlp_in', 'mlp'), 'bias': ('mlp',)},
                   'bn_0': {'scale': ('mlp',), 'bias': ('mlp',)},
                   'output': {'kernel': ('mlp_in', 'mlp_out'), 'bias': ('mlp_out',)}}


@pytest.mark.parametrize('kwargs, match', [
    ({'hidden_units': (4, 0)}, r'hidden_units\[1\]'),
    ({'dropout_rate': 1.0}, 'dropout_rate'),
    ({'activation': 'relux'}, 'relux'),
    ({'output_dim': 0}, 'output_dim'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MLP(**kwargs)


def test_get_activation():
  assert get_activation('ReLU') is nn.relu
  x = np.array([-1.0, 2.0], np.float32)
  np.testing.assert_array_equal(get_activation(None)(x), x)
  with pytest.raises(ValueError, match='valid names'):
    get_activation('nope')
