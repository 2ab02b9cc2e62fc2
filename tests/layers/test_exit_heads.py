"""Stacked exit heads (vmapped over the layer axis) and the exit policy."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers import exit_heads as eh

L, B, T, D, H = 3, 4, 5, 8, 6


@pytest.fixture(scope='module')
def setup():
  key = jax.random.PRNGKey(0)
  hidden = jax.random.normal(key, (L, B, T, D))
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
  heads = eh.ExitHeads(num_layers=L, hidden_dim=H)
  variables = jax.jit(heads.init)(jax.random.PRNGKey(1), hidden, mask)
  params = nn.meta.unbox(variables['params'])
  return heads, variables, params, np.asarray(hidden), np.asarray(mask)


def _numpy_head(p, h, mask):
  """One head written from its docstring, in float64 numpy."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h = np.asarray(h, np.float64)
  s = h @ p['query'] / np.sqrt(D)
  s = np.where(mask > 0, s, -np.inf)
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  attn = np.einsum('bt,btd->bd', a, h)
  mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  x = np.concatenate([attn, mean], -1) @ p['kernel_1'] + p['bias_1']
  gelu = x * 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
  return gelu @ p['kernel_2'] + p['bias_2']


def test_vmapped_heads_match_a_numpy_head_per_layer(setup):
  heads, variables, params, hidden, mask = setup
  out = jax.jit(heads.apply)(variables, hidden, mask)
  assert out.shape == (L, B, 2)
  for l in range(L):
    ref = _numpy_head(eh.select_head(params, l), hidden[l], mask)
    np.testing.assert_allclose(out[l], ref, atol=1e-5, rtol=1e-5)
    single = jax.jit(eh.head_forward)(eh.select_head(params, l), hidden[l], mask)
    np.testing.assert_allclose(out[l], single, atol=1e-6, rtol=1e-6)


def test_one_stacked_parameter_set_with_logical_axes(setup):
  _, variables, params, _, _ = setup
  specs = nn.get_partition_spec(variables['params'])
  assert {k: tuple(v) for k, v in specs.items()} == {
      'query': ('layers', 'embed'), 'kernel_1': ('layers', 'mlp_in', 'mlp'),
      'bias_1': ('layers', 'mlp'), 'kernel_2': ('layers', 'mlp', 'mlp_out'),
      'bias_2': ('layers', 'mlp_out')}
  assert params['kernel_1'].shape == (L, 2 * D, H)
  assert params['kernel_2'].shape == (L, H, 2)
  # every head drew its own initial weights
  k = np.asarray(params['kernel_1'])
  assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])


def test_margin_is_log_yes_no_ratio():
  logits = jnp.array([[2.0, -1.0], [0.3, 0.3]])
  p = jax.nn.softmax(logits, -1)
  np.testing.assert_allclose(eh.yes_no_margin(logits), np.log(p[:, 0] / p[:, 1]), rtol=1e-6)


def test_wrong_layer_count_is_rejected(setup):
  heads, variables, _, hidden, mask = setup
  with pytest.raises(ValueError, match='hidden has 2 layers, expected 3'):
    heads.apply(variables, hidden[:2], mask)
  with pytest.raises(ValueError, match='hidden_dim'):
    eh.ExitHeads(num_layers=2, hidden_dim=0)


# margins [layers=4, samples=6], worked by hand with threshold 1.0, agree 1:
MARGINS = np.array([
    # s0    s1    s2    s3    s4    s5
    [3.0, -3.0, 0.2, 2.0, -0.5, 5.0],   # layer 0: nobody may exit (no previous head)
    [2.0, -1.5, 0.5, -2.0, -0.5, 0.1],  # layer 1: s0 (conf., agrees), s1 (conf., agrees) exit
    [0.1, 1.0, 1.2, -1.1, -2.0, 0.3],   # layer 2: s2 (conf., agrees: 0.5>0), s3 (agrees), s4
    [0.4, 0.2, 0.7, 0.3, 0.9, -0.2],    # layer 3: the rest (s5) at the last layer
])


def test_exit_policy_by_hand():
  layer, margin = eh.exits_at(MARGINS, threshold=1.0, agree=1)
  np.testing.assert_array_equal(layer, [1, 1, 2, 2, 2, 3])
  np.testing.assert_array_equal(margin, [2.0, -1.5, 1.2, -1.1, -2.0, -0.2])


def test_exit_policy_agree_two_and_min_layer():
  layer, _ = eh.exits_at(MARGINS, threshold=1.0, agree=2)
  # s0: layer 2 margin 0.1 not confident -> last; s1: layer 2 flips sign -> last;
  # s2: 0.2, 0.5, 1.2 all Yes and confident at 2 -> 2; s3: 2.0 then -2.0 -> never agrees -> 3;
  # s4: -0.5, -0.5, -2.0 -> 2; s5 -> 3.
  np.testing.assert_array_equal(layer, [3, 3, 2, 3, 2, 3])
  # min_layer 2: s0 and s1 may not leave at 1; at 2, s0 is unsure and s1 flips -> last.
  layer, _ = eh.exits_at(MARGINS, threshold=1.0, agree=1, min_layer=2)
  np.testing.assert_array_equal(layer, [3, 3, 2, 2, 2, 3])


def test_exit_policy_extremes():
  layer, margin = eh.exits_at(MARGINS, threshold=float('inf'))
  np.testing.assert_array_equal(layer, [3] * 6)
  np.testing.assert_array_equal(margin, MARGINS[3])
  layer, margin = eh.exits_at(MARGINS, threshold=0.0, agree=0)
  np.testing.assert_array_equal(layer, [0] * 6)
  np.testing.assert_array_equal(margin, MARGINS[0])


def test_exit_policy_rejects_bad_arguments():
  with pytest.raises(ValueError, match=r'\[layers, batch\]'):
    eh.exits_at(MARGINS[0], 1.0)
  with pytest.raises(ValueError, match='agree and min_layer'):
    eh.exits_at(MARGINS, 1.0, agree=-1)
  with pytest.raises(ValueError, match='previous margins given'):
    eh.exit_now(MARGINS[2], MARGINS[:1], 2, 4, 1.0, agree=2)


def test_device_policy_equals_the_host_policy():
  """``device_exit_now`` (jnp, traced layer and policy) decides as ``exit_now`` at every layer,
  on margins with ties at the threshold and exact zeros."""
  rng = np.random.default_rng(0)
  margins = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], (5, 64)).astype(np.float32)
  fn = jax.jit(eh.device_exit_now)
  history = np.asarray(rng.normal(size=margins.shape), np.float32)
  for th in (0.0, 0.5, 1.0, float('inf')):
    for agree in (0, 1, 2, 3):
      for min_layer in (0, 2):
        for l in range(5):
          want = eh.exit_now(margins[l], margins[:l], l, 5, th, agree, min_layer)
          hist = np.where(np.arange(5)[:, None] < l, margins, history)  # later rows: junk
          got = fn(margins[l], hist, l, th, agree, min_layer)
          np.testing.assert_array_equal(got, want, err_msg=f'{th} {agree} {min_layer} {l}')
