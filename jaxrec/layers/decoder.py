"""Decoder-only LM building blocks, dense or untied by modality (Mixture-of-Transformers).

Pieces: ``RMSNorm``, ``rotary`` (rotary position embedding), ``SwiGLU``, ``causal_attention``
(with key positions, so the same function attends over a KV cache; per-row positions and a key
mask for mixture-of-depths), ``ModalDense`` and ``DecoderBlock`` (its ``attention`` sub-layer is
reused by ``jaxrec.layers.moe.MoMaBlock``). Every parameterised piece takes
``num_modalities``: None gives one shared set of weights (a dense model); ``M`` gives ``M`` copies
stacked on a leading ``'modality'`` axis (Mixture-of-Transformers, Liang et al. 2024,
arXiv:2411.04996), and each call names the copy to use (``layer(x, m)``).

Which tokens use which copy is a ``Routing``:

* ``shared_routing()``: one group, the whole sequence, shared weights (dense).
* ``grouped_routing(modality, capacity)``: a stable argsort of the modality ids of each row
  gathers modality ``m``'s tokens into a group ``[B, C_m, ...]`` of static size ``capacity[m]``;
  the groups go through their own weights as ordinary matmuls and are scattered back. The matmul
  FLOPs are the dense model's (``sum(C_m) = L``). Exact only for rows that hold exactly
  ``capacity[m]`` tokens of each modality ``m`` (see ``check_modality_counts`` in
  ``jaxrec.models.mixed_modal_lm``).
* ``select_routing(modality, M)``: every modality's weights run on every token and each token
  keeps its own modality's result (``jnp.where``): exact for any layout, ``M`` times the matmuls.
  Used for decoding and prefill, whose per-modality counts are not static.

Block (norm placement as MoT Algorithm 1; see ``DecoderBlock``), for the tokens ``X_m`` of each
modality ``m`` with its weights::

  Q, K, V  = merge_m(X_m W_q^m, X_m W_k^m, X_m W_v^m), rotated at each token's true position
  A        = causal softmax(Q K^T / sqrt(K)) V            # ONE global attention, all tokens
  H_m      = X_m + RMSNorm_attn^m(A_m W_o^m)
  Y_m      = H_m + RMSNorm_ffn^m(SwiGLU^m(H_m))

Logical axes (mapped to mesh axes by ``jaxrec.sharding.rules``): q/k/v kernels ``('embed',
'heads', 'kv')``, output kernel ``('heads', 'kv', 'embed')``, FFN ``('embed', 'mlp')`` /
``('mlp', 'embed')``, norm scales ``('embed',)``; untied copies prepend ``'modality'``, a scanned
stack prepends ``'layers'``. Activations are constrained ``('batch', 'length', 'embed')``.
No biases, no dropout.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

# Logical axis names the decoder's parameters and activations use.
AXIS_NAMES = ('vocab', 'embed', 'heads', 'kv', 'mlp', 'modality', 'layers', 'batch', 'length')


def _copies(num_modalities: Optional[int]) -> tuple[int, ...]:
  return () if num_modalities is None else (num_modalities,)


def _pick(param: jax.Array, num_modalities: Optional[int], m: Optional[int], where: str):
  """``param[m]`` for untied weights, ``param`` for shared ones."""
  if num_modalities is None:
    if m is not None:
      raise ValueError(f'{where}: shared weights (num_modalities=None) got modality {m}')
    return param
  if m is None or not 0 <= m < num_modalities:
    raise ValueError(f'{where}: untied weights need a modality in [0, {num_modalities}), got {m}')
  return param[m]


class ModalDense(nn.Module):
  """``y = x . W`` (no bias) contracting the last ``num_in`` dims of ``x``; ``W`` per modality.

  ``W``: ``[M?] + x.shape[-num_in:] + out_shape`` (Xavier normal over those fans), logical axes
  ``('modality',)? + kernel_axes``.

  Call: ``x [..., *in]``, ``m`` (the copy; None for shared weights) -> ``[..., *out_shape]``.
  """
  out_shape: tuple[int, ...]
  num_in: int
  kernel_axes: tuple[str, ...]
  num_modalities: Optional[int] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, m: Optional[int] = None) -> jax.Array:
    copies = _copies(self.num_modalities)
    c, n_in, n_out = len(copies), self.num_in, len(self.out_shape)
    init = nn.initializers.variance_scaling(
        1.0, 'fan_avg', 'normal', in_axis=tuple(range(c, c + n_in)),
        out_axis=tuple(range(c + n_in, c + n_in + n_out)), batch_axis=tuple(range(c)))
    axes = ('modality',) * c + tuple(self.kernel_axes)
    kernel = self.param('kernel', nn.with_logical_partitioning(init, axes),
                        copies + tuple(x.shape[-n_in:]) + tuple(self.out_shape), jnp.float32)
    kernel = _pick(kernel, self.num_modalities, m, self.name)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return jnp.tensordot(x, kernel, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))


class RMSNorm(nn.Module):
  """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (float32 inside).

  ``scale``: ``[M?, D]`` (ones), logical axes ``('modality',)? + ('embed',)``.

  Call: ``x [..., D]``, ``m`` -> ``[..., D]`` in ``dtype`` (x's dtype when None).
  """
  num_modalities: Optional[int] = None
  epsilon: float = 1e-6
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, m: Optional[int] = None) -> jax.Array:
    copies = _copies(self.num_modalities)
    init = nn.with_logical_partitioning(nn.initializers.ones_init(),
                                        ('modality',) * len(copies) + ('embed',))
    scale = self.param('scale', init, copies + (x.shape[-1],), jnp.float32)
    scale = _pick(scale, self.num_modalities, m, self.name)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon) * scale
    return y.astype(self.dtype or x.dtype)


class SwiGLU(nn.Module):
  """``down(silu(x W_gate) * (x W_up))`` (Shazeer 2020), weights per modality.

  Call: ``x [..., D]``, ``m`` -> ``[..., D]``. Kernels: gate / up ``('embed', 'mlp')``, down
  ``('mlp', 'embed')`` (each with a leading ``'modality'`` when untied).
  """
  mlp_dim: int
  num_modalities: Optional[int] = None
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, m: Optional[int] = None) -> jax.Array:
    dense = lambda shape, axes, name: ModalDense(shape, 1, axes, self.num_modalities, self.dtype,
                                                 name=name)
    gate = dense((self.mlp_dim,), ('embed', 'mlp'), 'gate')(x, m)  # [..., F]
    up = dense((self.mlp_dim,), ('embed', 'mlp'), 'up')(x, m)  # [..., F]
    return dense((x.shape[-1],), ('mlp', 'embed'), 'down')(nn.silu(gate) * up, m)  # [..., D]


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), half-split layout.

  The head width ``K`` (even) is split in halves ``(x1, x2)``; pair ``i`` is rotated by angle
  ``p * base^(-i / (K/2))`` at position ``p``, so ``<rotary(q, i), rotary(k, j)>`` depends on the
  positions only through ``i - j``.

  Args:
    x: ``[B, T, H, K]``.
    positions: int ``[T]`` or ``[B, T]``, each token's position.
    base: the frequency base.

  Returns:
    ``[B, T, H, K]`` in x's dtype.
  """
  k = x.shape[-1]
  if k % 2:
    raise ValueError(f'rotary: head width must be even, got {k}')
  half = k // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
  angle = positions.astype(jnp.float32)[..., None] * freq  # [(B,) T, K/2]
  sin, cos = jnp.sin(angle)[..., None, :], jnp.cos(angle)[..., None, :]  # [(B,) T, 1, K/2]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array,
                     k_pos: jax.Array, k_valid: Optional[jax.Array] = None) -> jax.Array:
  """Multi-head attention where a query at position ``p`` sees keys at positions ``<= p``.

  Args:
    q: ``[B, T, H, K]``; k, v: ``[B, S, H, K]`` (``S = T`` in a full forward; the cache length
      when decoding).
    q_pos: int ``[T]`` or ``[B, T]`` (per row, e.g. the tokens a mixture-of-depths layer
      gathered), the queries' positions; k_pos: int ``[S]`` or ``[B, S]``, the keys' positions.
    k_valid: optional bool ``[B, S]``: only keys marked True are attended to (mixture-of-depths
      at inference: the skipped tokens are no keys). A query with no valid key at or before it
      gets an arbitrary finite output (uniform weights); callers discard it.

  Returns:
    ``[B, T, H, K]``. Scores and softmax in float32.
  """
  scores = jnp.einsum('bthk,bshk->bhts', q, k).astype(jnp.float32) / jnp.sqrt(
      jnp.float32(q.shape[-1]))  # [B, H, T, S]
  if q_pos.ndim == 1 and k_pos.ndim == 1:
    allowed = k_pos[None, :] <= q_pos[:, None]  # [T, S]
  else:
    allowed = (k_pos[..., None, :] <= q_pos[..., :, None])  # [(B,) T, S]
    allowed = allowed[:, None] if allowed.ndim == 3 else allowed  # [B, 1, T, S] or [T, S]
  if k_valid is not None:
    allowed = allowed & k_valid[:, None, None, :]  # [B, 1, T, S]
  scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhts,bshk->bthk', weights, v)


# ---- routing tokens to their modality's weights ----


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x[b, index[b]]`` for each row: ``[B, L, ...]``, int ``[B, C]`` -> ``[B, C, ...]``."""
  return jax.vmap(lambda row, i: row[i])(x, index)


@struct.dataclass
class Routing:
  """Which weights each token of a ``[B, T, ...]`` batch goes through (see the module docstring).

  Build with ``shared_routing``, ``grouped_routing`` or ``select_routing``; ``split`` makes the
  groups, ``modalities[g]`` is group ``g``'s weight copy, ``merge`` puts the groups' results back
  in token order.
  """
  index: tuple[jax.Array, ...] = ()  # grouped: per group, int [B, C_g] token positions
  inverse: Optional[jax.Array] = None  # grouped: int [B, T], each token's row in concat(groups)
  modality: Optional[jax.Array] = None  # select: int [B, T]
  modalities: tuple[Optional[int], ...] = struct.field(pytree_node=False, default=(None,))
  mode: str = struct.field(pytree_node=False, default='shared')

  def split(self, x: jax.Array) -> list[jax.Array]:
    """``[B, T, ...]`` -> one array per group (``[B, C_g, ...]`` grouped, else ``[B, T, ...]``)."""
    if self.mode == 'grouped':
      return [_take(x, i) for i in self.index]
    return [x] * len(self.modalities)

  def merge(self, parts: Sequence[jax.Array]) -> jax.Array:
    """The inverse of ``split``: per-group results -> ``[B, T, ...]`` in token order."""
    if self.mode == 'grouped':
      return _take(jnp.concatenate(parts, axis=1), self.inverse)
    if self.mode == 'select':
      mod = self.modality.reshape(self.modality.shape + (1,) * (parts[0].ndim - 2))
      out = parts[0]
      for m in range(1, len(parts)):
        out = jnp.where(mod == m, parts[m], out)
      return out
    return parts[0]


def shared_routing() -> Routing:
  """Every token through the one shared set of weights."""
  return Routing()


def grouped_routing(modality: jax.Array, capacity: Sequence[int]) -> Routing:
  """Static-size per-modality groups from a stable argsort of ``modality`` (int ``[B, T]``).

  Row ``b`` must hold exactly ``capacity[m]`` tokens of modality ``m`` (``sum(capacity) = T``);
  otherwise tokens are silently run through another modality's weights.
  """
  if sum(capacity) != modality.shape[-1]:
    raise ValueError(f'grouped_routing: capacities {tuple(capacity)} sum to {sum(capacity)}, '
                     f'not the sequence length {modality.shape[-1]}')
  order = jnp.argsort(modality, axis=-1, stable=True)  # [B, T]: tokens sorted by modality
  inverse = jnp.argsort(order, axis=-1)  # [B, T]
  starts = [sum(capacity[:m]) for m in range(len(capacity))]
  index = tuple(order[:, s:s + c] for s, c in zip(starts, capacity))
  return Routing(index=index, inverse=inverse, modalities=tuple(range(len(capacity))),
                 mode='grouped')


def select_routing(modality: jax.Array, num_modalities: int) -> Routing:
  """Every modality's weights on every token; each token keeps its own modality's result."""
  return Routing(modality=modality, modalities=tuple(range(num_modalities)), mode='select')


class DecoderBlock(nn.Module):
  """One decoder layer over an interleaved sequence; weights shared or untied by modality.

  Norm placement (MoT Algorithm 1, Liang et al. 2024, arXiv:2411.04996, Sec. 2.2, which keeps
  Chameleon's norm reordering, Chameleon Team 2024, arXiv:2405.09818, Sec. 2.3): each sub-layer's
  OUTPUT is normalised by its modality's norm before the residual add,
  ``H_m = X_m + Norm_attn^m(O_m)``, ``Y_m = H_m + Norm_ffn^m(FFN^m(H_m))``; the sub-layer inputs
  are not normalised (no pre-norm ``x + f(norm(x))``). The authors' reference code
  (facebookresearch/Mixture-of-Transformers, README "Step 3: Handling Norms") does the same:
  ``attention_norm[m]`` after ``wo[m]``, ``ffn_norm[m]`` after the FFN. Dense blocks
  (``num_modalities=None``) use the same placement, so a MoT model whose copies all equal a dense
  model's weights computes the dense model exactly.

  Attributes:
    num_heads: ``H``. head_dim: ``K`` (even, for rotary). mlp_dim: SwiGLU hidden width ``F``.
    num_modalities: None (shared weights) or ``M`` (untied copies on a leading ``'modality'``).
    rope_base: rotary frequency base.
    dtype: computation dtype (None: promote inputs and parameters).

  Call:
    x: ``[B, T, D]``; routing: a ``Routing`` over the ``T`` tokens; start: int32 scalar, the
    position of ``x[:, 0]`` (token ``t`` is at ``start + t``); cache: None, or ``{'key', 'value'}``
    each ``[B, S, H, K]`` (optionally ``'valid'`` bool ``[B, S]``): the new keys / values (and
    validity) are written at ``[start, start + T)`` and the queries attend over the whole cache
    (positions ``0 .. S-1``; later ones are masked, and with ``'valid'`` the invalid ones too).
    positions: optional int ``[B, T]``, each token's own position (overrides ``start``; a
    mixture-of-depths layer runs on a row's gathered tokens at their original positions); not
    with a cache. valid: optional bool ``[B, T]``: which of the tokens may be attended to as keys
    (all when None).

  Returns:
    ``(y [B, T, D], cache)`` (the updated cache, or None).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_modalities: Optional[int] = None
  rope_base: float = 10000.0
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, routing: Routing, start: jax.Array,
               cache: Optional[dict[str, jax.Array]] = None,
               positions: Optional[jax.Array] = None, valid: Optional[jax.Array] = None):
    hs, cache = self.attention(x, routing, start, cache, positions, valid)
    mods = self.num_modalities
    ffn_norm = RMSNorm(mods, dtype=self.dtype, name='ffn_norm')
    ffn = SwiGLU(self.mlp_dim, mods, self.dtype, name='ffn')
    ys = [hg + ffn_norm(ffn(hg, m), m) for hg, m in zip(hs, routing.modalities)]
    y = routing.merge(ys)
    return nn.with_logical_constraint(y, ('batch', 'length', 'embed')), cache

  def attention(self, x: jax.Array, routing: Routing, start: jax.Array,
                cache: Optional[dict[str, jax.Array]], positions: Optional[jax.Array] = None,
                valid: Optional[jax.Array] = None):
    """The attention sub-layer (its parameters live in this block; call from ``__call__``).

    Returns ``(hs, cache)``: per routing group the post-attention residual stream
    ``H_g = X_g + Norm_attn(A_g W_o)`` (``[B, C_g, D]``) and the updated cache.
    """
    d, h, k, mods = x.shape[-1], self.num_heads, self.head_dim, self.num_modalities
    proj = lambda name: ModalDense((h, k), 1, ('embed', 'heads', 'kv'), mods, self.dtype,
                                   name=name)
    w_q, w_k, w_v = proj('query'), proj('key'), proj('value')
    w_o = ModalDense((d,), 2, ('heads', 'kv', 'embed'), mods, self.dtype, name='out')
    attn_norm = RMSNorm(mods, dtype=self.dtype, name='attn_norm')

    xs = routing.split(x)  # per group [B, C_g, D]
    ms = routing.modalities
    q, kk, v = (routing.merge([w(xg, m) for xg, m in zip(xs, ms)])  # each [B, T, H, K]
                for w in (w_q, w_k, w_v))
    if positions is None:
      positions = start + jnp.arange(x.shape[1], dtype=jnp.int32)  # [T]
    elif cache is not None:
      raise ValueError(f'{self.name}: per-row positions cannot be used with a KV cache')
    q = rotary(q, positions, self.rope_base)
    kk = rotary(kk, positions, self.rope_base)
    if cache is None:
      keys, values, k_pos, k_valid = kk, v, positions, valid
    else:
      at = (0, start, 0, 0)
      keys = jax.lax.dynamic_update_slice(cache['key'], kk.astype(cache['key'].dtype), at)
      values = jax.lax.dynamic_update_slice(cache['value'], v.astype(cache['value'].dtype), at)
      k_pos = jnp.arange(keys.shape[1], dtype=jnp.int32)
      if 'valid' in cache:
        new_valid = jnp.ones(x.shape[:2], bool) if valid is None else valid
        k_valid = jax.lax.dynamic_update_slice(cache['valid'], new_valid, (0, start))
        cache = {'key': keys, 'value': values, 'valid': k_valid}
      elif valid is not None:
        raise ValueError(f"{self.name}: a key mask needs a cache with a 'valid' entry")
      else:
        cache, k_valid = {'key': keys, 'value': values}, None
    attn = causal_attention(q, keys.astype(q.dtype), values.astype(q.dtype), positions, k_pos,
                            k_valid)
    hs = [xg + attn_norm(w_o(ag, m), m) for xg, ag, m in zip(xs, routing.split(attn), ms)]
    return hs, cache
