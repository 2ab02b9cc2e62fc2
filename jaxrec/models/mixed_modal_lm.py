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

Example::

  model = MixedModalLM(vocab_size=512, num_layers=2, embed_dim=64, num_heads=4, head_dim=16,
                       mlp_dim=256, untie='mot', modality_capacity=(96, 32), max_len=128)
  check_modality_counts(modality, model.modality_capacity)      # host side, per batch
  variables = model.init(key, tokens, modality, train=False)     # tokens, modality: int [B, 128]
  logits = model.apply(variables, tokens, modality, train=True)  # float32 [B, 128, 512]
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.decoder import (DecoderBlock, RMSNorm, grouped_routing, select_routing,
                                   shared_routing)
from jaxrec.layers.transformer import REMAT_POLICIES, check_remat_policy

PyTree = Any
Cache = dict[str, jax.Array]
UNTIE = ('none', 'mot')


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

  Call:
    inputs: int ``[B, L]`` tokens; modality: int ``[B, L]`` modality ids; train: unused (no
    dropout), kept for the trainer's interface.

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
    super().__post_init__()

  @property
  def _copies(self) -> Optional[int]:
    return self.num_modalities if self.untie == 'mot' else None

  def setup(self):
    d = self.embed_dim
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(nn.initializers.normal(d ** -0.5),
                                                  ('vocab', 'embed')),
        (self.vocab_size, d), jnp.float32)
    block = _ScanBlock if self.scan_layers else DecoderBlock
    if self.layer_param_fn is not None and not self.is_initializing():
      block = nn.map_variables(block, 'params', trans_in_fn=self.layer_param_fn)
    if self.remat_policy != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy],
                       prevent_cse=not self.scan_layers)
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                  num_modalities=self._copies, rope_base=self.rope_base, dtype=self.dtype)
    if self.scan_layers:
      self.layers = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True},
                            in_axes=(nn.broadcast, nn.broadcast, 0), length=self.num_layers,
                            metadata_params={nn.PARTITION_NAME: 'layers'})(**kwargs)
    else:
      self.layers = [block(**kwargs) for _ in range(self.num_layers)]
    self.final_norm = RMSNorm(self._copies, dtype=self.dtype)

  def _check_tokens(self, inputs: jax.Array, modality: jax.Array, where: str) -> None:
    if inputs.ndim != 2 or modality.shape != inputs.shape:
      raise ValueError(f'{type(self).__name__}.{where}: inputs {inputs.shape} and modality '
                       f'{modality.shape} must both be [batch, length]')

  def _forward(self, inputs, routing, start, cache: Optional[Cache]):
    x = jnp.take(self.embedding, inputs, axis=0).astype(self.dtype or jnp.float32)  # [B, T, D]
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    if self.scan_layers:
      x, cache = self.layers(x, routing, start, cache)
    else:
      new = []
      for i, layer in enumerate(self.layers):
        x, c = layer(x, routing, start, None if cache is None else
                     jax.tree.map(lambda a, i=i: a[i], cache))
        new.append(c)
      cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new)
    x = routing.merge([self.final_norm(xg, m) for xg, m in
                       zip(routing.split(x), routing.modalities)])
    logits = jnp.einsum('btd,vd->btv', x, self.embedding.astype(x.dtype))
    return logits.astype(jnp.float32), cache

  def __call__(self, inputs: jax.Array, modality: jax.Array, *, train: bool) -> jax.Array:
    del train  # no dropout
    self._check_tokens(inputs, modality, '__call__')
    length = inputs.shape[1]
    if length > self.max_len:
      raise ValueError(f'{type(self).__name__}: sequence length {length} exceeds max_len '
                       f'{self.max_len}')
    if self.untie == 'none':
      routing = shared_routing()
    elif self.modality_capacity is None:
      routing = select_routing(modality, self.num_modalities)
    else:
      if sum(self.modality_capacity) != length:
        raise ValueError(f'{type(self).__name__}: modality_capacity {self.modality_capacity} '
                         f'sums to {sum(self.modality_capacity)}, not the sequence length '
                         f'{length}')
      routing = grouped_routing(modality, self.modality_capacity)
    return self._forward(inputs, routing, jnp.int32(0), None)[0]

  def decode(self, tokens: jax.Array, modality: jax.Array, position, cache: Cache
             ) -> tuple[jax.Array, Cache]:
    """Runs ``T`` new tokens at positions ``[position, position + T)`` against the KV cache.

    Prefill is ``decode(prompt, prompt_modality, 0, init_cache(...))``; a decode step passes one
    token (``T = 1``). MoT selects each token's weights per modality (every modality's weights
    run on every new token; no capacity needed).

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
    routing = (shared_routing() if self.untie == 'none'
               else select_routing(modality, self.num_modalities))
    return self._forward(tokens, routing, jnp.asarray(position, jnp.int32), cache)

  def init_cache(self, batch: int, max_len: Optional[int] = None) -> Cache:
    """An empty KV cache: ``{'key', 'value'}`` each ``[num_layers, batch, max_len, H, K]``
    (``max_len`` defaults to the model's), in the computation dtype."""
    size = self.max_len if max_len is None else max_len
    if size > self.max_len:
      raise ValueError(f'{type(self).__name__}.init_cache: cache length {size} exceeds max_len '
                       f'{self.max_len}')
    shape = (self.num_layers, batch, size, self.num_heads, self.head_dim)
    zeros = jnp.zeros(shape, self.dtype or jnp.float32)
    return {'key': zeros, 'value': zeros}


class DecoderLM(nn.Module):
  """``MixedModalLM`` sized by a dataset's ``SequenceSchema``: what configs name as
  ``model='decoder_lm'`` and the trainer applies to a batch dict.

  The vocabulary, the context (``schema.seq_len``) and, for MoT, the static per-modality token
  counts (``schema.modality_counts``: the grouped, dense-FLOP routing) come from the schema.

  Attributes:
    schema: a ``jaxrec.data.schema.SequenceSchema``.
    num_layers, embed_dim, num_heads, head_dim, mlp_dim, untie, rope_base, dtype, scan_layers,
      remat_policy, layer_param_fn: as ``MixedModalLM``.

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

  def lm(self, **kwargs) -> MixedModalLM:
    """The underlying ``MixedModalLM`` (unbound unless ``kwargs`` give a parent; its parameters
    are this module's ``lm``)."""
    s = self.schema
    kwargs.setdefault('parent', None)
    return MixedModalLM(
        vocab_size=s.vocab_size, num_layers=self.num_layers, embed_dim=self.embed_dim,
        num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        num_modalities=s.num_modalities, untie=self.untie,
        modality_capacity=tuple(s.modality_counts) if self.untie == 'mot' else None,
        max_len=s.seq_len, rope_base=self.rope_base, dtype=self.dtype,
        scan_layers=self.scan_layers, remat_policy=self.remat_policy,
        layer_param_fn=self.layer_param_fn, **kwargs)

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
  """
  n, d, h, k, f = length, model.embed_dim, model.num_heads, model.head_dim, model.mlp_dim
  per_layer = {
      'qkv': 3 * 2 * n * d * h * k,
      'attention_scores': 2 * n * n * h * k,
      'attention_values': 2 * n * n * h * k,
      'attention_out': 2 * n * h * k * d,
      'ffn': 3 * 2 * n * d * f,
  }
  out = {key: model.num_layers * value for key, value in per_layer.items()}
  out['head'] = 2 * n * d * model.vocab_size
  return out


def mixed_modal_lm_flops(model: MixedModalLM, length: int) -> int:
  """Forward matmul FLOPs of one sequence (see ``mixed_modal_lm_flops_breakdown``)."""
  return sum(mixed_modal_lm_flops_breakdown(model, length).values())
