"""MixedModalLM (dense and Mixture-of-Transformers): against a masked reference written here,
MoT with equal copies == dense, causality, KV-cache decoding, compiled FLOPs, errors, logical
axes, gradients and generation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.models.mixed_modal_lm import (MixedModalLM, check_modality_counts, generate,
                                          mixed_modal_lm_flops)
from jaxrec.sharding import rules

V, D, H, K, F, LAYERS = 32, 16, 2, 8, 32, 2
B, L, CAP = 2, 8, (5, 3)
SIZES = dict(vocab_size=V, num_layers=LAYERS, embed_dim=D, num_heads=H, head_dim=K, mlp_dim=F,
             max_len=16)


def lm(untie='mot', capacity=CAP, num_modalities=2, **kwargs):
  return MixedModalLM(**{**SIZES, **kwargs}, untie=untie, num_modalities=num_modalities,
                      modality_capacity=capacity if untie == 'mot' else None)


def layouts(capacity, rows=B, seed=0):
  """int [rows, sum(capacity)]: each row a random arrangement of the static counts."""
  rng = np.random.default_rng(seed)
  base = np.repeat(np.arange(len(capacity)), capacity)
  return np.stack([rng.permutation(base) for _ in range(rows)]).astype(np.int32)


def tokens(length=L, rows=B, seed=0):
  return np.random.default_rng(seed + 100).integers(0, V, (rows, length)).astype(np.int32)


def boxed_shapes(model, length=L):
  """The boxed parameters' shapes and logical names (``init`` traced, not run)."""
  mod = layouts(model.modality_capacity or (length,) + (0,) * (model.num_modalities - 1))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens(length), mod,
                                          train=False))['params']


def params_of(model, seed=0):
  """Random parameters (norm scales around 1), so every modality copy differs."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == 'scale':
      return (1 + 0.2 * rng.normal(size=s.shape)).astype(np.float32)
    return (0.3 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(boxed_shapes(model)))


def spec_leaves(model):
  """One logical-name tuple per parameter, in ``jax.tree.leaves`` order."""
  return [x.names for x in jax.tree.leaves(
      boxed_shapes(model), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))]


@functools.lru_cache(maxsize=None)
def forward(model):
  return jax.jit(lambda p, t, m: model.apply({'params': p}, t, m, train=False))


# ---- the masked reference: every modality's weights on every token, select per token ----


def reference_logits(p, toks, modality, num_modalities, base=10000.0):
  onehot = jax.nn.one_hot(modality, num_modalities)  # [B, L, M]

  def select(per_modality):  # [B, L, M, ...] -> [B, L, ...]
    return jnp.einsum('blm...,blm->bl...', per_modality, onehot)

  def norm(per_modality, scale):  # [B, L, M, D], scale [M, D]
    ms = jnp.mean(per_modality ** 2, -1, keepdims=True)
    return select(per_modality / jnp.sqrt(ms + 1e-6) * scale)

  def rope(x):  # [B, L, H, K]: pairs (i, i + K/2) as complex numbers, times e^{i p theta_i}
    half = x.shape[-1] // 2
    theta = base ** (-2.0 * np.arange(half) / x.shape[-1])
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(
        1j * np.arange(x.shape[1])[:, None, None] * theta)
    return jnp.concatenate([z.real, z.imag], -1).astype(jnp.float32)

  x = p['embedding'][toks]
  length = toks.shape[1]
  for i in range(LAYERS):
    w = jax.tree.map(lambda a, i=i: a[i], p['layers'])
    proj = lambda name: select(jnp.einsum('bld,mdhk->blmhk', x, w[name]['kernel']))
    q, k, v = rope(proj('query')), rope(proj('key')), proj('value')
    s = jnp.einsum('blhk,bshk->bhls', q, k) / np.sqrt(K)
    s = jnp.where(np.tril(np.ones((length, length), bool)), s, -jnp.inf)
    a = jnp.einsum('bhls,bshk->blhk', jax.nn.softmax(s, -1), v)
    x = x + norm(jnp.einsum('blhk,mhkd->blmd', a, w['out']['kernel']), w['attn_norm']['scale'])
    gate = jnp.einsum('bld,mdf->blmf', x, w['ffn']['gate']['kernel'])
    up = jnp.einsum('bld,mdf->blmf', x, w['ffn']['up']['kernel'])
    ffn = jnp.einsum('blmf,mfd->blmd', jax.nn.silu(gate) * up, w['ffn']['down']['kernel'])
    x = x + norm(ffn, w['ffn_norm']['scale'])
  x = norm(jnp.broadcast_to(x[:, :, None], x.shape[:2] + (num_modalities, x.shape[-1])),
           p['final_norm']['scale'])
  return x @ p['embedding'].T


@pytest.mark.parametrize('capacity', [(5, 3), (2, 4, 2)])
def test_mot_matches_masked_reference(capacity):
  model = lm(capacity=capacity, num_modalities=len(capacity))
  p = params_of(model)
  for seed in range(3):
    mod, toks = layouts(capacity, seed=seed), tokens(seed=seed)
    want = reference_logits(p, toks, mod, len(capacity))
    np.testing.assert_allclose(forward(model)(p, toks, mod), want, rtol=1e-5, atol=1e-5)
  # The reference is sensitive to the routing: other modality ids give other logits.
  other = reference_logits(p, toks, (mod + 1) % len(capacity), len(capacity))
  assert np.abs(other - want).max() > 1e-2
  # The capacity=None fallback (every modality on every token) computes the same function.
  fallback = lm(capacity=None, num_modalities=len(capacity))
  np.testing.assert_allclose(forward(fallback)(p, toks, mod), want, rtol=1e-5, atol=1e-5)


def test_mot_with_equal_copies_equals_dense():
  dense = lm('none')
  pd = params_of(dense)

  def copies(a, names):  # insert the 'modality' axis where the MoT parameter has it
    return jnp.stack([a, a], axis=names.index('modality')) if 'modality' in names else a

  pm = jax.tree.unflatten(jax.tree.structure(pd),
                          [copies(a, n) for a, n in zip(jax.tree.leaves(pd), spec_leaves(lm()))])
  mod, toks = layouts(CAP, seed=4), tokens(seed=4)
  want = forward(dense)(pd, toks, mod)
  np.testing.assert_allclose(forward(lm())(pm, toks, mod), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('untie', ['none', 'mot'])
def test_causal(untie):
  model = lm(untie)
  p = params_of(model)
  toks, mod = tokens(seed=5), layouts(CAP, seed=5)
  t = 3
  later = toks.copy()
  later[:, t + 1:] = (later[:, t + 1:] + 7) % V
  later_mod = mod.copy()
  later_mod[:, t + 1:] = later_mod[:, t + 1:][:, ::-1]  # rearranged after t, counts kept
  base = forward(model)(p, toks, mod)
  changed = forward(model)(p, later, later_mod)
  np.testing.assert_allclose(changed[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5)
  assert np.abs(changed[:, t + 1:] - base[:, t + 1:]).max() > 1e-3


@pytest.mark.parametrize('untie,scan', [('none', True), ('mot', True), ('mot', False)])
def test_kv_cache_decode_matches_full_forward(untie, scan):
  model = lm(untie, scan_layers=scan)
  p = params_of(model)
  toks, mod = tokens(seed=6), layouts(CAP, seed=6)
  want = forward(model)(p, toks, mod)
  decode = jax.jit(lambda p, t, m, pos, c: model.apply({'params': p}, t, m, pos, c,
                                                       method=MixedModalLM.decode))
  cache = model.init_cache(B, 12)  # longer than the sequence: later slots stay masked
  prefill = 3
  logits, cache = decode(p, toks[:, :prefill], mod[:, :prefill], 0, cache)
  got = [logits]
  for i in range(prefill, L):
    logits, cache = decode(p, toks[:, i:i + 1], mod[:, i:i + 1], i, cache)
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, 1), want, rtol=1e-5, atol=1e-5)


def compiled_flops(model, length=16, rows=2):
  toks, mod = jnp.zeros((rows, length), jnp.int32), jnp.zeros((rows, length), jnp.int32)
  p = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), toks, mod, train=False)))
  cost = jax.jit(lambda p, t, m: model.apply(p, t, m, train=False)).lower(p, toks, mod).compile()
  cost = cost.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)['flops']


def test_compiled_flops_of_mot_equal_dense():
  # Unrolled layers: XLA's cost analysis counts a scanned (while-loop) body once.
  sizes = dict(vocab_size=64, embed_dim=32, head_dim=16, mlp_dim=64, max_len=16,
               scan_layers=False)
  dense = compiled_flops(lm('none', **sizes))
  mot = compiled_flops(lm('mot', capacity=(10, 6), **sizes))
  fallback = compiled_flops(lm('mot', capacity=None, **sizes))
  # Measured (jax 0.10.2, CPU): dense 1,650,768, MoT 1,651,280 (ratio 1.0003: the routing
  # gathers), capacity=None fallback 3,014,320 (1.83x: every modality's weights on every token).
  assert 1.0 <= mot / dense < 1.1, (mot, dense)
  assert fallback / dense > 1.5, (fallback, dense)
  # The analytic matmul count (2 sequences) is below XLA's, which adds the elementwise work.
  analytic = 2 * mixed_modal_lm_flops(lm('none', **sizes), 16)
  assert mixed_modal_lm_flops(lm('mot', capacity=(10, 6), **sizes), 16) * 2 == analytic
  assert 0.9 < analytic / dense <= 1.0, (analytic, dense)


def test_errors_name_the_numbers():
  model = lm()
  with pytest.raises(ValueError, match='sequence length 20 exceeds max_len 16'):
    model.init(jax.random.key(0), tokens(20), layouts((10, 10)), train=False)
  with pytest.raises(ValueError, match=r'\(5, 3\) sums to 8, not the sequence length 6'):
    model.init(jax.random.key(0), tokens(6), layouts((3, 3)), train=False)
  with pytest.raises(ValueError, match=r'\(5, 3\) has 2 entries, num_modalities is 3'):
    lm(num_modalities=3)
  bad = layouts(CAP, rows=3)
  bad[2] = [0, 0, 0, 0, 1, 1, 1, 1]
  with pytest.raises(ValueError, match=r'row 2 has \(4, 4\) tokens per modality, the model '
                                       r'expects modality_capacity \(5, 3\)'):
    check_modality_counts(bad, CAP)
  bad[2] = [0, 0, 0, 0, 1, 1, 1, 2]
  with pytest.raises(ValueError, match=r'row 2 has modality id 2, not in \[0, 2\)'):
    check_modality_counts(bad, CAP)
  with pytest.raises(ValueError, match=r'shape \(3, 8\) is not \[batch, 9\]'):
    check_modality_counts(bad, (5, 4))
  check_modality_counts(layouts(CAP, rows=4), CAP)
  with pytest.raises(ValueError, match='head_dim must be even'):
    MixedModalLM(**{**SIZES, 'head_dim': 7})
  with pytest.raises(ValueError, match="untie='moe' is not one of"):
    MixedModalLM(**SIZES, untie='moe')
  with pytest.raises(ValueError, match='cache length 32 exceeds max_len 16'):
    model.init_cache(1, 32)


@pytest.mark.parametrize('untie', ['none', 'mot'])
def test_every_parameter_has_logical_axes(untie):
  model = lm(untie)
  boxed = boxed_shapes(model)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape) and None not in leaf.names, leaf.names
    rules.check_names_covered(leaf.names, f'MixedModalLM {untie}')
  flat = {'/'.join(str(k.key) for k in path): x.names for path, x in
          jax.tree_util.tree_flatten_with_path(
              boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]}
  assert flat['embedding'] == ('vocab', 'embed')
  assert flat['layers/query/kernel'][-3:] == ('embed', 'heads', 'kv')
  assert flat['layers/out/kernel'][-3:] == ('heads', 'kv', 'embed')
  assert flat['layers/ffn/down/kernel'][-2:] == ('mlp', 'embed')
  untied = [n for n in flat if n != 'embedding']
  assert all(('modality' in flat[n]) == (untie == 'mot') for n in untied)
  # The rules shard a modality-stacked parameter as its dense counterpart.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           ('data', 'fsdp', 'tensor'))
  for n in untied:
    names = flat[n]
    axes = rules.logical_to_mesh_axes(names, mesh)
    dense_axes = rules.logical_to_mesh_axes(tuple(a for a in names if a != 'modality'), mesh)
    assert tuple(a for a, name in zip(axes, names) if name != 'modality') == dense_axes, n


def test_gradients_reach_every_modality_copy():
  model = lm(remat_policy='full')
  p = params_of(model)
  toks, mod = tokens(seed=7), layouts(CAP, seed=7)

  def loss(p):
    logits = model.apply({'params': p}, toks, mod, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]),
                                         toks[:, 1:, None], -1))

  grads = jax.jit(jax.grad(loss))(p)
  flat_g = jax.tree_util.tree_flatten_with_path(grads)[0]
  for (path, g), names in zip(flat_g, spec_leaves(model)):
    g = np.asarray(g)
    if 'modality' in names:
      per_copy = np.moveaxis(g, names.index('modality'), 0).reshape(2, -1)
      assert (np.abs(per_copy).max(-1) > 0).all(), path
    else:
      assert np.abs(g).max() > 0, path


def test_layer_hook_and_remat_keep_the_function():
  toks, mod = tokens(seed=8), layouts(CAP, seed=8)
  p = params_of(lm())
  want = forward(lm())(p, toks, mod)
  hooked = lm(layer_param_fn=lambda tree: jax.tree.map(lambda a: a * 1.0, tree),
              remat_policy='dots')
  np.testing.assert_allclose(forward(hooked)(p, toks, mod), want, rtol=1e-6, atol=1e-6)


def test_generate_greedy_and_restricted():
  gen = jax.jit(generate, static_argnums=(0, 4),
                static_argnames=('temperature', 'logits_fn', 'modality_fn'))
  model = lm()
  p = params_of(model)
  prompt, prompt_mod = tokens(4, seed=9), layouts((3, 1), seed=9)
  modality_fn = lambda t: (t >= V // 2).astype(jnp.int32)  # upper half of the vocab: modality 1
  out, out_mod = gen(model, p, prompt, prompt_mod, 5, jax.random.key(0), temperature=0.0,
                          modality_fn=modality_fn)
  assert out.shape == out_mod.shape == (B, 5)
  np.testing.assert_array_equal(out_mod, np.asarray(out) >= V // 2)
  # Greedy: each token is the argmax of the select-routed full forward of everything before it.
  seq = np.concatenate([prompt, out], 1)
  seq_mod = np.concatenate([prompt_mod, out_mod], 1)
  full = forward(lm(capacity=None))(p, seq, seq_mod)
  np.testing.assert_array_equal(np.argmax(full[:, 3:-1], -1), out)
  # logits_fn restricts the vocabulary per step: even steps sample from [0, 4), odd from [4, 8).
  def restrict(step, logits):
    lo = jnp.where(step % 2 == 0, 0, 4)
    ids = jnp.arange(V)
    return jnp.where((ids >= lo) & (ids < lo + 4), logits, -jnp.inf)
  sampled, _ = gen(model, p, prompt, prompt_mod, 6, jax.random.key(1), temperature=1.0,
                        logits_fn=restrict)
  sampled = np.asarray(sampled)
  assert ((sampled[:, ::2] >= 0) & (sampled[:, ::2] < 4)).all()
  assert ((sampled[:, 1::2] >= 4) & (sampled[:, 1::2] < 8)).all()
  with pytest.raises(ValueError, match='prompt length 4 \\+ 13 steps exceeds max_len 16'):
    gen(model, p, prompt, prompt_mod, 13, jax.random.key(0))
