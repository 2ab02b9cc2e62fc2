"""A decoder-only LM over interleaved multi-modal token sequences: dense or Mixture-of-Transformers.

``MixedModalLM(untie='none')`` is a dense decoder (rotary positions, SwiGLU, one global causal
attention, RMSNorms placed as in Chameleon / MoT: see ``jaxrec.layers.decoder.DecoderBlock``).
``untie='mot'`` is a Mixture-of-Transformers (Liang et al. 2024, arXiv:2411.04996): every
non-embedding parameter (Q/K/V/O projections, FFN, norms, the final norm) has one copy per
modality on a leading ``'modality'`` axis, while self-attention stays ONE causal attention over
the whole interleaved sequence (each token's q/k/v come from its own modality's projections).

Static shapes, dense FLOPs: the data pipeline gives every sequence exactly
``modality_capacity[m]`` tokens of modality ``m``. Each layer gathers modality ``m``'s tokens
(stable argsort of the ids) into a ``[B, C_m, D]`` group, applies that modality's weights with
ordinary matmuls and scatters the results back to their positions for attention, so the compiled
matmul FLOPs equal the dense model's. Rows with other counts would be silently wrong: check them
on the host with ``check_modality_counts``. ``modality_capacity=None`` falls back to running
every modality's weights on every token and selecting per token (any layout, ``M`` times the
projection / FFN compute). Decoding always uses that fallback (per-step counts are not static).

Embedding and head: one table ``[vocab, embed]`` (``('vocab', 'embed')``) embeds the tokens and,
transposed, produces the logits (tied; Press & Wolf 2017). Tying keeps one ``'vocab'`` table,
which the trainer's embedding mask (``jaxrec.sharding.rules.embedding_mask``) treats as the
model's embedding table; embeddings are parameters MoT leaves shared.

Generation: ``init_cache`` / ``decode`` (prefill = ``decode`` of the prompt at position 0, then
one token per call) and ``generate`` (prefill, then a ``jax.lax.scan`` of sampled steps).
``mixed_modal_lm_flops``: analytic forward matmul FLOPs.

MoMa (Lin et al. 2024, arXiv:2407.21770; layers in ``jaxrec.layers.moe``): ``ffn='moe'`` makes
every layer's FFN an ``ExpertChoiceFFN`` (``experts_per_group`` experts per modality, expert
choice over the batch's tokens of each modality; ``modality_blind=True`` with one group is the
mixed-modal MoE) while attention and norms stay shared (``untie='none'``). ``mod_fraction > 0``
adds mixture-of-depths on the last of every ``mod_every`` layers (``1, 3, 5, ...`` for the
default 2, as the paper alternates MoD and full layers; ``is_mod_layer``): each row's top
fraction of tokens (per modality with a modality-aware MoE, so the expert groups keep static
sizes) runs through the layer, the rest skip it. Layers are ``MoMaBlock``s; scanned, a step is
one block, or with MoD a ``_MoMaGroup`` of ``mod_every`` blocks (the last one MoD). Dense and MoT
models keep ``DecoderBlock`` and their parameters unchanged.

Routing modes (``routing_mode``, a field so a run can be evaluated either way): 'expert_choice'
(training; non-causal: a token's route depends on later tokens), 'causal' (each token routed on
its own by the auxiliary routers at 0.5: every expert of the group runs on every token and the
unchosen contributions are masked, MoD layers mask the unchosen tokens as keys) or
'causal_inference' (expert choice when called with ``train=True``, causal with ``train=False``:
how MoMa trains and then serves, and what the trainer's auxiliary-router recipe uses so that its
validation scores causal inference). ``decode`` / ``generate`` always route causally. The auxiliary routers are trained post hoc from what an
expert-choice forward sows into the ``'intermediates'`` collection (``__call__`` still returns
logits only)::

  logits, state = model.apply(variables, tokens, modality, train=True, mutable=['intermediates'])
  loss = aux_router_terms(state['intermediates'])['loss']  # grads reach only 'aux_router' params

``upcycle_params`` builds a MoMa model's parameters from a trained dense model's.

Example::

  model = MixedModalLM(vocab_size=512, num_layers=2, embed_dim=64, num_heads=4, head_dim=16,
                       mlp_dim=256, untie='mot', modality_capacity=(96, 32), max_len=128)
  check_modality_counts(modality, model.modality_capacity)      # host side, per batch
  variables = model.init(key, tokens, modality, train=False)     # tokens, modality: int [B, 128]
  logits = model.apply(variables, tokens, modality, train=True)  # float32 [B, 128, 512]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.decoder import (DecoderBlock, RMSNorm, grouped_routing, select_routing,
                                   shared_routing)
from jaxrec.layers.moe import (LayerInputs, MoMaBlock, aux_router_terms, mod_capacity,
                               mod_modality_counts)
from jaxrec.layers.transformer import check_remat_policy, wrap_block

PyTree = Any
Cache = dict[str, jax.Array]
UNTIE = ('none', 'mot')
FFN = ('dense', 'moe')
ROUTING_MODES = ('expert_choice', 'causal', 'causal_inference')
__all__ = ['MixedModalLM', 'DecoderLM', 'aux_router_terms', 'check_modality_counts', 'generate',
           'mixed_modal_lm_flops', 'mixed_modal_lm_flops_breakdown', 'upcycle_params']


def check_modality_counts(modality: np.ndarray, capacity: Sequence[int]) -> None:
  """Raises ValueError naming the first row of ``modality`` (int ``[B, L]``) whose per-modality
  token counts are not ``capacity`` (or that holds an id outside ``[0, len(capacity))``)."""
  modality = np.asarray(modality)
  capacity = tuple(int(c) for c in capacity)
  if modality.ndim != 2 or modality.shape[1] != sum(capacity):
    raise ValueError(f'check_modality_counts: modality shape {modality.shape} is not [batch, '
                     f'{sum(capacity)}] (the sum of modality_capacity {capacity})')
  for row, ids in enumerate(modality):
    bad = ids[(ids < 0) | (ids >= len(capacity))]
    if bad.size:
      raise ValueError(f'check_modality_counts: row {row} has modality id {int(bad[0])}, not in '
                       f'[0, {len(capacity)})')
    counts = tuple(int(c) for c in np.bincount(ids, minlength=len(capacity)))
    if counts != capacity:
      raise ValueError(f'check_modality_counts: row {row} has {counts} tokens per modality, the '
                       f'model expects modality_capacity {capacity}')


class _ScanBlock(DecoderBlock):
  """``DecoderBlock`` whose ``(y, cache)`` output is scan's ``(carry, per-layer output)``."""


class _MoMaGroup(nn.Module):
  """``size`` consecutive ``MoMaBlock``s (``layer0 .. layer{size-1}``); the last one is MoD.

  The unit a MoD model scans (``num_layers / size`` times), so that every scan step runs the same
  computation. Call: ``(x [B, T, D], LayerInputs, cache)`` with each cache leaf ``[size, ...]``.
  """
  block_kwargs: tuple[tuple[str, Any], ...]
  size: int
  mod_fraction: float

  @nn.compact
  def __call__(self, x: jax.Array, inputs: LayerInputs, cache: Optional[Cache] = None):
    caches = []
    for j in range(self.size):
      block = MoMaBlock(**dict(self.block_kwargs), name=f'layer{j}',
                        mod_fraction=self.mod_fraction if j == self.size - 1 else 0.0)
      x, c = block(x, inputs, None if cache is None else jax.tree.map(lambda a, j=j: a[j], cache))
      caches.append(c)
    return x, (None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *caches))


class MixedModalLM(nn.Module):
  """Decoder-only LM, dense (``untie='none'``) or Mixture-of-Transformers (``untie='mot'``).

  Attributes:
    vocab_size: ``V``. num_layers: decoder blocks. embed_dim: ``D``. num_heads: ``H``.
    head_dim: ``K`` (even). mlp_dim: SwiGLU hidden width.
    num_modalities: ``M``, modality ids are ``0 .. M-1``.
    untie: 'none' (dense, shared weights; modality ids are ignored) or 'mot' (one copy of every
      non-embedding parameter per modality).
    modality_capacity: MoT only: tokens of each modality in every sequence (``M`` ints summing to
      the sequence length); None: the every-modality-on-every-token fallback.
    max_len: the longest sequence (and KV cache) accepted.
    rope_base: rotary frequency base.
    dtype: computation dtype (None: float32); parameters are float32, logits float32.
    scan_layers: scan one block over parameters stacked on a leading ``'layers'`` axis.
    remat_policy: a key of ``jaxrec.layers.transformer.REMAT_POLICIES``.
    layer_param_fn: optional map of each block's parameters before use (inside the scan and the
      remat region), e.g. an FSDP all-gather (see ``jaxrec.layers.transformer.TransformerStack``).
    ffn: 'dense' (SwiGLU) or 'moe' (MoMa's ``ExpertChoiceFFN`` in every layer; ``untie='none'``
      only). experts_per_group: 'moe': experts per modality group (``num_modalities`` entries,
      e.g. ``(2, 2)``; one entry with ``modality_blind``). capacity_factor: expert capacity
      ``floor(N_g / E_g * capacity_factor)``. modality_blind: one group over every token.
      A modality-aware MoE trains by expert choice over static groups: ``modality_capacity``.
    mod_fraction: 0 (off) or the mixture-of-depths fraction in ``(0, 1]``; mod_every: every
      ``mod_every``-th layer is MoD (``is_mod_layer``; ``num_layers`` must be a multiple).
    routing_mode: 'expert_choice', 'causal' (auxiliary routers) or 'causal_inference' (expert
      choice in training, causal at ``train=False``); see the module docstring.
    dispatch_fn: the MoE FFN's expert dispatch in training (``moe.local_dispatch`` when None;
      set by the sharding code for expert parallelism, ``jaxrec.sharding.expert_parallel``).

  Call:
    inputs: int ``[B, L]`` tokens; modality: int ``[B, L]`` modality ids; train: no dropout;
    picks MoMa's routing under ``routing_mode='causal_inference'`` (else unused). With
    ``mutable=['intermediates']`` an expert-choice MoMa forward also sows each auxiliary
    router's ``aux_router_loss`` / ``aux_router_accuracy`` (``aux_router_terms`` sums them).

  Returns:
    logits ``float32 [B, L, V]``; position ``t`` predicts token ``t + 1``.
  """
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_modalities: int = 2
  untie: str = 'none'
  modality_capacity: Optional[tuple[int, ...]] = None
  max_len: int = 2048
  rope_base: float = 10000.0
  dtype: Optional[Any] = None
  scan_layers: bool = True
  remat_policy: str = 'none'
  layer_param_fn: Optional[Callable[[PyTree], PyTree]] = None
  ffn: str = 'dense'
  experts_per_group: tuple[int, ...] = ()
  capacity_factor: float = 1.0
  modality_blind: bool = False
  mod_fraction: float = 0.0
  mod_every: int = 2
  routing_mode: str = 'expert_choice'
  dispatch_fn: Optional[Callable[..., jax.Array]] = None

  def __post_init__(self):
    name = type(self).__name__
    for field in ('vocab_size', 'num_layers', 'embed_dim', 'num_heads', 'head_dim', 'mlp_dim',
                  'num_modalities', 'max_len'):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name}: {field} must be a positive int, got {value!r}')
    if self.head_dim % 2:
      raise ValueError(f'{name}: head_dim must be even (rotary pairs), got {self.head_dim}')
    if self.untie not in UNTIE:
      raise ValueError(f'{name}: untie={self.untie!r} is not one of {UNTIE}')
    if self.modality_capacity is not None:
      cap = tuple(self.modality_capacity)
      if len(cap) != self.num_modalities:
        raise ValueError(f'{name}: modality_capacity {cap} has {len(cap)} entries, '
                         f'num_modalities is {self.num_modalities}')
      if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in cap):
        raise ValueError(f'{name}: modality_capacity {cap} must be non-negative ints')
      object.__setattr__(self, 'modality_capacity', tuple(int(c) for c in cap))
    check_remat_policy(self.remat_policy, f'{name} remat_policy')
    self._check_moma(name)
    super().__post_init__()

  def _check_moma(self, name: str) -> None:
    """Validates (and normalises) the MoMa fields: ffn, experts, MoD, routing mode."""
    if self.ffn not in FFN:
      raise ValueError(f'{name}: ffn={self.ffn!r} is not one of {FFN}')
    if self.routing_mode not in ROUTING_MODES:
      raise ValueError(f'{name}: routing_mode={self.routing_mode!r} is not one of '
                       f'{ROUTING_MODES}')
    experts = tuple(self.experts_per_group)
    if self.ffn == 'moe':
      if self.untie != 'none':
        raise ValueError(f"{name}: ffn='moe' with untie={self.untie!r} is not supported: MoMa "
                         f"shares attention and norms (untie='none') and makes only the FFNs "
                         f"sparse")
      if any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1
             for e in experts) or not experts:
        raise ValueError(f"{name}: ffn='moe' needs experts_per_group of positive ints, got "
                         f"{experts}")
      groups = 1 if self.modality_blind else self.num_modalities
      if len(experts) != groups:
        raise ValueError(
            f'{name}: experts_per_group {experts} has {len(experts)} entries, expected '
            + ('1 (modality_blind: one group over every token)' if self.modality_blind else
               f'one per modality (num_modalities is {self.num_modalities})'))
      if not self.capacity_factor > 0:
        raise ValueError(f'{name}: capacity_factor must be > 0, got {self.capacity_factor}')
    elif experts or self.modality_blind:
      raise ValueError(f"{name}: experts_per_group={experts} / modality_blind="
                       f"{self.modality_blind} need ffn='moe', got ffn={self.ffn!r}")
    object.__setattr__(self, 'experts_per_group', tuple(int(e) for e in experts))
    fraction = self.mod_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not (
        fraction == 0 or 0 < fraction <= 1):
      raise ValueError(f'{name}: mod_fraction must be 0 (off) or in (0, 1], got {fraction!r}')
    if fraction:
      if self.untie != 'none':
        raise ValueError(f"{name}: mixture-of-depths (mod_fraction={fraction}) with untie="
                         f"{self.untie!r} is not supported; use untie='none'")
      every = self.mod_every
      if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f'{name}: mod_every must be a positive int, got {every!r}')
      if self.num_layers % every:
        raise ValueError(f'{name}: num_layers {self.num_layers} is not a multiple of mod_every '
                         f'{every} (every {every}-th layer is a MoD layer)')

  @property
  def _moma(self) -> bool:
    """Whether the layers are ``MoMaBlock``s (a MoE FFN or MoD), not ``DecoderBlock``s."""
    return self.ffn == 'moe' or self.mod_fraction > 0

  def is_mod_layer(self, i: int) -> bool:
    """Whether layer ``i`` (0-based) is a mixture-of-depths layer: the last of every
    ``mod_every`` consecutive layers (``1, 3, 5, ...`` for ``mod_every=2``)."""
    return bool(self.mod_fraction) and i % self.mod_every == self.mod_every - 1

  @property
  def _copies(self) -> Optional[int]:
    return self.num_modalities if self.untie == 'mot' else None

  def setup(self):
    d = self.embed_dim
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(nn.initializers.normal(d ** -0.5),
                                                  ('vocab', 'embed')),
        (self.vocab_size, d), jnp.float32)
    if self._moma:
      self._setup_moma()
    else:
      block = _ScanBlock if self.scan_layers else DecoderBlock
      block = self._wrap(block)
      kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                    num_modalities=self._copies, rope_base=self.rope_base, dtype=self.dtype)
      if self.scan_layers:
        self.layers = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True},
                              in_axes=(nn.broadcast, nn.broadcast, 0), length=self.num_layers,
                              metadata_params={nn.PARTITION_NAME: 'layers'})(**kwargs)
      else:
        self.layers = [block(**kwargs) for _ in range(self.num_layers)]
    self.final_norm = RMSNorm(self._copies, dtype=self.dtype)

  def _wrap(self, block):
    """The layer-parameter hook and remat around a layer class (``transformer.wrap_block``)."""
    return wrap_block(block, self.layer_param_fn, self.remat_policy, self.scan_layers,
                      self.is_initializing())

  def _setup_moma(self):
    """``MoMaBlock`` layers. Scanned: one ``MoMaBlock`` per step without MoD; with MoD a
    ``_MoMaGroup`` of ``mod_every`` layers per step (``num_layers / mod_every`` steps), its last
    layer MoD, so every step runs the same computation. Unrolled: ``layers_i`` (MoD when
    ``is_mod_layer(i)``). Sown auxiliary terms are stacked along the scan like the parameters."""
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                  rope_base=self.rope_base, dtype=self.dtype, ffn_kind=self.ffn,
                  experts_per_group=self.experts_per_group,
                  capacity_factor=self.capacity_factor, modality_blind=self.modality_blind,
                  modality_capacity=self.modality_capacity, dispatch_fn=self.dispatch_fn)
    if not self.scan_layers:
      block = self._wrap(MoMaBlock)
      self.layers = [block(**kwargs, mod_fraction=self.mod_fraction if self.is_mod_layer(i)
                           else 0.0) for i in range(self.num_layers)]
      return
    size = self.mod_every if self.mod_fraction else 1
    if size == 1:
      unit_cls, unit_kwargs = self._wrap(MoMaBlock), dict(kwargs, mod_fraction=self.mod_fraction)
    else:
      unit_cls = self._wrap(_MoMaGroup)
      unit_kwargs = dict(block_kwargs=tuple(sorted(kwargs.items())), size=size,
                         mod_fraction=self.mod_fraction)
    self.layers = nn.scan(unit_cls, variable_axes={'params': 0, 'intermediates': 0},
                          split_rngs={'params': True}, in_axes=(nn.broadcast, 0),
                          length=self.num_layers // size,
                          metadata_params={nn.PARTITION_NAME: 'layers'})(**unit_kwargs)

  def _check_tokens(self, inputs: jax.Array, modality: jax.Array, where: str) -> None:
    if inputs.ndim != 2 or modality.shape != inputs.shape:
      raise ValueError(f'{type(self).__name__}.{where}: inputs {inputs.shape} and modality '
                       f'{modality.shape} must both be [batch, length]')

  def _forward(self, inputs, routing, start, cache: Optional[Cache],
               layer_inputs: Optional[LayerInputs] = None):
    """Embedding, the layers (``MoMaBlock`` layers take ``layer_inputs``), final norm, head."""
    x = jnp.take(self.embedding, inputs, axis=0).astype(self.dtype or jnp.float32)  # [B, T, D]
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    args = (routing, start) if layer_inputs is None else (layer_inputs,)
    if self.scan_layers:
      size = self.mod_every if self.mod_fraction else 1  # layers per scan step
      if cache is not None and size > 1:
        cache = jax.tree.map(lambda a: a.reshape((-1, size) + a.shape[1:]), cache)
      x, cache = self.layers(x, *args, cache)
      if cache is not None and size > 1:
        cache = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), cache)
    else:
      new = []
      for i, layer in enumerate(self.layers):
        x, c = layer(x, *args, None if cache is None else
                     jax.tree.map(lambda a, i=i: a[i], cache))
        new.append(c)
      cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new)
    x = routing.merge([self.final_norm(xg, m) for xg, m in
                       zip(routing.split(x), routing.modalities)])
    logits = jnp.einsum('btd,vd->btv', x, self.embedding.astype(x.dtype))
    return logits.astype(jnp.float32), cache

  def _ffn_routing(self, modality: jax.Array, expert_choice: bool, decoding: bool):
    """The MoE FFN's routing over a call's tokens (None: dense or modality-blind FFN)."""
    if self.ffn != 'moe' or self.modality_blind:
      return None
    if decoding:
      return select_routing(modality, self.num_modalities)
    if self.modality_capacity is None:
      if expert_choice:
        raise ValueError(f"{type(self).__name__}: ffn='moe' with routing_mode='expert_choice' "
                         f"needs modality_capacity (expert choice over static per-modality "
                         f"groups)")
      return select_routing(modality, self.num_modalities)
    return grouped_routing(modality, self.modality_capacity)

  def __call__(self, inputs: jax.Array, modality: jax.Array, *, train: bool) -> jax.Array:
    self._check_tokens(inputs, modality, '__call__')
    length = inputs.shape[1]
    if length > self.max_len:
      raise ValueError(f'{type(self).__name__}: sequence length {length} exceeds max_len '
                       f'{self.max_len}')
    if self.modality_capacity is not None and (self.untie == 'mot' or self._moma) and sum(
        self.modality_capacity) != length:
      raise ValueError(f'{type(self).__name__}: modality_capacity {self.modality_capacity} '
                       f'sums to {sum(self.modality_capacity)}, not the sequence length '
                       f'{length}')
    if self._moma:
      expert_choice = self.routing_mode == 'expert_choice' or (
          self.routing_mode == 'causal_inference' and train)
      inputs_ = LayerInputs(modality=modality, start=jnp.int32(0),
                            ffn_routing=self._ffn_routing(modality, expert_choice, False),
                            expert_choice=expert_choice)
      return self._forward(inputs, shared_routing(), jnp.int32(0), None, inputs_)[0]
    if self.untie == 'none':
      routing = shared_routing()
    elif self.modality_capacity is None:
      routing = select_routing(modality, self.num_modalities)
    else:
      routing = grouped_routing(modality, self.modality_capacity)
    return self._forward(inputs, routing, jnp.int32(0), None)[0]

  def decode(self, tokens: jax.Array, modality: jax.Array, position, cache: Cache
             ) -> tuple[jax.Array, Cache]:
    """Runs ``T`` new tokens at positions ``[position, position + T)`` against the KV cache.

    Prefill is ``decode(prompt, prompt_modality, 0, init_cache(...))``; a decode step passes one
    token (``T = 1``). MoT selects each token's weights per modality (every modality's weights
    run on every new token; no capacity needed). MoMa / MoD always route causally here (the
    auxiliary routers, token by token; whatever ``routing_mode`` says), so a decode equals the
    full forward with ``routing_mode='causal'``.

    Args:
      tokens, modality: int ``[B, T]``.
      position: int scalar (may be traced), the position of ``tokens[:, 0]``.
      cache: from ``init_cache`` or a previous ``decode``.

    Returns:
      ``(logits float32 [B, T, V], cache)``.
    """
    self._check_tokens(tokens, modality, 'decode')
    size = cache['key'].shape[2]
    if tokens.shape[1] > size or (isinstance(position, (int, np.integer))
                                  and position + tokens.shape[1] > size):
      raise ValueError(f'{type(self).__name__}.decode: {tokens.shape[1]} tokens at position '
                       f'{position} do not fit the cache of length {size}')
    start = jnp.asarray(position, jnp.int32)
    if self._moma:
      inputs_ = LayerInputs(modality=modality, start=start,
                            ffn_routing=self._ffn_routing(modality, False, True),
                            expert_choice=False)
      return self._forward(tokens, shared_routing(), start, cache, inputs_)
    routing = (shared_routing() if self.untie == 'none'
               else select_routing(modality, self.num_modalities))
    return self._forward(tokens, routing, start, cache)

  def init_cache(self, batch: int, max_len: Optional[int] = None) -> Cache:
    """An empty KV cache: ``{'key', 'value'}`` each ``[num_layers, batch, max_len, H, K]``
    (``max_len`` defaults to the model's), in the computation dtype; with mixture-of-depths also
    ``'valid'`` bool ``[num_layers, batch, max_len]`` (which cached keys a MoD layer chose)."""
    size = self.max_len if max_len is None else max_len
    if size > self.max_len:
      raise ValueError(f'{type(self).__name__}.init_cache: cache length {size} exceeds max_len '
                       f'{self.max_len}')
    shape = (self.num_layers, batch, size, self.num_heads, self.head_dim)
    zeros = jnp.zeros(shape, self.dtype or jnp.float32)
    if self.mod_fraction:
      return {'key': zeros, 'value': zeros, 'valid': jnp.zeros(shape[:3], bool)}
    return {'key': zeros, 'value': zeros}


class DecoderLM(nn.Module):
  """``MixedModalLM`` sized by a dataset's ``SequenceSchema``: what configs name as
  ``model='decoder_lm'`` and the trainer applies to a batch dict.

  The vocabulary, the context (``schema.seq_len``) and, for MoT, the static per-modality token
  counts (``schema.modality_counts``: the grouped, dense-FLOP routing) come from the schema.

  Attributes:
    schema: a ``jaxrec.data.schema.SequenceSchema``.
    num_layers, embed_dim, num_heads, head_dim, mlp_dim, untie, rope_base, dtype, scan_layers,
      remat_policy, layer_param_fn, ffn, experts_per_group, capacity_factor, modality_blind,
      mod_fraction, mod_every, routing_mode, dispatch_fn: as ``MixedModalLM``. A modality-aware MoE FFN
      (``ffn='moe'``, not ``modality_blind``) also takes the schema's modality counts.

  Call:
    features: ``{'inputs': int [B, L], 'modality': int [B, L]}``; train: unused.

  Returns:
    logits ``float32 [B, L, schema.vocab_size]``.
  """
  schema: Any
  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 172
  untie: str = 'none'
  rope_base: float = 10000.0
  dtype: Optional[Any] = None
  scan_layers: bool = True
  remat_policy: str = 'none'
  layer_param_fn: Optional[Callable[[PyTree], PyTree]] = None
  ffn: str = 'dense'
  experts_per_group: tuple[int, ...] = ()
  capacity_factor: float = 1.0
  modality_blind: bool = False
  mod_fraction: float = 0.0
  mod_every: int = 2
  routing_mode: str = 'expert_choice'
  dispatch_fn: Optional[Callable[..., jax.Array]] = None

  def lm(self, **kwargs) -> MixedModalLM:
    """The underlying ``MixedModalLM`` (unbound unless ``kwargs`` give a parent; its parameters
    are this module's ``lm``)."""
    s = self.schema
    kwargs.setdefault('parent', None)
    grouped = self.untie == 'mot' or (self.ffn == 'moe' and not self.modality_blind)
    # Every field but the schema is MixedModalLM's field of the same name; the schema gives the
    # vocabulary, the context and (for grouped routing) the per-modality counts.
    own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.init and f.name not in ('schema', 'parent', 'name')}
    own['experts_per_group'] = tuple(own['experts_per_group'])
    return MixedModalLM(
        vocab_size=s.vocab_size, num_modalities=s.num_modalities, max_len=s.seq_len,
        modality_capacity=tuple(s.modality_counts) if grouped else None, **own, **kwargs)

  @nn.compact
  def __call__(self, features: dict, train: bool) -> jax.Array:
    lm = self.lm(parent=self, name='lm')
    return lm(features['inputs'], features['modality'], train=train)


def generate(model: MixedModalLM, params: PyTree, prompt_tokens: jax.Array,
             prompt_modality: jax.Array, num_steps: int, rng: jax.Array,
             temperature: float = 1.0,
             logits_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
             modality_fn: Optional[Callable[[jax.Array], jax.Array]] = None
             ) -> tuple[jax.Array, jax.Array]:
  """Samples ``num_steps`` tokens after a prompt: one cached prefill, then a ``lax.scan``.

  Args:
    model: the LM; params: its parameters (``variables['params']``).
    prompt_tokens, prompt_modality: int ``[B, P]`` (``P + num_steps <= model.max_len``).
    num_steps: tokens to sample (static).
    rng: a PRNG key.
    temperature: sampling temperature; ``<= 0`` samples greedily (argmax).
    logits_fn: optional ``(step, logits [B, V]) -> logits [B, V]`` applied before sampling step
      ``step`` (int32 scalar, 0-based), e.g. ``-inf`` outside the image codes between image
      markers.
    modality_fn: ``token int [B] -> modality id int [B]`` of each sampled token (default: all 0).

  Returns:
    ``(tokens int32 [B, num_steps], modality int32 [B, num_steps])``.
  """
  batch, prompt_len = prompt_tokens.shape
  if num_steps < 1:
    raise ValueError(f'generate: num_steps must be >= 1, got {num_steps}')
  if prompt_len + num_steps > model.max_len:
    raise ValueError(f'generate: prompt length {prompt_len} + {num_steps} steps exceeds max_len '
                     f'{model.max_len}')
  variables = {'params': params}
  to_modality = modality_fn or (lambda t: jnp.zeros_like(t))
  cache = model.init_cache(batch, prompt_len + num_steps)
  logits, cache = model.apply(variables, prompt_tokens, prompt_modality, 0, cache,
                              method=MixedModalLM.decode)

  def step(carry, i):
    last, cache, key = carry  # last: [B, V], the logits for the token to sample
    key, sub = jax.random.split(key)
    if logits_fn is not None:
      last = logits_fn(i, last)
    if temperature <= 0:
      token = jnp.argmax(last, axis=-1)
    else:
      token = jax.random.categorical(sub, last / temperature, axis=-1)
    token = token.astype(jnp.int32)
    mod = to_modality(token).astype(jnp.int32)
    out, cache = model.apply(variables, token[:, None], mod[:, None], prompt_len + i, cache,
                             method=MixedModalLM.decode)
    return (out[:, 0], cache, key), (token, mod)

  _, (tokens, mods) = jax.lax.scan(step, (logits[:, -1], cache, rng),
                                   jnp.arange(num_steps, dtype=jnp.int32))
  return tokens.T, mods.T


def mixed_modal_lm_flops_breakdown(model: MixedModalLM, length: int) -> dict[str, int]:
  """Forward matmul FLOPs of one sequence of ``length`` tokens, by component.

  Counting: ``2 m n k`` per ``[m, k] x [k, n]`` matmul (a multiply-add is 2 FLOPs); per layer the
  q/k/v and output projections, the attention scores ``Q K^T`` and the weighted values ``A V``
  (the full ``L x L`` product: a causal mask saves nothing in a dense matmul), the three SwiGLU
  matmuls; then the tied output head. Norms, rotary, softmax, SiLU and the routing gathers are
  not matmuls and are left out. The count is the same for ``untie='none'`` and ``'mot'`` (each
  token goes through one modality's weights); MoT with ``modality_capacity=None`` compiles to
  ``M`` times the projection and FFN matmuls (every modality on every token) and is NOT what this
  counts.

  MoMa models, as trained (``routing_mode='expert_choice'``): a MoE FFN's experts process
  ``capacity_factor`` times the group's tokens (``E_g C_g`` token passes with
  ``C_g = N_g / E_g * capacity_factor``, taken here per sequence without the batch's flooring,
  capped at ``E_g N_g``); a MoD layer runs attention and FFN on its ``k`` chosen tokens only
  (``k x k`` attention). ``'router'``: the expert routers ``2 N_g D E_g`` and the MoD routers
  ``2 L D``. The auxiliary routers (dead code in training; the causal mode runs every expert on
  every token of its group) are not counted.
  """
  n, d, h, k, f = length, model.embed_dim, model.num_heads, model.head_dim, model.mlp_dim
  moe = model.ffn == 'moe'
  aware = moe and not model.modality_blind
  if aware and model.modality_capacity is None:
    raise ValueError("mixed_modal_lm_flops: ffn='moe' counts need modality_capacity")
  out = dict.fromkeys(('qkv', 'attention_scores', 'attention_values', 'attention_out', 'ffn'),
                      0.0)
  if model.ffn == 'moe' or model.mod_fraction:
    out['router'] = 0.0
  for i in range(model.num_layers):
    counts = model.modality_capacity if aware else None  # per-modality tokens through the layer
    t = n
    if model.is_mod_layer(i):
      out['router'] += 2 * n * d
      if aware:
        counts = mod_modality_counts(model.modality_capacity, model.mod_fraction)
        t = sum(counts)
      else:
        t = mod_capacity(n, model.mod_fraction)
    out['qkv'] += 3 * 2 * t * d * h * k
    out['attention_scores'] += 2 * t * t * h * k
    out['attention_values'] += 2 * t * t * h * k
    out['attention_out'] += 2 * t * h * k * d
    if not moe:
      out['ffn'] += 3 * 2 * t * d * f
      continue
    for t_g, e in zip(counts if aware else (t,), model.experts_per_group):
      out['ffn'] += 3 * 2 * min(t_g * model.capacity_factor, e * t_g) * d * f
      out['router'] += 2 * t_g * d * e
  out['head'] = 2 * n * d * model.vocab_size
  return {key: int(round(value)) for key, value in out.items()}


def mixed_modal_lm_flops(model: MixedModalLM, length: int) -> int:
  """Forward matmul FLOPs of one sequence (see ``mixed_modal_lm_flops_breakdown``)."""
  return sum(mixed_modal_lm_flops_breakdown(model, length).values())


# ---- upcycling a dense model into a MoMa model ----


def _layer_params(model: MixedModalLM, params: PyTree) -> list[PyTree]:
  """Layer ``i``'s parameters, for each ``i``, from a model's (unboxed) parameters."""
  if not model.scan_layers:
    return [params[f'layers_{i}'] for i in range(model.num_layers)]
  size = model.mod_every if model.mod_fraction else 1
  stacked = params['layers']
  if size == 1:
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(model.num_layers)]
  return [jax.tree.map(lambda a, i=i: a[i // size], stacked[f'layer{i % size}'])
          for i in range(model.num_layers)]


def _with_layer_params(model: MixedModalLM, params: PyTree, layers: list[PyTree]) -> PyTree:
  """``params`` with the layers replaced by ``layers`` (the inverse of ``_layer_params``)."""
  params = dict(params)
  for key in [key for key in params if key == 'layers' or key.startswith('layers_')]:
    del params[key]
  if not model.scan_layers:
    params.update({f'layers_{i}': layer for i, layer in enumerate(layers)})
    return params
  size = model.mod_every if model.mod_fraction else 1
  stack = lambda group: jax.tree.map(lambda *a: jnp.stack(a), *group)
  if size == 1:
    params['layers'] = stack(layers)
  else:
    params['layers'] = {f'layer{j}': stack(layers[j::size]) for j in range(size)}
  return params


def upcycle_params(dense: MixedModalLM, dense_params: PyTree, moma: MixedModalLM,
                   moma_params: PyTree) -> PyTree:
  """A MoMa model's parameters built from a trained dense model's (sparse upcycling).

  The embedding, attention, norms and final norm are copied; every expert of every group gets
  the dense layer's SwiGLU; the expert routers and the MoD routers are zeroed (every score
  ``sigmoid(0) = 1/2``); the auxiliary routers keep ``moma_params``' values (they are trained
  after the model). With zero routers the upcycled model is NOT the dense function in general
  (each expert's output is weighted 1/2, ties go to the earliest tokens); it is exactly the
  dense model when every group has 2 experts with ``capacity_factor=2`` and there is no MoD
  (each token through both experts, ``1/2 + 1/2``).

  Args:
    dense: a dense ``MixedModalLM`` (``untie='none'``, ``ffn='dense'``, no MoD); dense_params:
      its unboxed parameters (``nn.unbox(variables['params'])``).
    moma: the ``ffn='moe'`` model, same sizes; moma_params: its unboxed (e.g. freshly
      initialised) parameters, which give the auxiliary routers and the structure.

  Returns:
    ``moma``'s parameters.
  """
  if dense.ffn != 'dense' or dense.untie != 'none' or dense.mod_fraction:
    raise ValueError("upcycle_params: the source must be dense (untie='none', ffn='dense', no "
                     "MoD)")
  if moma.ffn != 'moe':
    raise ValueError(f"upcycle_params: the target needs ffn='moe', got {moma.ffn!r}")
  for field in ('vocab_size', 'num_layers', 'embed_dim', 'num_heads', 'head_dim', 'mlp_dim'):
    if getattr(dense, field) != getattr(moma, field):
      raise ValueError(f'upcycle_params: {field} differs: dense {getattr(dense, field)}, MoMa '
                       f'{getattr(moma, field)}')
  layers = []
  for src, dst in zip(_layer_params(dense, dense_params), _layer_params(moma, moma_params)):
    layer = dict(dst)
    for name in ('query', 'key', 'value', 'out', 'attn_norm', 'ffn_norm'):
      layer[name] = src[name]
    ffn = {}
    for group_name, group in dst['ffn'].items():
      experts = group['gate'].shape[0]
      copy = lambda a, n=experts: jnp.broadcast_to(a, (n,) + a.shape)
      ffn[group_name] = dict(group, gate=copy(src['ffn']['gate']['kernel']),
                             up=copy(src['ffn']['up']['kernel']),
                             down=copy(src['ffn']['down']['kernel']),
                             router=jnp.zeros_like(group['router']))
    layer['ffn'] = ffn
    if 'mod_router' in dst:
      layer['mod_router'] = dict(dst['mod_router'],
                                 kernel=jnp.zeros_like(dst['mod_router']['kernel']))
    layers.append(layer)
  params = _with_layer_params(moma, moma_params, layers)
  params['embedding'] = dense_params['embedding']
  params['final_norm'] = dense_params['final_norm']
  return params
