"""Sparse layers of MoMa (Mixture of Modality-aware experts; Lin et al. 2024, arXiv:2407.21770).

Only the feed-forward layers are sparse; attention stays shared. Three pieces:

* ``ExpertChoiceFFN``: experts split into modality groups (e.g. 4 text + 4 image); a token goes
  to its own modality's group, and inside the group EXPERT-CHOICE routing picks the tokens: a
  sigmoid router score ``s[n, e] = sigmoid(x_n . w_e)`` per (token, expert), and expert ``e``
  takes the ``C = floor(N_g / E_g * capacity_factor)`` tokens of the group with the highest
  scores, where ``N_g`` is the number of the group's tokens in the WHOLE batch (the paper's
  batch-level expert choice). A token is processed by 0, 1 or several experts, each output
  weighted by its sigmoid score and summed; no load-balancing loss (the load is balanced by
  construction). ``modality_blind=True`` with one group is the mixed-modal expert-choice MoE the
  paper compares against (its "MoE 8x").
* Mixture-of-depths (Raposo et al. 2024, arXiv:2404.02258, as MoMa uses it): ``MoDRouter`` /
  ``mod_select`` pick the top ``fraction`` of each SEQUENCE by a sigmoid score and ``apply_mod``
  runs a layer on those tokens only, ``x + score * (layer(x_sel) - x_sel)``; the rest skip it.
* Auxiliary routers (MoMa): ``AuxRouter`` ``sigmoid(SiLU(x W1) W2)`` trained after the
  main model with ``aux_router_loss`` (BCE against the main router's choices); at inference
  ``causal_route`` thresholds it at 0.5, each token on its own, which keeps decoding causal.

The decoder layer built from them is ``MoMaBlock`` (shared attention from ``decoder.DecoderBlock``,
a dense or MoMa FFN, optionally under MoD; its routers' auxiliary-router terms are sown into the
``'intermediates'`` collection and summed by ``aux_router_terms``); ``jaxrec.models.
mixed_modal_lm.MixedModalLM(ffn='moe', mod_fraction=...)`` stacks it.

Why a causal mode: expert choice (and MoD top-k) ranks a token against the other tokens of the
batch, later ones included, so in training a token's output depends on tokens after it (see
``tests/layers/test_moe.py``). ``train=False`` routes with the auxiliary routers instead.

Static shapes. Training: a modality's tokens come out of a ``decoder.Routing`` (the stable
argsort groups of ``decoder.grouped_routing``, static size ``B * C_m``); each expert gathers its
``C`` tokens (``jnp.take``), runs a batched SwiGLU over ``[E, C, D]`` and scatter-adds back
(``.at[].add``), so the expert matmul FLOPs are ``E * C`` token-passes, ``capacity_factor`` times
a dense FFN's (``moe_ffn_flops``). Causal mode is the exact, more expensive path: every expert of
the group runs on every token of the group (``E_g`` times the matmuls) and the tokens whose
auxiliary score is at most 0.5 are masked out; with ``select_routing`` (any layout, decoding)
every group also runs on every token.

MoD selection is per sequence (``k = floor(fraction * L)`` tokens of each row), not per batch as
MoMa's expert choice: per-batch top-k gives each row a data-dependent count, while the layer
under MoD contains attention that must stay inside its row, so per-row ``[B, k, D]`` is the
static layout (and the original MoD paper's choice). Attention inside a MoD layer sees only the
selected tokens of the row; they keep their original order and positions (``apply_mod`` passes
them to the layer for rotary and the causal mask). When the layer's FFN is modality-aware
(``mod_select`` with ``capacity``) each modality is ranked apart, ``floor(fraction * C_m)`` of
the row's ``C_m`` tokens of modality ``m``, so the chosen tokens still form static per-modality
groups for expert choice (a per-row top-k over all tokens would give data-dependent counts).

Logical axes: expert kernels ``('expert', 'embed', 'mlp')`` / ``('expert', 'mlp', 'embed')``,
router ``('embed', 'expert')``, auxiliary router ``('embed', 'mlp')`` / ``('mlp', 'expert')``
(``('mlp',)`` for MoD's single output), MoD router ``('embed',)``. All have rules in
``jaxrec.sharding.rules``: ``'expert'`` is split over a mesh ``expert`` axis when there is one,
and the sharding code then sets ``dispatch_fn`` to the all-to-all dispatch of
``jaxrec.sharding.expert_parallel`` (expert parallelism).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxrec.layers.decoder import (DecoderBlock, RMSNorm, Routing, SwiGLU, grouped_routing,
                                   shared_routing)

# Logical axis names the parameters here use (none new: all are in the decoder's / DCN's set).
AXIS_NAMES = ('embed', 'mlp', 'expert')

_EPS = 1e-9  # floor(a * b) without float noise: 0.29 * 100 is 28.999999999999996


def _init(in_axis, out_axis, batch_axis=()):
  return nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=in_axis,
                                          out_axis=out_axis, batch_axis=batch_axis)


def _param(module: nn.Module, name: str, shape, axes, in_axis, out_axis, batch_axis=()):
  init = nn.with_logical_partitioning(_init(in_axis, out_axis, batch_axis), axes)
  return module.param(name, init, tuple(shape), jnp.float32)


def expert_capacity(tokens: int, num_experts: int, capacity_factor: float,
                    where: str = 'expert_capacity') -> int:
  """Tokens each expert takes: ``min(floor(tokens / num_experts * capacity_factor), tokens)``.

  Raises ValueError naming the numbers when an expert would get no token.
  """
  if num_experts > tokens:
    raise ValueError(f'{where}: {num_experts} experts but only {tokens} tokens of the group in '
                     f'the batch; expert choice needs at least as many tokens as experts')
  if capacity_factor <= 0:
    raise ValueError(f'{where}: capacity_factor must be > 0, got {capacity_factor}')
  exact = tokens / num_experts * capacity_factor
  capacity = int(math.floor(exact + _EPS))
  if capacity < 1:
    raise ValueError(f'{where}: capacity {tokens} tokens / {num_experts} experts x '
                     f'capacity_factor {capacity_factor} = {exact:.4g} rounds to 0 tokens per '
                     f'expert')
  return min(capacity, tokens)


def _swiglu_experts(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
  """Expert ``e``'s SwiGLU on its tokens: ``x [E, T, D]``, kernels ``[E, D, F]``/``[E, F, D]``."""
  h = nn.silu(jnp.einsum('etd,edf->etf', x, gate)) * jnp.einsum('etd,edf->etf', x, up)
  return jnp.einsum('etf,efd->etd', h, down)  # [E, T, D]


def local_dispatch(x: jax.Array, index: jax.Array, weight: jax.Array, gate: jax.Array,
                   up: jax.Array, down: jax.Array) -> jax.Array:
  """Expert-choice dispatch, expert compute and combine on one device (the default
  ``dispatch_fn``).

  Args:
    x: ``[N, D]`` the group's tokens. index: int ``[E, C]``, the tokens expert ``e`` chose.
    weight: ``[E, C]`` their router scores. gate, up: ``[E, D, F]``. down: ``[E, F, D]``.

  Returns:
    ``y [N, D]``: ``y[n] = sum over (e, k) with index[e, k] == n of weight[e, k] *
    SwiGLU_e(x[n])`` (zero for a token no expert chose). Any ``dispatch_fn`` (e.g. the
    expert-parallel one of ``jaxrec.sharding.expert_parallel``) must return the same.
  """
  n, d = x.shape
  out = _swiglu_experts(jnp.take(x, index, axis=0), gate, up, down)  # [E, C, D]
  out = out * weight[..., None].astype(out.dtype)
  return jnp.zeros_like(out, shape=(n, d)).at[index.reshape(-1)].add(out.reshape(-1, d))


# dispatch_fn(x [N, D], index [E, C], weight [E, C], gate, up, down) -> y [N, D]
DispatchFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array],
                      jax.Array]


class AuxRouter(nn.Module):
  """Causal auxiliary router ``sigmoid(SiLU(x W1) W2)`` (MoMa); returns the LOGITS.

  ``W1``: ``[D, hidden]`` ``('embed', 'mlp')`` with ``hidden = D // 2`` by default; ``W2``:
  ``[hidden, E]`` ``('mlp', 'expert')``, or ``[hidden]`` ``('mlp',)`` when ``num_outputs`` is
  None (MoD: one score per token). No biases.

  Call: ``x [..., D]`` -> logits ``[..., E]`` (or ``[...]``); the router's probability is
  ``sigmoid(logits)``. Each token is scored on its own, so routing with it is causal.
  """
  num_outputs: Optional[int] = None
  hidden: Optional[int] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    hidden = self.hidden or d // 2
    if hidden < 1:
      raise ValueError(f'AuxRouter: hidden width {hidden} (model width {d} // 2) must be >= 1')
    w1 = _param(self, 'w1', (d, hidden), ('embed', 'mlp'), 0, 1)
    if self.num_outputs is None:
      w2 = _param(self, 'w2', (hidden,), ('mlp',), 0, ())
    else:
      w2 = _param(self, 'w2', (hidden, self.num_outputs), ('mlp', 'expert'), 0, 1)
    x, w1, w2 = nn.dtypes.promote_dtype(x, w1, w2, dtype=self.dtype)
    h = nn.silu(x @ w1)  # [..., hidden]
    return jnp.tensordot(h, w2, axes=1).astype(jnp.float32)


def aux_router_loss(aux_logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of ``sigmoid(aux_logits)`` against 0/1 ``targets``.

  ``targets``: the main router's true choices (``aux['selected']`` of ``ExpertChoiceFFN``, or
  ``selection_mask`` of MoD), same shape; gradients are stopped through them (the main model is
  frozen while the auxiliary routers train). Computed from logits:
  ``softplus(z) - y z = -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]``.
  """
  if aux_logits.shape != targets.shape:
    raise ValueError(f'aux_router_loss: logits {aux_logits.shape} and targets {targets.shape} '
                     f'differ in shape')
  z = aux_logits.astype(jnp.float32)
  y = jax.lax.stop_gradient(targets).astype(jnp.float32)
  return jnp.mean(jax.nn.softplus(z) - y * z)


def causal_route(aux_logits: jax.Array, threshold: float = 0.5) -> jax.Array:
  """Inference routing: bool, True where ``sigmoid(aux_logits) > threshold`` (token by token)."""
  return jax.nn.sigmoid(aux_logits.astype(jnp.float32)) > threshold


class _ExpertGroup(nn.Module):
  """One modality group: router, ``E`` stacked SwiGLU experts, auxiliary router.

  Call: ``x [N, D]`` (the group's tokens of the whole batch) -> ``(y [N, D], aux)``.
  """
  num_experts: int
  mlp_dim: int
  capacity_factor: float
  dtype: Optional[Any] = None
  dispatch_fn: Optional[DispatchFn] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    n, d = x.shape
    e, f = self.num_experts, self.mlp_dim
    router = _param(self, 'router', (d, e), ('embed', 'expert'), 0, 1)
    gate = _param(self, 'gate', (e, d, f), ('expert', 'embed', 'mlp'), 1, 2, 0)
    up = _param(self, 'up', (e, d, f), ('expert', 'embed', 'mlp'), 1, 2, 0)
    down = _param(self, 'down', (e, f, d), ('expert', 'mlp', 'embed'), 1, 2, 0)
    # The auxiliary router learns from a frozen main model: no gradient into x from it.
    aux_logits = AuxRouter(e, dtype=self.dtype, name='aux_router')(jax.lax.stop_gradient(x))
    x, router, gate, up, down = nn.dtypes.promote_dtype(x, router, gate, up, down,
                                                        dtype=self.dtype)
    scores = jax.nn.sigmoid((x @ router).astype(jnp.float32))  # [N, E]
    if train:
      c = expert_capacity(n, e, self.capacity_factor, where=self.name)
      weight, index = jax.lax.top_k(scores.T, c)  # [E, C]; ties: the lower token index first
      y = (self.dispatch_fn or local_dispatch)(x, index, weight, gate, up, down)
      selected = jnp.zeros((e, n), bool).at[jnp.arange(e)[:, None], index].set(True).T
    else:  # exact causal path: every expert on every token, masked by the auxiliary router
      selected = causal_route(aux_logits)  # [N, E]
      out = _swiglu_experts(jnp.broadcast_to(x, (e, n, d)), gate, up, down)  # [E, N, D]
      weight = jnp.where(selected, scores, 0.0).T.astype(out.dtype)  # [E, N]
      y = jnp.einsum('en,end->nd', weight, out)
    return y, {'scores': scores, 'selected': selected, 'aux_logits': aux_logits}


class ExpertChoiceFFN(nn.Module):
  """MoMa's sparse FFN: modality groups of expert-choice SwiGLU experts (module docstring).

  Attributes:
    num_experts_per_group: ``E_g`` per group; group ``g`` serves the ``g``-th group of the
      routing (modality ``g`` for ``grouped_routing`` / ``select_routing``). Each entry >= 1.
    mlp_dim: each expert's SwiGLU hidden width ``F``.
    capacity_factor: expert capacity ``C_g = floor(N_g / E_g * capacity_factor)`` (capped at
      ``N_g``), ``N_g`` the group's tokens in the batch.
    modality_blind: one group over every token, the routing ignored (the mixed-modal MoE).
    dtype: computation dtype (None: promote inputs and parameters).
    dispatch_fn: the expert-choice dispatch / compute / combine of a group in training
      (``local_dispatch`` when None; the expert-parallel all-to-all of
      ``jaxrec.sharding.expert_parallel`` plugs in here).

  Parameters (group ``g`` is the submodule ``group{g}``): ``router [D, E_g]``, ``gate`` / ``up``
  ``[E_g, D, F]``, ``down [E_g, F, D]``, ``aux_router`` (``AuxRouter`` with ``E_g`` outputs).

  Call:
    x: ``[B, L, D]``. routing: a ``decoder.Routing`` by modality; training needs static group
      sizes: ``grouped_routing(modality, capacity)`` (row ``b`` holds exactly ``capacity[m]``
      tokens of modality ``m``, so group ``m`` has ``N_m = B * capacity[m]`` tokens). Causal
      mode also takes ``select_routing(modality, M)`` (any layout). Ignored when modality_blind.
    train: True: expert choice over the batch (non-causal). False: causal auxiliary routing.

  Returns:
    ``(y [B, L, D], aux)``; ``aux`` holds ``'expert_count'`` int ``[B, L]`` (experts that
    processed each token, token order) and per group, in ``routing.split`` order, tuples of
    ``[B, C_g, E_g]`` arrays (``C_g = L`` for select / shared routing): ``'scores'`` (main
    router sigmoid), ``'selected'`` (bool, expert took the token: the auxiliary routers'
    targets) and ``'aux_logits'`` (the auxiliary routers' logits, input gradient stopped).

  Example::

    ffn = ExpertChoiceFFN((2, 2), mlp_dim=64)
    routing = grouped_routing(modality, (6, 2))        # 6 text + 2 image tokens per row
    y, aux = ffn.apply(params, x, routing, train=True)
  """
  num_experts_per_group: tuple[int, ...]
  mlp_dim: int
  capacity_factor: float = 1.0
  modality_blind: bool = False
  dtype: Optional[Any] = None
  dispatch_fn: Optional[DispatchFn] = None

  @nn.compact
  def __call__(self, x: jax.Array, routing: Optional[Routing] = None, *, train: bool):
    experts = tuple(self.num_experts_per_group)
    if not experts or any(e < 1 for e in experts):
      raise ValueError(f'ExpertChoiceFFN: every group needs >= 1 expert, got '
                       f'num_experts_per_group={experts}')
    if self.modality_blind:
      if len(experts) != 1:
        raise ValueError(f'ExpertChoiceFFN: modality_blind takes one group, got '
                         f'num_experts_per_group={experts}')
      routing = shared_routing()
    if routing is None:
      raise ValueError('ExpertChoiceFFN: a modality-aware FFN needs a routing by modality')
    if len(routing.modalities) != len(experts):
      raise ValueError(f'ExpertChoiceFFN: the routing has {len(routing.modalities)} modality '
                       f'group(s) but num_experts_per_group={experts} has {len(experts)}; every '
                       f'modality needs its own group of experts')
    if train and routing.mode == 'select':
      raise ValueError('ExpertChoiceFFN: training (expert choice) needs static group sizes: use '
                       'grouped_routing(modality, capacity), not select_routing')
    b, d = x.shape[0], x.shape[-1]
    ys, counts, aux = [], [], {'scores': [], 'selected': [], 'aux_logits': []}
    for g, (xg, e) in enumerate(zip(routing.split(x), experts)):  # xg: [B, C_g, D]
      group = _ExpertGroup(e, self.mlp_dim, self.capacity_factor, self.dtype, self.dispatch_fn,
                           name=f'group{g}')
      yg, ag = group(xg.reshape(-1, d), train)  # [B * C_g, D]
      ys.append(yg.reshape(xg.shape))
      counts.append(ag['selected'].sum(-1).reshape(xg.shape[:2]))
      for key, value in ag.items():
        aux[key].append(value.reshape(xg.shape[:2] + (e,)))
    aux = {key: tuple(value) for key, value in aux.items()}
    aux['expert_count'] = routing.merge(counts)  # [B, L]
    y = routing.merge(ys)
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), aux


# ---- mixture-of-depths ----


def mod_capacity(length: int, fraction: float) -> int:
  """Tokens per sequence a MoD layer processes: ``floor(fraction * length)``; checked."""
  if not 0 < fraction <= 1:
    raise ValueError(f'MoD: fraction must be in (0, 1], got {fraction}')
  k = int(math.floor(fraction * length + _EPS))
  if k < 1:
    raise ValueError(f'MoD: fraction {fraction} of {length} tokens rounds to 0 tokens')
  return k


def mod_modality_counts(capacity: Sequence[int], fraction: float) -> tuple[int, ...]:
  """Tokens of each modality per sequence a modality-aware MoD layer processes:
  ``floor(fraction * capacity[m])`` (0 for an absent modality); checked."""
  if not 0 < fraction <= 1:
    raise ValueError(f'MoD: fraction must be in (0, 1], got {fraction}')
  counts = []
  for m, c in enumerate(capacity):
    k = int(math.floor(fraction * c + _EPS))
    if c and k < 1:
      raise ValueError(f'MoD: fraction {fraction} of the {c} tokens of modality {m} rounds to 0 '
                       f'tokens')
    counts.append(k)
  return tuple(counts)


def mod_select(x: jax.Array, router_kernel: jax.Array, fraction: float,
               modality: Optional[jax.Array] = None,
               capacity: Optional[Sequence[int]] = None):
  """Each sequence's top ``k = floor(fraction * L)`` tokens by ``sigmoid(x . w)``.

  With ``modality`` and ``capacity`` (each row holds exactly ``capacity[m]`` tokens of modality
  ``m``), each modality is ranked apart: the row's top ``floor(fraction * capacity[m])`` tokens
  of each modality ``m`` (``mod_modality_counts``), so the chosen tokens have static
  per-modality counts and a modality-aware layer can still group them with
  ``decoder.grouped_routing``.

  Args:
    x: ``[B, L, D]``. router_kernel: ``[D]``. fraction: in ``(0, 1]``.
    modality: optional int ``[B, L]``; capacity: the per-row counts (with ``modality``).

  Returns:
    ``(indices int [B, k], scores [B, k])``: the chosen positions in increasing order (the
    tokens keep their original order) and their sigmoid scores (float32, differentiable in the
    kernel). Ties: the lower position first.
  """
  x, router_kernel = nn.dtypes.promote_dtype(x, router_kernel)
  scores = jax.nn.sigmoid(jnp.einsum('bld,d->bl', x, router_kernel).astype(jnp.float32))
  if modality is None:
    _, index = jax.lax.top_k(scores, mod_capacity(x.shape[1], fraction))  # [B, k]
  else:
    if capacity is None or sum(capacity) != x.shape[1]:
      raise ValueError(f'mod_select: per-modality selection needs capacity summing to the '
                       f'sequence length {x.shape[1]}, got {capacity}')
    # Other modalities' tokens score -1, below any sigmoid; k_m <= capacity[m] never reaches them.
    index = jnp.concatenate(
        [jax.lax.top_k(jnp.where(modality == m, scores, -1.0), k)[1]
         for m, k in enumerate(mod_modality_counts(capacity, fraction)) if k], axis=-1)
  index = jnp.sort(index, axis=-1)
  return index, jnp.take_along_axis(scores, index, axis=-1)


def selection_mask(indices: jax.Array, length: int) -> jax.Array:
  """bool ``[B, length]``, True at ``indices [B, k]`` (MoD's auxiliary-router targets)."""
  rows = jnp.arange(indices.shape[0])[:, None]
  return jnp.zeros((indices.shape[0], length), bool).at[rows, indices].set(True)


class MoDRouter(nn.Module):
  """Mixture-of-depths router: a sigmoid score per token (``kernel [D]``, ``('embed',)``).

  Also holds the causal ``AuxRouter`` (one output) that routes at inference.

  Attributes:
    fraction: the share of each sequence's tokens the layer processes, in ``(0, 1]``.
    capacity: optional per-modality token counts of every row: rank each modality apart
      (``mod_select``; the call then takes ``modality``).

  Call: ``x [B, L, D]``, ``train``, ``modality`` (int ``[B, L]``, with ``capacity``),
  ``check_fraction`` (causal routing: whether ``fraction`` of ``L`` must round to >= 1 token, as
  in training; False when decoding a few tokens at a time). Returns
  ``(route, scores, aux_logits [B, L])``:
    train=True: ``route`` = indices int ``[B, k]``, ``scores [B, k]`` (``mod_select``; feed
      ``apply_mod``); the auxiliary targets are ``selection_mask(route, L)``.
    train=False: ``route`` = bool ``[B, L]`` (``causal_route`` of the aux logits), ``scores [B, L]``
      (the main router's sigmoid per token; feed ``apply_mod_causal``).
  """
  fraction: float
  capacity: Optional[tuple[int, ...]] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, modality: Optional[jax.Array] = None,
               check_fraction: bool = True):
    kernel = _param(self, 'kernel', (x.shape[-1],), ('embed',), 0, ())
    aux_logits = AuxRouter(name='aux_router')(jax.lax.stop_gradient(x))  # [B, L]
    if train:
      by_modality = self.capacity is not None
      if by_modality and modality is None:
        raise ValueError(f'{self.name}: per-modality selection (capacity={self.capacity}) needs '
                         f'the modality ids')
      index, scores = mod_select(x, kernel, self.fraction, modality if by_modality else None,
                                 self.capacity)
      return index, scores, aux_logits
    if check_fraction:
      mod_capacity(x.shape[1], self.fraction)  # same checks in both modes
    x, kernel = nn.dtypes.promote_dtype(x, kernel)
    scores = jax.nn.sigmoid(jnp.einsum('bld,d->bl', x, kernel).astype(jnp.float32))
    return causal_route(aux_logits), scores, aux_logits


# ``layer_fn(h [B, S, D], positions int [B, S], valid bool [B, S]) -> [B, S, D]``: a layer that
# puts each token at its given position and lets it attend only to valid keys at positions <= its
# own (an FFN-only layer ignores both).
LayerFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def apply_mod(layer_fn: LayerFn, x: jax.Array, indices: jax.Array, scores: jax.Array,
              start: int | jax.Array = 0) -> jax.Array:
  """Runs ``layer_fn`` on the chosen tokens only; the others skip it (identity).

  Args:
    layer_fn: see ``LayerFn``; called on ``[B, k, D]`` with the tokens' original positions
      ``start + indices`` and ``valid`` all True (attention sees only the chosen tokens).
    x: ``[B, L, D]``. indices: int ``[B, k]``, increasing per row; scores: ``[B, k]``.

  Returns:
    ``[B, L, D]``: ``x + score * (layer(x_sel) - x_sel)`` at the chosen tokens, ``x`` elsewhere.
  """
  x_sel = jnp.take_along_axis(x, indices[..., None], axis=1)  # [B, k, D]
  delta = layer_fn(x_sel, start + indices, jnp.ones(indices.shape, bool)) - x_sel
  rows = jnp.arange(x.shape[0])[:, None]
  return x.at[rows, indices].add(scores[..., None].astype(x.dtype) * delta)


def apply_mod_causal(layer_fn: LayerFn, x: jax.Array, selected: jax.Array, scores: jax.Array,
                     start: int | jax.Array = 0) -> jax.Array:
  """Inference MoD: every token through ``layer_fn`` with ``valid = selected``, then masked.

  The static-shape twin of ``apply_mod`` for token-by-token routing (``selected`` from
  ``causal_route``): the same result as gathering the selected tokens, provided ``layer_fn``
  honours ``valid`` for its keys. Costs the dense layer.
  """
  positions = start + jnp.broadcast_to(jnp.arange(x.shape[1]), selected.shape)
  out = layer_fn(x, positions, selected)
  return jnp.where(selected[..., None], x + scores[..., None].astype(x.dtype) * (out - x), x)


# ---- the MoMa decoder layer ----


@struct.dataclass
class LayerInputs:
  """What every layer of a ``MoMaBlock`` stack shares in one call (``nn.scan`` broadcasts it).

  modality: int ``[B, T]`` modality ids. start: int32 scalar, the position of token 0.
  ffn_routing: the MoE FFN's ``Routing`` over the ``T`` tokens (``grouped_routing`` for expert
    choice, ``grouped_routing`` or ``select_routing`` for causal routing); None for a dense or a
    modality-blind FFN. expert_choice: static; True routes by expert choice / MoD top-k
    (training, non-causal), False by the auxiliary routers (causal; decoding).
  """
  modality: jax.Array
  start: jax.Array
  ffn_routing: Optional[Routing] = None
  expert_choice: bool = struct.field(pytree_node=False, default=True)


class MoMaBlock(DecoderBlock):
  """A decoder layer with shared attention and a dense or MoMa FFN, optionally under MoD.

  The attention sub-layer, its norms and the norm placement are ``DecoderBlock``'s with shared
  weights (``num_modalities`` must be None): ``H = X + Norm_attn(Attn(X))``,
  ``Y = H + Norm_ffn(FFN(H))`` where ``FFN`` is a ``SwiGLU`` (``ffn_kind='dense'``) or an
  ``ExpertChoiceFFN`` (``'moe'``, submodule ``ffn``). Parameter names are the dense block's
  (``query``, ``key``, ``value``, ``out``, ``attn_norm``, ``ffn``, ``ffn_norm``), plus
  ``mod_router`` (``MoDRouter``) when ``mod_fraction > 0``.

  Mixture-of-depths (``mod_fraction > 0``): with ``expert_choice`` the router picks each row's top
  ``floor(mod_fraction * T)`` tokens (per modality when the FFN is modality-aware:
  ``mod_select`` with ``modality_capacity``, so the experts still see static group sizes); the
  whole layer (attention among the chosen tokens at their original positions, FFN) runs on them
  and ``apply_mod`` mixes ``x + s * (layer(x) - x)``; the others pass unchanged. Causal routing
  runs the layer on every token with the unchosen ones masked as keys (``apply_mod_causal``);
  with a KV cache the cache's ``'valid'`` entry remembers which keys were chosen.

  Auxiliary-router terms: with ``expert_choice`` every router's BCE against the main router's
  choices (``aux_router_loss``; gradients reach only the ``aux_router`` parameters) is sown as
  ``intermediates/.../aux_router_loss`` and its agreement (``causal_route == target``) as
  ``aux_router_accuracy``: one scalar per expert group, one per MoD router.

  Attributes (beyond ``DecoderBlock``'s):
    ffn_kind: 'dense' or 'moe'. experts_per_group, capacity_factor, modality_blind: the
      ``ExpertChoiceFFN``'s. mod_fraction: 0 (a plain layer) or the MoD fraction in ``(0, 1]``.
    modality_capacity: the per-row modality counts (modality-aware MoD selection).
    dispatch_fn: the ``ExpertChoiceFFN``'s (expert-parallel dispatch; None: on one device).

  Call: ``x [B, T, D]``, ``inputs`` (``LayerInputs``), ``cache`` (as ``DecoderBlock``; causal
  routing only under MoD) -> ``(y [B, T, D], cache)``.
  """
  ffn_kind: str = 'dense'
  experts_per_group: tuple[int, ...] = ()
  capacity_factor: float = 1.0
  modality_blind: bool = False
  mod_fraction: float = 0.0
  modality_capacity: Optional[tuple[int, ...]] = None
  dispatch_fn: Optional[DispatchFn] = None

  @nn.compact
  def __call__(self, x: jax.Array, inputs: LayerInputs,  # pytype: disable=signature-mismatch
               cache: Optional[dict[str, jax.Array]] = None):
    if self.num_modalities is not None:
      raise ValueError(f'{self.name}: MoMaBlock shares attention and norms (num_modalities=None), '
                       f'got num_modalities={self.num_modalities}')
    start, expert_choice = inputs.start, inputs.expert_choice
    if not self.mod_fraction:
      y, cache = self.layer(x, inputs.ffn_routing, start, cache, None, None, expert_choice)
      return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), cache
    aware = self.ffn_kind == 'moe' and not self.modality_blind
    router = MoDRouter(self.mod_fraction, self.modality_capacity if aware else None,
                       name='mod_router')
    if expert_choice:
      if cache is not None:
        raise ValueError(f'{self.name}: expert-choice MoD cannot decode with a cache; decoding '
                         f'routes causally')
      if aware and self.modality_capacity is None:
        raise ValueError(f'{self.name}: expert-choice MoD before a modality-aware MoE FFN needs '
                         f'modality_capacity (per-modality selection)')
      index, scores, aux_logits = router(x, train=True, modality=inputs.modality)
      ffn_routing = None
      if aware:  # the chosen tokens' static per-modality counts
        chosen = jnp.take_along_axis(inputs.modality, index, axis=-1)  # [B, k]
        ffn_routing = grouped_routing(
            chosen, mod_modality_counts(self.modality_capacity, self.mod_fraction))
      # apply_mod's valid is all True (only the chosen tokens are there): no key mask needed.
      layer_fn = lambda h, pos, valid: self.layer(h, ffn_routing, start, None, pos, None,
                                                  True)[0]
      y = apply_mod(layer_fn, x, index, scores, start)
      self._sow_aux(aux_logits, selection_mask(index, x.shape[1]))
      return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), None
    selected, scores, _ = router(x, train=False, check_fraction=cache is None)
    out = {}

    def layer_fn(h, pos, valid):  # with a cache, pos is start + arange: the 1-D path
      y, out['cache'] = self.layer(h, inputs.ffn_routing, start, cache,
                                   None if cache is not None else pos, valid, False)
      return y

    y = apply_mod_causal(layer_fn, x, selected, scores, start)
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), out['cache']

  def layer(self, x, ffn_routing, start, cache, positions, valid, expert_choice: bool):
    """The layer on ``x [B, T, D]`` (every token of it): attention, then the FFN."""
    (h,), cache = self.attention(x, shared_routing(), start, cache, positions, valid)
    if self.ffn_kind == 'dense':
      f = SwiGLU(self.mlp_dim, None, self.dtype, name='ffn')(h)
    elif self.ffn_kind == 'moe':
      f, aux = ExpertChoiceFFN(self.experts_per_group, self.mlp_dim, self.capacity_factor,
                               self.modality_blind, self.dtype, self.dispatch_fn, name='ffn')(
                                   h, ffn_routing, train=expert_choice)
      if expert_choice:
        for logits, targets in zip(aux['aux_logits'], aux['selected']):
          self._sow_aux(logits, targets)
    else:
      raise ValueError(f"{self.name}: ffn_kind={self.ffn_kind!r} is not 'dense' or 'moe'")
    return h + RMSNorm(None, dtype=self.dtype, name='ffn_norm')(f), cache

  def _sow_aux(self, logits: jax.Array, targets: jax.Array) -> None:
    self.sow('intermediates', 'aux_router_loss', aux_router_loss(logits, targets))
    self.sow('intermediates', 'aux_router_accuracy',
             jnp.mean((causal_route(logits) == targets).astype(jnp.float32)))


def aux_router_terms(intermediates: Any) -> dict[str, jax.Array]:
  """The auxiliary-router objective from what ``MoMaBlock`` sowed in an expert-choice forward.

  ``intermediates``: the ``'intermediates'`` collection of ``apply(..., mutable=
  ['intermediates'])`` (any nesting; a scanned stack's terms carry a leading layer axis).

  Returns ``{'loss': the sum over every auxiliary router of its mean BCE, 'accuracy': the mean
  agreement over routers, 'routers': how many}`` (loss 0 and accuracy 1 when there are none).
  """
  found = {'aux_router_loss': [], 'aux_router_accuracy': []}
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    names = [getattr(k, 'key', None) for k in path]
    for key, values in found.items():
      if key in names:
        values.append(jnp.ravel(leaf))
  losses = jnp.concatenate(found['aux_router_loss'] or [jnp.zeros((0,))])
  accuracy = jnp.concatenate(found['aux_router_accuracy'] or [jnp.ones((1,))])
  return {'loss': jnp.sum(losses), 'accuracy': jnp.mean(accuracy), 'routers': losses.shape[0]}


# ---- cost ----


def moe_ffn_flops(tokens_per_group: Sequence[int], num_experts_per_group: Sequence[int],
                  d_model: int, mlp_dim: int, capacity_factor: float = 1.0, *,
                  causal: bool = False, aux_router: bool = False) -> int:
  """Forward matmul FLOPs (``2 m n k`` each) of ``ExpertChoiceFFN`` on one batch.

  ``tokens_per_group``: ``N_g``, the group's tokens in the batch (``B * capacity[g]``; ``B * L``
  for every group under select routing). Counts the router (``2 N D E``), the experts' three
  SwiGLU matmuls on ``E * C`` tokens (training) or ``E * N`` (causal), and the auxiliary router
  (``2 N D h + 2 N h E``, ``h = D // 2``) when ``causal`` or ``aux_router``.
  """
  total = 0
  for g, (n, e) in enumerate(zip(tokens_per_group, num_experts_per_group)):
    routed = n * e if causal else e * expert_capacity(n, e, capacity_factor, f'group{g}')
    total += 2 * n * d_model * e + 3 * 2 * routed * d_model * mlp_dim
    if causal or aux_router:
      h = d_model // 2
      total += 2 * n * d_model * h + 2 * n * h * e
  return total
