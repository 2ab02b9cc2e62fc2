"""Decoder pieces: rotary's relative-position property, RMSNorm / SwiGLU / attention against
numpy, routing round trips, and a block's routing modes against each other."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.decoder import (DecoderBlock, ModalDense, RMSNorm, SwiGLU, causal_attention,
                                   grouped_routing, rotary, select_routing, shared_routing)

B, T, D, H, K, F = 2, 6, 8, 2, 4, 16


def rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_params(module, *args, seed=0):
  """Random parameters of ``module`` (shapes from a traced ``init``; scales around 1)."""
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args)))
  rng = np.random.default_rng(seed)
  draw = lambda path, s: ((path[-1].key == 'scale') + 0.3 * rng.normal(size=s.shape)).astype(
      np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_rotary_scores_depend_only_on_relative_position():
  q, k = rand(1, 1, 1, 16, seed=1), rand(1, 1, 1, 16, seed=2)

  def score(i, j):
    qi = rotary(jnp.asarray(q), jnp.array([i]))
    kj = rotary(jnp.asarray(k), jnp.array([j]))
    return float(jnp.sum(qi * kj))

  for offset in (0, 1, 3, 7):
    scores = [score(j + offset, j) for j in (0, 2, 5, 11, 20)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-5, atol=1e-5)
  assert abs(score(3, 0) - score(0, 0)) > 1e-3  # position does matter
  # Position 0 is the identity; every position preserves the norm.
  np.testing.assert_allclose(rotary(jnp.asarray(q), jnp.array([0])), q, atol=1e-7)
  np.testing.assert_allclose(jnp.linalg.norm(rotary(jnp.asarray(q), jnp.array([9]))),
                             np.linalg.norm(q), rtol=1e-6)
  with pytest.raises(ValueError, match='even, got 3'):
    rotary(jnp.zeros((1, 1, 1, 3)), jnp.array([0]))


def test_rms_norm_and_swiglu_pick_their_modality_copy():
  x = rand(B, T, D)
  norm = RMSNorm(num_modalities=2)
  params = {'scale': rand(2, D, seed=3)}
  for m in (0, 1):
    want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * params['scale'][m]
    np.testing.assert_allclose(norm.apply({'params': params}, x, m), want, rtol=1e-5, atol=1e-6)
  ffn = SwiGLU(F, num_modalities=2)
  p = random_params(ffn, x, 0)['params']
  for m in (0, 1):
    g, u = x @ p['gate']['kernel'][m], x @ p['up']['kernel'][m]
    want = (g / (1 + np.exp(-g)) * u) @ p['down']['kernel'][m]
    np.testing.assert_allclose(ffn.apply({'params': p}, x, m), want, rtol=1e-5, atol=1e-5)


def test_modal_dense_checks_the_copy_index():
  x = jnp.ones((2, D))
  with pytest.raises(ValueError, match='shared weights'):
    ModalDense((4,), 1, ('embed', 'mlp')).init(jax.random.key(0), x, 1)
  with pytest.raises(ValueError, match=r'modality in \[0, 2\), got None'):
    ModalDense((4,), 1, ('embed', 'mlp'), num_modalities=2).init(jax.random.key(0), x)


def test_causal_attention_matches_numpy_and_ignores_future_cache_slots():
  q, k, v = rand(B, T, H, K, seed=1), rand(B, T, H, K, seed=2), rand(B, T, H, K, seed=3)
  pos = jnp.arange(T)
  got = causal_attention(q, k, v, pos, pos)
  s = np.einsum('bthk,bshk->bhts', q, k) / np.sqrt(K)
  s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  want = np.einsum('bhts,bshk->bthk', w / w.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A cache longer than the sequence, garbage past it: masked by position.
  pad = lambda a: np.concatenate([a, rand(B, 4, H, K, seed=9) * 100], axis=1)
  cached = causal_attention(q, pad(k), pad(v), pos, jnp.arange(T + 4))
  np.testing.assert_allclose(cached, got, rtol=1e-6, atol=1e-6)


def test_causal_attention_with_row_positions_and_a_key_mask_equals_gathering():
  q, k, v = rand(B, T, H, K, seed=4), rand(B, T, H, K, seed=5), rand(B, T, H, K, seed=6)
  keep = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], bool)  # 4 valid tokens per row
  pos = np.broadcast_to(np.arange(T), (B, T))
  got = np.asarray(causal_attention(q, k, v, jnp.asarray(pos), jnp.asarray(pos), keep))
  for b in range(B):  # the kept tokens alone, at their own positions (per-row q_pos / k_pos)
    idx = np.nonzero(keep[b])[0]
    p = jnp.asarray(np.stack([idx, idx]))
    take = lambda a: jnp.asarray(np.stack([a[b, idx], a[b, idx]]))
    want = causal_attention(take(q), take(k), take(v), p, p)[0]
    np.testing.assert_allclose(got[b, idx], want, rtol=1e-5, atol=1e-6)
  # Per-row positions that are all the same row give the 1-D result.
  np.testing.assert_allclose(causal_attention(q, k, v, jnp.asarray(pos), jnp.asarray(pos)),
                             causal_attention(q, k, v, jnp.arange(T), jnp.arange(T)), rtol=1e-6,
                             atol=1e-7)


def test_routing_round_trips():
  modality = jnp.array([[1, 0, 0, 1, 0, 1], [0, 0, 0, 1, 1, 1]])
  x = jnp.asarray(rand(2, 6, 3))
  r = grouped_routing(modality, (3, 3))
  parts = r.split(x)
  assert [p.shape for p in parts] == [(2, 3, 3), (2, 3, 3)]
  np.testing.assert_array_equal(parts[0][0], x[0, jnp.array([1, 2, 4])])  # stable order
  np.testing.assert_array_equal(parts[1][1], x[1, 3:])
  np.testing.assert_array_equal(r.merge(parts), x)
  s = select_routing(modality, 2)
  merged = s.merge([jnp.zeros_like(x), jnp.ones_like(x)])
  np.testing.assert_array_equal(merged[..., 0], modality)
  assert shared_routing().merge(shared_routing().split(x)) is x
  with pytest.raises(ValueError, match=r'\(3, 2\) sum to 5, not the sequence length 6'):
    grouped_routing(modality, (3, 2))


def test_block_routings_agree_and_equal_copies_give_the_dense_block():
  x = jnp.asarray(rand(B, T, D))
  modality = jnp.array([[0, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1]])
  start = jnp.int32(0)
  mot = DecoderBlock(H, K, F, num_modalities=2)
  p = random_params(mot, x, select_routing(modality, 2), start)
  run = jax.jit(lambda block, p, routing: block.apply(p, x, routing, start)[0],
                static_argnums=0)
  grouped = run(mot, p, grouped_routing(modality, (3, 3)))
  np.testing.assert_allclose(grouped, run(mot, p, select_routing(modality, 2)), rtol=1e-5,
                             atol=1e-5)
  dense = DecoderBlock(H, K, F)
  pd = random_params(dense, x, shared_routing(), start, seed=1)
  copies = jax.tree.map(lambda a: jnp.stack([a, a]), pd)
  np.testing.assert_allclose(run(mot, copies, grouped_routing(modality, (3, 3))),
                             run(dense, pd, shared_routing()), rtol=1e-5, atol=1e-5)
