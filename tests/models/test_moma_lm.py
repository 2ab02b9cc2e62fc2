"""MoMa in MixedModalLM (modality-aware expert-choice FFNs, mixture-of-depths, auxiliary routers):
against a numpy reference with per-expert loops, causality of the causal mode (and the lack of it
in expert choice), KV-cache decoding, MoD's exact limits, the auxiliary-router loss's gradient,
compiled FLOPs, upcycling, errors and logical axes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.schema import SequenceSchema
from jaxrec.layers.decoder import DecoderBlock, shared_routing
from jaxrec.layers.moe import LayerInputs, MoMaBlock, aux_router_terms, mod_select
from jaxrec.models.mixed_modal_lm import (DecoderLM, MixedModalLM, aux_router_terms as lm_terms,
                                          generate, mixed_modal_lm_flops, upcycle_params)
from jaxrec.sharding import rules

V, D, H, K, F, LAYERS = 32, 16, 2, 8, 32, 2
B, L, CAP, EXPERTS = 2, 8, (5, 3), (2, 2)
SIZES = dict(vocab_size=V, num_layers=LAYERS, embed_dim=D, num_heads=H, head_dim=K, mlp_dim=F,
             max_len=16)


def lm(**kwargs):
  """A MoMa LM (2 + 2 experts, static counts CAP) unless ``kwargs`` say otherwise."""
  kwargs = {**SIZES, 'ffn': 'moe', 'experts_per_group': EXPERTS, 'modality_capacity': CAP,
            **kwargs}
  return MixedModalLM(**kwargs)


def layouts(capacity=CAP, rows=B, seed=0):
  rng = np.random.default_rng(seed)
  base = np.repeat(np.arange(len(capacity)), capacity)
  return np.stack([rng.permutation(base) for _ in range(rows)]).astype(np.int32)


def tokens(length=L, rows=B, seed=0):
  return np.random.default_rng(seed + 100).integers(0, V, (rows, length)).astype(np.int32)


def boxed_shapes(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens(), layouts(),
                                           train=False))['params']


def params_of(model, seed=0):
  """Random parameters (norm scales around 1, the rest 0.3 N(0, 1))."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == 'scale':
      return (1 + 0.2 * rng.normal(size=s.shape)).astype(np.float32)
    return (0.3 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(boxed_shapes(model)))


@functools.lru_cache(maxsize=None)
def forward(model):
  return jax.jit(lambda p, t, m: model.apply({'params': p}, t, m, train=False))


@functools.lru_cache(maxsize=None)
def decoder(model):
  return jax.jit(lambda p, t, m, pos, c: model.apply({'params': p}, t, m, pos, c,
                                                     method=MixedModalLM.decode))


def layer_params(model, p, i):
  """Layer ``i``'s parameters (numpy float64) from a scanned or unrolled model."""
  if not model.scan_layers:
    tree = p[f'layers_{i}']
  elif model.mod_fraction:
    size = model.mod_every
    tree = jax.tree.map(lambda a: a[i // size], p['layers'][f'layer{i % size}'])
  else:
    tree = jax.tree.map(lambda a: a[i], p['layers'])
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---- the numpy reference (float64): per-token loops over experts, gathered MoD tokens ----


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def np_norm(x, scale):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * scale


def np_rope(x, pos):  # x [T, H, K], pos [T]
  half = x.shape[-1] // 2
  angle = pos[:, None, None] * 10000.0 ** (-np.arange(half) / half)
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def np_attention_sublayer(x, w, pos):
  """One row: ``x [T, D]`` at positions ``pos [T]`` -> ``x + norm(attention out)``."""
  q = np_rope(np.einsum('td,dhk->thk', x, w['query']['kernel']), pos)
  k = np_rope(np.einsum('td,dhk->thk', x, w['key']['kernel']), pos)
  v = np.einsum('td,dhk->thk', x, w['value']['kernel'])
  s = np.einsum('thk,shk->hts', q, k) / np.sqrt(K)
  s = np.where(pos[None, None, :] <= pos[None, :, None], s, -np.inf)
  a = np.exp(s - s.max(-1, keepdims=True))
  a = np.einsum('hts,shk->thk', a / a.sum(-1, keepdims=True), v)
  return x + np_norm(np.einsum('thk,hkd->td', a, w['out']['kernel']), w['attn_norm']['scale'])


def np_expert_choice(h, group_of, ffn, experts, capacity_factor):
  """``h [N, D]`` (the batch's tokens in row-major order), ``group_of [N]``: per group ``g``
  every expert takes the top ``C`` of the group's tokens by its sigmoid score."""
  y = np.zeros_like(h)
  for g, e_g in enumerate(experts):
    p = ffn[f'group{g}']
    members = np.nonzero(group_of == g)[0]
    s = sigmoid(h[members] @ p['router'])  # [N_g, E]
    c = min(int(np.floor(len(members) / e_g * capacity_factor + 1e-9)), len(members))
    for e in range(e_g):
      take = np.argsort(-s[:, e], kind='stable')[:c]
      xs = h[members[take]]
      gate, up = xs @ p['gate'][e], xs @ p['up'][e]
      y[members[take]] += s[take, e:e + 1] * ((gate * sigmoid(gate) * up) @ p['down'][e])
  return y


def np_layer(x, w, pos, modality, model):
  """A MoMa layer on ``x [B, T, D]`` (positions / modality ids ``[B, T]``)."""
  h = np.stack([np_attention_sublayer(x[b], w, pos[b]) for b in range(x.shape[0])])
  group_of = (np.zeros_like(modality) if model.modality_blind else modality).reshape(-1)
  f = np_expert_choice(h.reshape(-1, D), group_of, w['ffn'], model.experts_per_group,
                       model.capacity_factor)
  return h + np_norm(f.reshape(h.shape), w['ffn_norm']['scale'])


def np_mod_choice(x, kernel, modality, fraction, capacity):
  """Each row's chosen positions (increasing): per modality when ``capacity``, else overall."""
  s = sigmoid(x @ kernel)  # [B, T]
  chosen = []
  for b in range(x.shape[0]):
    if capacity is None:
      pick = np.argsort(-s[b], kind='stable')[:int(np.floor(fraction * x.shape[1] + 1e-9))]
    else:
      pick = np.concatenate([
          np.nonzero(modality[b] == m)[0][np.argsort(-s[b][modality[b] == m], kind='stable')[
              :int(np.floor(fraction * c + 1e-9))]] for m, c in enumerate(capacity)])
    chosen.append(np.sort(pick))
  return np.stack(chosen), s


def reference_logits(model, p, toks, modality):
  emb = np.asarray(p['embedding'], np.float64)
  x = emb[toks]
  pos = np.broadcast_to(np.arange(toks.shape[1]), toks.shape)
  for i in range(model.num_layers):
    w = layer_params(model, p, i)
    if not model.is_mod_layer(i):
      x = np_layer(x, w, pos, modality, model)
      continue
    capacity = None if model.modality_blind else model.modality_capacity
    idx, s = np_mod_choice(x, w['mod_router']['kernel'], modality, model.mod_fraction, capacity)
    take = lambda a: np.take_along_axis(a, idx if a.ndim == 2 else idx[..., None], 1)
    xs = take(x)
    out = np_layer(xs, w, take(pos), take(modality), model)
    rows = np.arange(x.shape[0])[:, None]
    x = x.copy()
    x[rows, idx] = xs + take(s)[..., None] * (out - xs)
  x = np_norm(x, np.asarray(p['final_norm']['scale'], np.float64))
  return x @ emb.T


@pytest.mark.parametrize('kwargs', [
    dict(),  # MoMa 2 + 2
    dict(mod_fraction=0.5),  # MoMa + MoD (per-modality choice), scanned in pairs
    dict(experts_per_group=(3,), modality_blind=True, modality_capacity=None, mod_fraction=0.5,
         scan_layers=False),  # the mixed-modal expert-choice MoE + MoD, unrolled
])
def test_moma_matches_numpy_reference(kwargs):
  model = lm(**kwargs)
  p = params_of(model)
  for seed in range(2):
    toks, mod = tokens(seed=seed), layouts(seed=seed)
    want = reference_logits(model, p, toks, mod)
    np.testing.assert_allclose(forward(model)(p, toks, mod), want, rtol=1e-5, atol=1e-5)
  if not model.modality_blind:  # the modality decides the expert group
    other = reference_logits(model, p, toks, 1 - mod)
    assert np.abs(other - want).max() > 1e-2


def test_causal_mode_never_looks_ahead_and_expert_choice_does():
  causal, ec = lm(mod_fraction=0.5, routing_mode='causal'), lm(mod_fraction=0.5)
  p = params_of(causal, seed=1)
  toks, mod = tokens(seed=2), layouts(seed=2)
  t = 3
  later, later_mod = toks.copy(), mod.copy()
  later[:, t + 1:] = (later[:, t + 1:] + 7) % V
  later_mod[:, t + 1:] = later_mod[:, t + 1:][:, ::-1]  # rearranged after t, counts kept
  base, changed = forward(causal)(p, toks, mod), forward(causal)(p, later, later_mod)
  np.testing.assert_allclose(changed[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5)
  assert np.abs(changed[:, t + 1:] - base[:, t + 1:]).max() > 1e-3
  # Expert choice ranks each token against the later ones: earlier logits move.
  moved = np.abs(forward(ec)(p, later, later_mod)[:, :t + 1] - forward(ec)(p, toks, mod)[:, :t + 1])
  assert moved.max() > 1e-3, moved.max()


def test_causal_inference_mode_trains_by_expert_choice_and_infers_causally():
  both = lm(mod_fraction=0.5, routing_mode='causal_inference')
  p = params_of(both, seed=3)
  toks, mod = tokens(seed=4), layouts(seed=4)
  for train, mode in ((True, 'expert_choice'), (False, 'causal')):
    got = both.apply({'params': p}, toks, mod, train=train)
    want = lm(mod_fraction=0.5, routing_mode=mode).apply({'params': p}, toks, mod, train=train)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize('scan', [True, False])
def test_kv_cache_decode_matches_causal_forward(scan):
  # routing_mode='expert_choice' on purpose: decode routes causally whatever the field says.
  model = lm(mod_fraction=0.5, scan_layers=scan)
  p = params_of(model, seed=3)
  toks, mod = tokens(seed=4), layouts(seed=4)
  want = forward(lm(mod_fraction=0.5, scan_layers=scan, routing_mode='causal'))(p, toks, mod)
  cache = model.init_cache(B, 12)
  assert cache['valid'].shape == (LAYERS, B, 12)
  logits, cache = decoder(model)(p, toks[:, :3], mod[:, :3], 0, cache)
  got = [logits]
  for i in range(3, L):
    logits, cache = decoder(model)(p, toks[:, i:i + 1], mod[:, i:i + 1], i, cache)
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, 1), want, rtol=1e-5, atol=1e-5)
  # The MoD layer chose some cached keys and skipped others; the plain layer keeps them all.
  valid = np.asarray(cache['valid'])[:, :, :L]
  assert valid[0].all() and valid[1].any() and not valid[1].all()
  if scan:  # greedy generation = argmax of the causal forward (any layout: select routing)
    out, out_mod = generate(model, p, toks[:, :4], mod[:, :4], 4, jax.random.key(0),
                            temperature=0.0, modality_fn=lambda t: (t >= V // 2).astype(jnp.int32))
    seq, seq_mod = np.concatenate([toks[:, :4], out], 1), np.concatenate([mod[:, :4], out_mod], 1)
    full = forward(lm(mod_fraction=0.5, routing_mode='causal', modality_capacity=None))(
        p, seq, seq_mod)
    np.testing.assert_array_equal(np.argmax(full[:, 3:-1], -1), out)


def test_mod_at_full_fraction_is_the_plain_layer_scaled_by_the_router():
  model = lm(ffn='dense', experts_per_group=(), modality_capacity=None, mod_fraction=1.0)
  p = params_of(model, seed=5)
  toks, mod = tokens(seed=6), layouts(seed=6)
  block = DecoderBlock(H, K, F)
  run = lambda w, x: block.apply({'params': w}, x, shared_routing(), jnp.int32(0))[0]
  x = p['embedding'][toks]
  x = run(jax.tree.map(lambda a: a[0], p['layers']['layer0']), x)  # layer 0: plain
  w1 = jax.tree.map(lambda a: a[0], p['layers']['layer1'])  # layer 1: MoD over every token
  s = jax.nn.sigmoid(x @ w1['mod_router']['kernel'])[..., None]
  x = x + s * (run({k: v for k, v in w1.items() if k != 'mod_router'}, x) - x)
  x = x / jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True) + 1e-6) * p['final_norm']['scale']
  np.testing.assert_allclose(forward(model)(p, toks, mod), x @ p['embedding'].T, rtol=1e-5,
                             atol=1e-5)


def test_mod_layer_skips_the_unchosen_tokens():
  n = 8
  block = MoMaBlock(H, K, F, mod_fraction=0.25)
  x = jnp.asarray(np.random.default_rng(7).normal(size=(B, n, D)), jnp.float32)
  inputs = LayerInputs(modality=jnp.zeros((B, n), jnp.int32), start=jnp.int32(0))
  w = params_of(lm(ffn='dense', experts_per_group=(), modality_capacity=None, mod_fraction=0.5,
                   scan_layers=False), seed=8)['layers_1']
  y = np.asarray(block.apply({'params': w}, x, inputs)[0])
  idx, scores = mod_select(x, w['mod_router']['kernel'], 0.25)  # 2 tokens per row
  chosen = np.zeros((B, n), bool)
  chosen[np.arange(B)[:, None], np.asarray(idx)] = True
  np.testing.assert_array_equal(y[~chosen], np.asarray(x)[~chosen])  # skipped: bit for bit
  # The chosen tokens: the plain layer on them alone, at their own positions, score-weighted.
  plain = DecoderBlock(H, K, F)
  xs = jnp.take_along_axis(x, idx[..., None], 1)
  out = plain.apply({'params': {k: v for k, v in w.items() if k != 'mod_router'}}, xs,
                    shared_routing(), jnp.int32(0), positions=idx)[0]
  np.testing.assert_allclose(y[chosen].reshape(B, 2, D), xs + scores[..., None] * (out - xs),
                             rtol=1e-5, atol=1e-5)


def test_aux_router_loss_reaches_only_the_aux_routers():
  model = lm(mod_fraction=0.5)
  p = params_of(model, seed=9)
  toks, mod = tokens(seed=9), layouts(seed=9)

  def loss(p):  # the documented recipe: an expert-choice forward with the sown terms collected
    _, state = model.apply({'params': p}, toks, mod, train=True, mutable=['intermediates'])
    return aux_router_terms(state['intermediates'])['loss']

  terms = lm_terms(model.apply({'params': p}, toks, mod, train=True,
                               mutable=['intermediates'])[1]['intermediates'])
  assert terms['routers'] == LAYERS * len(EXPERTS) + LAYERS // 2  # expert groups + MoD routers
  assert 0 <= terms['accuracy'] <= 1 and terms['loss'] > 0
  grads = jax.jit(jax.grad(loss))(p)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    names = [k.key for k in path]
    assert (np.abs(g).max() > 0) == ('aux_router' in names), names
  # Without the collection the call returns logits only; causal mode sows nothing.
  assert forward(model)(p, toks, mod).shape == (B, L, V)
  causal = lm(mod_fraction=0.5, routing_mode='causal')
  _, state = causal.apply({'params': p}, toks, mod, train=True, mutable=['intermediates'])
  assert aux_router_terms(state.get('intermediates', {}))['routers'] == 0


def compiled_flops(model, length=16, rows=2):
  toks = jnp.zeros((rows, length), jnp.int32)
  mod = jnp.asarray(layouts(model.modality_capacity or (length,), rows))
  p = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), toks, mod, train=False)))
  cost = jax.jit(lambda p, t, m: model.apply(p, t, m, train=False)).lower(p, toks, mod).compile()
  cost = cost.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)['flops']


def test_compiled_flops():
  # Unrolled layers (XLA counts a scanned body once); layer 1 is the MoD layer.
  sizes = dict(vocab_size=64, embed_dim=32, head_dim=16, mlp_dim=64, max_len=16,
               scan_layers=False, modality_capacity=(10, 6))
  dense = compiled_flops(lm(**sizes, ffn='dense', experts_per_group=()))
  moma = compiled_flops(lm(**sizes))
  mod = compiled_flops(lm(**sizes, ffn='dense', experts_per_group=(), mod_fraction=0.25))
  moma_mod = compiled_flops(lm(**sizes, mod_fraction=0.25))
  # Measured (JAX 0.10.2, CPU): dense 1,650,768; MoMa 2+2 1,666,572 (1.0096x: routers, sigmoid,
  # gathers, scatter-add); dense + MoD 0.25 1,073,543 (0.650x dense: the MoD layer runs on 4 of
  # 16 tokens); MoMa + MoD 0.25 1,038,212 (0.623x MoMa: per modality 2 of 10 + 1 of 6 tokens).
  # Analytic / compiled: 0.953 dense, 0.949 MoMa, 0.952 MoD, 0.948 MoMa + MoD.
  assert 1.0 <= moma / dense < 1.2, (moma, dense)
  assert mod / dense < 0.8 and moma_mod / moma < 0.8, (mod, moma_mod, dense, moma)
  # The analytic matmul count (2 sequences) stays just below XLA's, which adds the elementwise.
  for model, compiled in ((lm(**sizes), moma), (lm(**sizes, mod_fraction=0.25), moma_mod)):
    analytic = 2 * mixed_modal_lm_flops(model, 16)
    assert 0.9 < analytic / compiled <= 1.0, (analytic, compiled)


def test_upcycled_dense_model_is_exact_with_two_experts_at_full_capacity():
  dense = MixedModalLM(**SIZES)
  pd = params_of(dense, seed=10)
  moma = lm(capacity_factor=2.0)  # every expert takes every token, each weighted sigmoid(0)
  pm = upcycle_params(dense, pd, moma, params_of(moma, seed=11))
  toks, mod = tokens(seed=12), layouts(seed=12)
  np.testing.assert_allclose(forward(moma)(pm, toks, mod), forward(dense)(pd, toks, mod),
                             rtol=1e-5, atol=1e-5)
  assert not np.any(pm['layers']['ffn']['group0']['router'])
  np.testing.assert_array_equal(pm['layers']['ffn']['group1']['gate'][:, 1],
                                pd['layers']['ffn']['gate']['kernel'])
  unrolled = lm(mod_fraction=0.5, scan_layers=False)
  pu = upcycle_params(dense, pd, unrolled, params_of(unrolled))
  assert not np.any(pu['layers_1']['mod_router']['kernel'])
  np.testing.assert_array_equal(pu['layers_1']['query']['kernel'],
                                pd['layers']['query']['kernel'][1])


def test_bad_input_errors():
  with pytest.raises(ValueError, match="ffn='moe' with untie='mot' is not supported"):
    lm(untie='mot')
  with pytest.raises(ValueError, match=r'experts_per_group \(2, 2, 2\) has 3 entries, expected '
                                       r'one per modality \(num_modalities is 2\)'):
    lm(experts_per_group=(2, 2, 2))
  with pytest.raises(ValueError, match=r'has 2 entries, expected 1 \(modality_blind'):
    lm(modality_blind=True)
  with pytest.raises(ValueError, match=r'experts_per_group of positive ints, got \(2, 0\)'):
    lm(experts_per_group=(2, 0))
  with pytest.raises(ValueError, match=r"need ffn='moe', got ffn='dense'"):
    lm(ffn='dense')
  # capacity: group 1 holds B * 3 = 6 tokens; 6 / 2 experts x 0.25 = 0.75 -> 0.
  with pytest.raises(ValueError, match=r'group1: capacity 6 tokens / 2 experts x capacity_factor '
                                       r'0.25 = 0.75 rounds to 0'):
    lm(capacity_factor=0.25).init(jax.random.key(0), tokens(), layouts(), train=False)
  for fraction in (-0.5, 1.5):
    with pytest.raises(ValueError, match=rf'mod_fraction must be 0 \(off\) or in \(0, 1\], got '
                                         rf'{fraction}'):
      lm(mod_fraction=fraction)
  with pytest.raises(ValueError, match=r'mod_fraction=0.5\) with untie=.mot. is not supported'):
    MixedModalLM(**SIZES, untie='mot', modality_capacity=CAP, mod_fraction=0.5)
  with pytest.raises(ValueError, match='num_layers 3 is not a multiple of mod_every 2'):
    lm(num_layers=3, mod_fraction=0.5)
  with pytest.raises(ValueError, match='fraction 0.1 of the 5 tokens of modality 0 rounds to 0'):
    lm(mod_fraction=0.1).init(jax.random.key(0), tokens(), layouts(), train=False)
  with pytest.raises(ValueError, match="routing_mode='expert_choice' needs modality_capacity"):
    lm(modality_capacity=None).init(jax.random.key(0), tokens(), layouts(), train=False)
  with pytest.raises(ValueError, match="routing_mode='greedy' is not one of"):
    lm(routing_mode='greedy')


@pytest.mark.parametrize('kwargs', [dict(), dict(mod_fraction=0.5),
                                    dict(mod_fraction=0.5, scan_layers=False)])
def test_every_parameter_has_logical_axes(kwargs):
  model = lm(**kwargs)
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed_shapes(model), is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  assert leaves
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim and None not in leaf.names, (path, leaf.names)
    rules.check_names_covered(leaf.names, 'MoMa MixedModalLM')
    scanned = model.scan_layers and path[0].key == 'layers'
    assert (leaf.names[0] == 'layers') == scanned, (path, leaf.names)


def test_decoder_lm_passes_the_moma_fields():
  schema = SequenceSchema(seq_len=64, images_per_sequence=1, text_vocab_size=40, codebook_size=8)
  inner = DecoderLM(schema, ffn='moe', experts_per_group=[2, 2], mod_fraction=0.5,
                    routing_mode='causal').lm()
  assert inner.modality_capacity == tuple(schema.modality_counts)
  assert (inner.experts_per_group, inner.mod_fraction, inner.routing_mode) == (
      (2, 2), 0.5, 'causal')
  assert DecoderLM(schema, ffn='moe', experts_per_group=(4,),
                   modality_blind=True).lm().modality_capacity is None
