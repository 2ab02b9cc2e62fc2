"""MoMa layers: expert choice against numpy, modality isolation, dense limit, MoD, auxiliary
routers, causality of the inference path, compiled FLOPs, axis names and errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.decoder import SwiGLU, grouped_routing, select_routing
from jaxrec.layers.moe import (AXIS_NAMES, AuxRouter, ExpertChoiceFFN, MoDRouter, apply_mod,
                               apply_mod_causal, aux_router_loss, causal_route, expert_capacity,
                               mod_select, moe_ffn_flops, selection_mask)
from jaxrec.sharding.rules import check_names_covered

B, L, D, F = 2, 6, 8, 16
MODALITY = np.array([[0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0]])
CAPACITY = (4, 2)  # tokens per row of modality 0 and 1
EXPERTS = (2, 2)


def rand(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_params(module, *args, seed=0, **kwargs):
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args, **kwargs)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def np_expert(p, e, x):
  g, u = x @ p['gate'][e], x @ p['up'][e]
  return (g * sigmoid(g) * u) @ p['down'][e]


def reference(params, x, modality, experts, capacity_factor):
  """Loops over groups and experts in numpy (float64): (y [B, L, D], selected per group)."""
  x = np.asarray(x, np.float64)
  y, selected = np.zeros_like(x), []
  for g, e_g in enumerate(experts):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params[f'group{g}'])
    rows, cols = np.nonzero(modality == g)  # row-major: the grouped routing's order
    xs = x[rows, cols]  # [N, D]
    s = sigmoid(xs @ p['router'])  # [N, E]
    c = min(int(np.floor(len(xs) / e_g * capacity_factor + 1e-9)), len(xs))
    sel = np.zeros(s.shape, bool)
    for e in range(e_g):
      take = np.argsort(-s[:, e], kind='stable')[:c]
      sel[take, e] = True
      y[rows[take], cols[take]] += s[take, e:e + 1] * np_expert(p, e, xs[take])
    selected.append(sel)
  return y, selected


def setup_ffn(capacity_factor=1.0, experts=EXPERTS, seed=0):
  ffn = ExpertChoiceFFN(experts, F, capacity_factor)
  x = jnp.asarray(rand(B, L, D, seed=seed))
  routing = grouped_routing(jnp.asarray(MODALITY), CAPACITY)
  params = random_params(ffn, x, routing, train=True, seed=seed + 1)['params']
  return ffn, x, routing, params


def test_expert_choice_matches_numpy_reference():
  ffn, x, routing, p = setup_ffn()
  y, aux = jax.jit(lambda p, x: ffn.apply({'params': p}, x, routing, train=True))(p, x)
  want, selected = reference(p, x, MODALITY, EXPERTS, 1.0)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  for g, e_g in enumerate(EXPERTS):
    got = np.asarray(aux['selected'][g]).reshape(-1, e_g)
    np.testing.assert_array_equal(got, selected[g])
    assert got.sum(0).tolist() == [B * CAPACITY[g] // e_g] * e_g  # C = N / E tokens each
  counts = np.zeros((B, L), int)
  for g in range(2):
    counts[MODALITY == g] = selected[g].sum(1)
  np.testing.assert_array_equal(aux['expert_count'], counts)
  # Some token is taken by no expert and some by several: expert choice, not token choice.
  assert counts.min() == 0 and counts.max() >= 2


def test_ties_go_to_the_earlier_token():
  ffn, x, routing, p = setup_ffn()
  p = jax.tree.map(lambda a: a, p)
  p['group0']['router'] = np.zeros_like(p['group0']['router'])  # every score is 0.5
  _, aux = ffn.apply({'params': p}, x, routing, train=True)
  # Group 0 holds 8 tokens (row-major); each of its 2 experts takes the first 4.
  np.testing.assert_array_equal(aux['selected'][0].reshape(-1, 2),
                                np.repeat(np.arange(8)[:, None] < 4, 2, axis=1))


def test_tokens_only_reach_their_modality_group():
  ffn, x, _, p = setup_ffn()
  perturbed = jax.tree.map(lambda a: a, p)
  perturbed['group1'] = jax.tree.map(lambda a: a + 1.0, p['group1'])
  for routing, train in ((grouped_routing(jnp.asarray(MODALITY), CAPACITY), True),
                         (select_routing(jnp.asarray(MODALITY), 2), False)):
    run = lambda q: ffn.apply({'params': q}, x, routing, train=train)[0]
    y0, y1 = np.asarray(run(p)), np.asarray(run(perturbed))
    np.testing.assert_array_equal(y0[MODALITY == 0], y1[MODALITY == 0])
    assert np.abs(y0[MODALITY == 1] - y1[MODALITY == 1]).max() > 1e-3


def test_full_capacity_is_the_dense_weighted_sum_of_experts():
  # capacity_factor = E: every expert takes every token of its group.
  ffn, x, routing, p = setup_ffn(capacity_factor=2.0)
  y, aux = ffn.apply({'params': p}, x, routing, train=True)
  want = np.zeros((B, L, D))
  for g in range(2):
    q, xs = p[f'group{g}'], np.asarray(x)[MODALITY == g]
    s = sigmoid(xs @ q['router'])
    want[MODALITY == g] = sum(s[:, e:e + 1] * np_expert(q, e, xs) for e in range(2))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(aux['expert_count'], 2)
  # The mixed-modal MoE: one group over all tokens, the routing ignored.
  blind = ExpertChoiceFFN((3,), F, capacity_factor=3.0, modality_blind=True)
  pb = random_params(blind, x, train=True, seed=5)['params']
  yb, _ = blind.apply({'params': pb}, x, train=True)
  xs, q = np.asarray(x).reshape(-1, D), pb['group0']
  s = sigmoid(xs @ q['router'])
  want = sum(s[:, e:e + 1] * np_expert(q, e, xs) for e in range(3))
  np.testing.assert_allclose(yb, want.reshape(B, L, D), rtol=1e-5, atol=1e-5)
  yb1, _ = ExpertChoiceFFN((3,), F, modality_blind=True).apply({'params': pb}, x, train=True)
  want, _ = reference(pb, x, np.zeros((B, L), int), (3,), 1.0)
  np.testing.assert_allclose(yb1, want, rtol=1e-5, atol=1e-5)


def test_mod_routes_a_fraction_and_leaves_the_rest_untouched():
  x = jnp.asarray(rand(B, 8, D, seed=3))
  kernel = jnp.asarray(rand(D, seed=4))
  idx, scores = mod_select(x, kernel, 0.25)
  assert idx.shape == scores.shape == (B, 2)  # 0.25 * 8 tokens per sequence
  s = sigmoid(np.asarray(x) @ np.asarray(kernel))
  want = np.sort(np.argsort(-s, axis=1, kind='stable')[:, :2], axis=1)
  np.testing.assert_array_equal(idx, want)
  np.testing.assert_allclose(scores, np.take_along_axis(s, want, 1), rtol=1e-6)
  seen = {}

  def layer(h, pos, valid):
    seen['pos'] = pos
    return 2.0 * h + 1.0 + pos[..., None]

  y = np.asarray(apply_mod(layer, x, idx, scores, start=10))
  np.testing.assert_array_equal(seen['pos'], 10 + want)  # original order and positions
  mask = np.asarray(selection_mask(idx, 8))
  np.testing.assert_array_equal(y[~mask], np.asarray(x)[~mask])
  xs = np.take_along_axis(np.asarray(x), want[..., None], 1)
  sel = xs + np.asarray(scores)[..., None] * (xs + 1.0 + 10 + want[..., None])
  np.testing.assert_allclose(np.take_along_axis(y, want[..., None], 1), sel, rtol=1e-5)

  def loss(k):
    i, sc = mod_select(x, k, 0.25)
    return jnp.sum(apply_mod(layer, x, i, sc) ** 2)

  grad = jax.grad(loss)(kernel)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-3


def test_mod_select_by_modality_keeps_static_counts():
  x = jnp.asarray(rand(B, L, D, seed=12))
  kernel = jnp.asarray(rand(D, seed=13))
  idx, scores = mod_select(x, kernel, 0.5, jnp.asarray(MODALITY), CAPACITY)
  assert idx.shape == (B, 3)  # floor(0.5 * 4) text + floor(0.5 * 2) image tokens per row
  s = sigmoid(np.asarray(x) @ np.asarray(kernel))
  for b in range(B):
    want = []
    for m, k in enumerate((2, 1)):
      members = np.nonzero(MODALITY[b] == m)[0]
      want += list(members[np.argsort(-s[b, members], kind='stable')[:k]])
    np.testing.assert_array_equal(idx[b], np.sort(want))
  np.testing.assert_array_equal(np.bincount(MODALITY[np.arange(B)[:, None], idx].ravel()),
                                [2 * B, B])
  np.testing.assert_allclose(scores, np.take_along_axis(s, np.asarray(idx), 1), rtol=1e-6)
  with pytest.raises(ValueError, match='fraction 0.3 of the 2 tokens of modality 1 rounds to 0'):
    mod_select(x, kernel, 0.3, jnp.asarray(MODALITY), CAPACITY)


def test_aux_router_and_its_bce_loss():
  x = rand(B, L, D, seed=6)
  router = AuxRouter(3)
  p = random_params(router, x)['params']
  h = x @ p['w1']
  np.testing.assert_allclose(router.apply({'params': p}, x), (h * sigmoid(h)) @ p['w2'],
                             rtol=1e-5, atol=1e-5)
  assert p['w1'].shape == (D, D // 2)
  logits = jnp.array([[0.0, 2.0], [-1.0, 3.0]])
  targets = jnp.array([[1, 0], [0, 1]])
  want = -np.mean([np.log(0.5), np.log(1 - sigmoid(2.0)), np.log(1 - sigmoid(-1.0)),
                   np.log(sigmoid(3.0))])
  np.testing.assert_allclose(aux_router_loss(logits, targets), want, rtol=1e-6)
  np.testing.assert_array_equal(causal_route(logits), [[False, True], [False, True]])
  # Trained against the main router's choices, the loss reaches the auxiliary routers only.
  ffn, x, routing, p = setup_ffn()

  def loss(p):
    _, aux = ffn.apply({'params': p}, x, routing, train=True)
    return sum(aux_router_loss(z, t) for z, t in zip(aux['aux_logits'], aux['selected']))

  grads = jax.grad(loss)(p)
  for g in range(2):
    for name, grad in grads[f'group{g}'].items():
      moved = max(np.abs(a).max() for a in jax.tree.leaves(grad))
      assert (moved > 0) == (name == 'aux_router'), name


def test_expert_choice_peeks_ahead_and_the_causal_path_does_not():
  ffn = ExpertChoiceFFN((2,), F, modality_blind=True)
  x = rand(B, L, D, seed=7)
  p = random_params(ffn, x, train=True, seed=8)['params']
  p['group0']['router'] = np.abs(p['group0']['router'])  # positive: big x means high scores
  later = x.copy()
  later[:, 3:] = 100.0  # the later half of every row outbids the earlier tokens
  run = lambda x, train: np.asarray(ffn.apply({'params': p}, jnp.asarray(x), train=train)[0])
  # Training: C = 12 / 2 = 6 tokens per expert, now all from t >= 3, so outputs at t < 3 move.
  assert np.abs(run(x, True)[:, :3] - run(later, True)[:, :3]).max() > 1e-3
  for t in range(L - 1):
    changed = x.copy()
    changed[:, t + 1:] = rand(B, L - t - 1, D, seed=t) * 10
    np.testing.assert_array_equal(run(changed, False)[:, :t + 1], run(x, False)[:, :t + 1])
  # Causal mode with the modality groups under select routing, modalities changed too.
  ffn, x, _, p = setup_ffn()
  for t in range(L - 1):
    mod = MODALITY.copy()
    mod[:, t + 1:] = 1 - mod[:, t + 1:]
    changed = np.asarray(x).copy()
    changed[:, t + 1:] *= -3
    y0 = ffn.apply({'params': p}, x, select_routing(jnp.asarray(MODALITY), 2), train=False)[0]
    y1 = ffn.apply({'params': p}, changed, select_routing(jnp.asarray(mod), 2), train=False)[0]
    np.testing.assert_array_equal(y1[:, :t + 1], y0[:, :t + 1])


def masked_attention(h, pos, valid):
  """A toy causal attention layer that honours ``valid`` keys (the LayerFn contract)."""
  s = jnp.einsum('bqd,bkd->bqk', h, h) / np.sqrt(h.shape[-1])
  allowed = (pos[:, None, :] <= pos[:, :, None]) & valid[:, None, :]
  w = jax.nn.softmax(jnp.where(allowed, s, -1e30), axis=-1)
  return h + jnp.einsum('bqk,bkd->bqd', w, h)


def test_mod_causal_path_matches_gathering_and_is_causal():
  n = 8
  x = jnp.asarray(rand(B, n, D, seed=9))
  router = MoDRouter(0.25)
  p = random_params(router, x, train=True, seed=10)['params']
  idx, scores, _ = router.apply({'params': p}, x, train=True)
  # The masked path with the training choices equals the gathered path.
  full_scores = jax.nn.sigmoid(x @ p['kernel'])
  got = apply_mod_causal(masked_attention, x, selection_mask(idx, n), full_scores)
  np.testing.assert_allclose(got, apply_mod(masked_attention, x, idx, scores), rtol=1e-5,
                             atol=1e-5)
  # Training selection ranks against later tokens; the auxiliary routing does not.
  later = np.asarray(x).copy()
  later[:, 4:] = 50 * np.sign(p['kernel'])
  assert not np.array_equal(mod_select(jnp.asarray(later), p['kernel'], 0.25)[0], idx)

  def causal(x):
    selected, s, _ = router.apply({'params': p}, x, train=False)
    return np.asarray(apply_mod_causal(masked_attention, x, selected, s))

  base = causal(x)
  for t in range(n - 1):
    changed = np.asarray(x).copy()
    changed[:, t + 1:] = rand(B, n - t - 1, D, seed=20 + t) * 5
    np.testing.assert_allclose(causal(jnp.asarray(changed))[:, :t + 1], base[:, :t + 1],
                               rtol=0, atol=0)


def test_compiled_flops_track_a_dense_ffn():
  b, l, d, f = 2, 16, 32, 128
  x = jnp.asarray(rand(b, l, d, seed=11))
  modality = jnp.asarray(np.tile(np.arange(l) % 2, (b, 1)))
  routing = grouped_routing(modality, (8, 8))
  moe = ExpertChoiceFFN((2, 2), f)
  pm = random_params(moe, x, routing, train=True)
  dense = SwiGLU(f)
  pd = random_params(dense, x)
  flops = lambda fn, p: jax.jit(fn).lower(p, x).compile().cost_analysis()['flops']
  moe_flops = flops(lambda p, x: moe.apply(p, x, routing, train=True)[0], pm)
  dense_flops = flops(lambda p, x: dense.apply(p, x), pd)
  # Measured (JAX 0.10.2, CPU): 1.009x the dense SwiGLU's flops (router, sigmoid, scatter-add;
  # the auxiliary routers are dead code here; returning aux too gives 1.055x).
  assert 1.0 <= moe_flops / dense_flops < 1.2, (moe_flops, dense_flops)
  analytic = moe_ffn_flops((16, 16), (2, 2), d, f)
  assert analytic == 6 * b * l * d * f + 2 * 2 * 16 * d * 2
  assert moe_ffn_flops((16, 16), (2, 2), d, f, causal=True) > 2 * analytic


def test_every_parameter_has_logical_axis_names():
  ffn = ExpertChoiceFFN(EXPERTS, F)
  x = jnp.zeros((B, L, D))
  boxed = ffn.init(jax.random.key(0), x, grouped_routing(jnp.asarray(MODALITY), CAPACITY),
                   train=True)
  boxed_mod = MoDRouter(0.5).init(jax.random.key(0), x, train=True)
  leaves = jax.tree.leaves((boxed, boxed_mod), is_leaf=lambda a: isinstance(a, nn.Partitioned))
  assert len(leaves) == 2 * 6 + 3  # per group: router, gate, up, down, aux w1, w2
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= set(AXIS_NAMES), leaf.names
  check_names_covered(AXIS_NAMES, 'jaxrec.layers.moe')


def test_bad_input_errors_name_the_numbers():
  x = jnp.zeros((B, L, D))
  routing = grouped_routing(jnp.asarray(MODALITY), CAPACITY)
  init = lambda ffn, r=routing, train=True: ffn.init(jax.random.key(0), x, r, train=train)
  with pytest.raises(ValueError, match=r'8 tokens / 2 experts x capacity_factor 0.2 = 0.8 '
                                       r'rounds to 0'):
    init(ExpertChoiceFFN(EXPERTS, F, capacity_factor=0.2))
  with pytest.raises(ValueError, match='5 experts but only 4 tokens'):
    init(ExpertChoiceFFN((2, 5), F))
  with pytest.raises(ValueError, match=r'2 modality group\(s\) but num_experts_per_group=\(2,\)'):
    init(ExpertChoiceFFN((2,), F))
  with pytest.raises(ValueError, match=r'>= 1 expert, got num_experts_per_group=\(2, 0\)'):
    init(ExpertChoiceFFN((2, 0), F))
  with pytest.raises(ValueError, match=r'modality_blind takes one group'):
    init(ExpertChoiceFFN(EXPERTS, F, modality_blind=True))
  with pytest.raises(ValueError, match='not select_routing'):
    init(ExpertChoiceFFN(EXPERTS, F), select_routing(jnp.asarray(MODALITY), 2))
  for fraction in (0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match=rf'fraction must be in \(0, 1\], got {fraction}'):
      mod_select(x, jnp.zeros(D), fraction)
  with pytest.raises(ValueError, match='fraction 0.1 of 6 tokens rounds to 0'):
    MoDRouter(0.1).init(jax.random.key(0), x, train=False)
  assert expert_capacity(8, 2, 4.0) == 8  # capped at the group's tokens
