"""The transformer block stack against a numpy reference; scanned == unrolled; remat is exact."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.transformer import TransformerStack

B, L, D, H, K, M = 3, 5, 8, 2, 4, 12


def np_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def np_gelu(x):  # flax nn.gelu (tanh approximation)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_block(p, x, mask, causal):
  y = np_layer_norm(x, p['ln_attn'])
  q, k, v = (np.einsum('bld,dhk->blhk', y, p[n]['kernel']) + p[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = np.einsum('blhk,bmhk->bhlm', q, k) / np.sqrt(K)
  allowed = np.ones((B, 1, L, L), bool)
  if mask is not None:
    allowed &= mask[:, None, None, :]
  if causal:
    allowed &= np.tril(np.ones((L, L), bool))
  logits = np.where(allowed, logits, -1e30)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  attn = np.einsum('bhlm,bmhk->blhk', w, v)
  x = x + np.einsum('blhk,hkd->bld', attn, p['out']['kernel']) + p['out']['bias']
  y = np_layer_norm(x, p['ln_mlp'])
  y = np_gelu(y @ p['mlp_in']['kernel'] + p['mlp_in']['bias'])
  return x + y @ p['mlp_out']['kernel'] + p['mlp_out']['bias']


def random_params(stack, x, seed=0):
  shapes = jax.eval_shape(lambda: nn.unbox(stack.init(jax.random.key(0), x)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize('causal', [False, True])
def test_unrolled_stack_matches_numpy(causal):
  x = np.random.default_rng(1).normal(size=(B, L, D)).astype(np.float32)
  mask = np.ones((B, L), bool)
  mask[0, 3:] = False
  stack = TransformerStack(2, H, K, M, causal=causal, scan_layers=False)
  variables = random_params(stack, x)
  got = stack.apply(variables, x, mask)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  want = x.astype(np.float64)
  for i in range(2):
    want = np_block(p[f'layer_{i}'], want, mask, causal)
  want = np_layer_norm(want, p['ln_final'])
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_scanned_equals_unrolled_and_remat_is_exact():
  x = np.random.default_rng(2).normal(size=(B, L, D)).astype(np.float32)
  scanned = TransformerStack(3, H, K, M, scan_layers=True)
  variables = random_params(scanned, x)
  layers = variables['params']['layers']
  assert jax.tree.leaves(layers)[0].shape[0] == 3
  unrolled_params = {f'layer_{i}': jax.tree.map(lambda a, i=i: a[i], layers) for i in range(3)}
  unrolled_params['ln_final'] = variables['params']['ln_final']
  unrolled = TransformerStack(3, H, K, M, scan_layers=False)
  want = unrolled.apply({'params': unrolled_params}, x)
  np.testing.assert_allclose(scanned.apply(variables, x), want, rtol=1e-6, atol=1e-6)

  def loss(module):
    return jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)

  base = loss(scanned)
  for policy in ('full', 'dots'):
    grads = loss(scanned.clone(remat_policy=policy))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_logical_axes_and_bad_arguments():
  x = jnp.zeros((1, 2, D))
  specs = nn.get_partition_spec(TransformerStack(2, H, K, M).init(jax.random.key(0), x))
  layer = specs['params']['layers']
  assert tuple(layer['query']['kernel']) == ('layers', 'embed', 'heads', 'kv')
  assert tuple(layer['out']['kernel']) == ('layers', 'heads', 'kv', 'embed')
  assert tuple(layer['mlp_in']['kernel']) == ('layers', 'embed', 'mlp')
  with pytest.raises(ValueError, match='remat_policy'):
    TransformerStack(2, H, K, M, remat_policy='sometimes')
  with pytest.raises(ValueError, match='num_heads must be a positive int'):
    TransformerStack(2, 0, K, M)
