"""DHEN's heterogeneous interaction modules and its layer (Zhang et al., 2022, "DHEN: A Deep and
Hierarchical Ensemble Network for Large-Scale Click-Through Rate Prediction", arXiv 2203.11014).

Every module maps the layer input ``X: [batch, n, d]`` to ``m`` embeddings ``[batch, m, d]`` so
that their outputs can be summed as well as concatenated:

=============  ===================================================================================
name           module
=============  ===================================================================================
``dot``        AdvancedDLRM: pairwise dot products (``interactions.dot_interaction``, ``n(n-1)/2``)
               then a linear projection (``MLP`` output layer) to ``m d`` -> ``[m, d]``.
``attention``  a transformer encoder layer over the ``n`` embeddings (``SelfAttentionEncoder``)
               then a linear compression ``n -> m`` (``wukong.LinearCompression``).
``cross``      DCN: ``interactions.CrossNet`` (full-rank DCNv2 cross layers) on ``flatten(X)``
               ``[n d]``, then a linear projection to ``m d``.
``linear``     ``W X``: ``wukong.LinearCompression`` ``n -> m``.
``conv``       a 2-D convolution over the ``n x d`` embedding matrix (one input channel,
               ``conv_channels`` filters, SAME padding, activation), flattened, then a linear
               projection to ``m d``.
=============  ===================================================================================

``DHENLayer``: ``Y = LayerNorm(Ensemble(modules(X)) + ShortCut(X))`` where the ensemble is
``'concat'`` (along the embedding axis: ``[batch, M m, d]`` for ``M`` modules), ``'sum'`` or
``'weighted_sum'`` (learned scalar weight per module), and the shortcut is ``'identity'`` (needs
the ensemble to have ``n`` embeddings) or ``'projection'`` (a linear compression ``n ->`` the
ensemble's count).

Choices the paper leaves open, made here (DHEN has no public implementation):

1. Every module ends in ``m`` embeddings of width ``d`` (a projection where its natural output
   differs), so the three ensembles and the LayerNorm apply to all modules alike.
2. The encoder layer is PyTorch's ``nn.TransformerEncoderLayer`` default arrangement (post-LN:
   ``LN(x + MHA(x))`` then ``LN(h + FFN(h))``, ReLU FFN of width ``ffn_units``, 4 d by default),
   with biases on every projection; no dropout inside it.
3. The DCN module uses full-rank cross layers (``cross_layers`` of them, 1 by default).
4. The conv module applies the activation (ReLU by default) after the convolution; without it
   conv + projection would be one more linear map.
5. ``weighted_sum`` weights are free scalars initialised to ``1 / M`` (so the layer starts as the
   mean of its modules), not softmax-normalised.
6. The LayerNorm normalises each output embedding over ``d`` (as in ``wukong.WukongLayer``).
7. Initialisation: Xavier normal for every kernel (attention, conv and projections alike), zero
   biases, as jaxrec's other dense layers.

Logical axes: attention ``q/k/v`` kernels ``('embed', 'heads', 'kv')``, biases ``('heads', 'kv')``,
output kernel ``('heads', 'kv', 'embed')``, bias ``('embed',)``; conv kernel
``('conv_height', 'conv_width', 'conv_in', 'conv')``, bias ``('conv',)``; ensemble weights
``('ensemble',)``; projections and the FFN are ``MLP`` s (``mlp_in`` / ``mlp`` / ``mlp_out``), the
DCN module a ``CrossNet`` (``cross_in`` / ``cross``), linear compressions ``('fields_in',
'fields')``, LayerNorms ``('embed',)``. The names this file adds to
``jaxrec.layers.LOGICAL_AXIS_NAMES`` are in ``AXIS_NAMES``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.layers.interactions import CrossNet, dot_interaction
from jaxrec.layers.mlp import MLP, Activation, get_activation, xavier_normal
from jaxrec.layers.wukong import LinearCompression, layer_norm

AXIS_NAMES = ('heads', 'kv', 'conv_height', 'conv_width', 'conv_in', 'conv', 'ensemble')
ENSEMBLES = ('concat', 'sum', 'weighted_sum')
SHORTCUTS = ('identity', 'projection')

_zeros = nn.initializers.zeros_init()
# Xavier normal on the [d, heads, head_dim] input kernels and the [heads, head_dim, d] output
# kernel: fans d and heads * head_dim, as PyTorch's [d, d] in/out projections.
_qkv_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=0, out_axis=(1, 2))
_out_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=(0, 1), out_axis=2)


def _projection(x: jax.Array, num_outputs: int, dim: int, train: bool) -> jax.Array:
  """Linear map of ``x: [batch, D]`` to ``[batch, num_outputs, dim]`` (the shared MLP, no hidden)."""
  out = MLP(output_dim=num_outputs * dim, name='projection')(x, train)
  return out.reshape(x.shape[0], num_outputs, dim)


class SelfAttentionEncoder(nn.Module):
  """A transformer encoder layer over the embeddings (post-LN, PyTorch's default arrangement).

  ``h = LN(x + MHA(x))``, ``out = LN(h + FFN(h))``; ``MHA`` is multi-head scaled dot-product
  self-attention with ``num_heads`` heads of width ``d / num_heads`` and biased projections; the FFN
  is the shared ``MLP`` (``ffn_units`` hidden, output ``d``).

  Attributes:
    num_heads: attention heads (must divide ``d``).
    ffn_units: FFN hidden width (``None``: ``4 d``).
    activation: FFN activation.

  Call:
    x: ``[batch, n, d]``; train: training mode (unused: no dropout inside).

  Returns:
    ``[batch, n, d]``.
  """
  num_heads: int = 1
  ffn_units: Optional[int] = None
  activation: Activation = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, n, d = x.shape
    h = self.num_heads
    if h < 1 or d % h:
      raise ValueError(f'SelfAttentionEncoder: num_heads={h} must be >= 1 and divide the '
                       f'embedding dim {d}')
    dh = d // h
    lp = nn.with_logical_partitioning
    qkv = {}
    for name in ('query', 'key', 'value'):
      w = self.param(f'{name}_kernel', lp(_qkv_init, ('embed', 'heads', 'kv')), (d, h, dh),
                     jnp.float32)
      bias = self.param(f'{name}_bias', lp(_zeros, ('heads', 'kv')), (h, dh), jnp.float32)
      qkv[name] = jnp.einsum('bnd,dhk->bnhk', x, w) + bias  # [B, n, h, dh]
    logits = jnp.einsum('bnhk,bmhk->bhnm', qkv['query'], qkv['key']) / math.sqrt(dh)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, h, n, n]
    att = jnp.einsum('bhnm,bmhk->bnhk', weights, qkv['value'])  # [B, n, h, dh]
    wo = self.param('out_kernel', lp(_out_init, ('heads', 'kv', 'embed')), (h, dh, d), jnp.float32)
    bo = self.param('out_bias', lp(_zeros, ('embed',)), (d,), jnp.float32)
    att = jnp.einsum('bnhk,hkd->bnd', att, wo) + bo
    x = layer_norm('embed', 'norm_attention')(x + att)
    ffn = MLP((self.ffn_units or 4 * d,), self.activation, output_dim=d, name='ffn')
    f = ffn(x.reshape(b * n, d), train).reshape(b, n, d)
    return layer_norm('embed', 'norm_ffn')(x + f)


class DotProductModule(nn.Module):
  """AdvancedDLRM: pairwise dot products of the embeddings, projected to ``m`` embeddings.

  Attributes:
    num_outputs: ``m``.

  Call:
    x: ``[batch, n, d]`` with ``n >= 2``; train: training mode.

  Returns:
    ``[batch, m, d]``.
  """
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.shape[1] < 2:
      raise ValueError(f'DotProductModule needs at least 2 embeddings, got x of shape {x.shape}')
    return _projection(dot_interaction(x), self.num_outputs, x.shape[2], train)


class AttentionModule(nn.Module):
  """A transformer encoder layer over the embeddings, then a linear compression ``n -> m``.

  Attributes:
    num_outputs: ``m``.
    num_heads, ffn_units, activation: of the ``SelfAttentionEncoder``.

  Call:
    x: ``[batch, n, d]``; train: training mode.

  Returns:
    ``[batch, m, d]``.
  """
  num_outputs: int
  num_heads: int = 1
  ffn_units: Optional[int] = None
  activation: Activation = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    enc = SelfAttentionEncoder(self.num_heads, self.ffn_units, self.activation,
                               name='encoder')(x, train)
    return LinearCompression(self.num_outputs, name='compression')(enc)


class CrossModule(nn.Module):
  """DCN: full-rank cross layers on the flattened embeddings, projected to ``m`` embeddings.

  Attributes:
    num_outputs: ``m``.
    num_layers: cross layers.

  Call:
    x: ``[batch, n, d]``; train: training mode.

  Returns:
    ``[batch, m, d]``.
  """
  num_outputs: int
  num_layers: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cross = CrossNet(self.num_layers, name='crossnet')(x.reshape(x.shape[0], -1))  # [B, n d]
    return _projection(cross, self.num_outputs, x.shape[2], train)


class LinearModule(nn.Module):
  """``W X``: a linear compression of the ``n`` embeddings into ``m``.

  Attributes:
    num_outputs: ``m``.

  Call:
    x: ``[batch, n, d]``; train: unused.

  Returns:
    ``[batch, m, d]``.
  """
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return LinearCompression(self.num_outputs, name='compression')(x)


class ConvModule(nn.Module):
  """A 2-D convolution over the ``n x d`` embedding matrix, then a projection to ``m`` embeddings.

  Attributes:
    num_outputs: ``m``.
    channels: number of filters ``C``.
    kernel_size: ``(height, width)`` of the filters (over embeddings x coordinates); SAME padding.
    activation: applied after the convolution.

  Call:
    x: ``[batch, n, d]``; train: training mode.

  Returns:
    ``[batch, m, d]`` (the ``[batch, n, d, C]`` feature map is flattened and projected).
  """
  num_outputs: int
  channels: int = 4
  kernel_size: Sequence[int] = (3, 3)
  activation: Activation = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    lp = nn.with_logical_partitioning
    conv = nn.Conv(self.channels, tuple(self.kernel_size), padding='SAME', name='conv',
                   kernel_init=lp(xavier_normal, ('conv_height', 'conv_width', 'conv_in', 'conv')),
                   bias_init=lp(_zeros, ('conv',)))
    h = get_activation(self.activation)(conv(x[..., None]))  # [B, n, d, C]
    return _projection(h.reshape(x.shape[0], -1), self.num_outputs, x.shape[2], train)


# The modules a config may name (a plain dict).
MODULES: dict[str, type[nn.Module]] = {'dot': DotProductModule, 'attention': AttentionModule,
                                       'cross': CrossModule, 'linear': LinearModule,
                                       'conv': ConvModule}


def check_interactions(interactions: Sequence[str], where: str) -> None:
  """Raises ValueError naming ``where`` if ``interactions`` is empty or names an unknown module."""
  if isinstance(interactions, str) or not interactions:
    raise ValueError(f'{where}: expected a non-empty sequence of module names from '
                     f'{sorted(MODULES)}, got {interactions!r}')
  bad = [m for m in interactions if m not in MODULES]
  if bad:
    raise ValueError(f'{where}: unknown module(s) {bad}; valid: {sorted(MODULES)}')


class DHENLayer(nn.Module):
  """One DHEN layer: ``LayerNorm(Ensemble(modules(X)) + ShortCut(X))``.

  Attributes:
    interactions: module names (keys of ``MODULES``), run in parallel on the same input; a name
      may repeat (each copy has its own parameters).
    num_outputs: ``m``, embeddings produced by every module.
    ensemble: ``'concat'``, ``'sum'`` or ``'weighted_sum'``.
    shortcut: ``'identity'`` or ``'projection'``.
    num_heads, ffn_units: of the attention module.
    cross_layers: cross layers of the DCN module.
    conv_channels, conv_kernel: of the conv module.
    activation: of the attention FFN and the conv module.

  Call:
    x: ``[batch, n, d]``; train: training mode.

  Returns:
    ``[batch, M m, d]`` for ``'concat'`` (``M`` modules, in order), else ``[batch, m, d]``.
  """
  interactions: Sequence[str]
  num_outputs: int
  ensemble: str = 'concat'
  shortcut: str = 'projection'
  num_heads: int = 1
  ffn_units: Optional[int] = None
  cross_layers: int = 1
  conv_channels: int = 4
  conv_kernel: Sequence[int] = (3, 3)
  activation: Activation = 'relu'

  def __post_init__(self):
    check_interactions(self.interactions, 'DHENLayer interactions')
    if isinstance(self.num_outputs, bool) or int(self.num_outputs) != self.num_outputs or (
        self.num_outputs < 1):
      raise ValueError(f'DHENLayer: num_outputs must be a positive int, got {self.num_outputs!r}')
    if self.ensemble not in ENSEMBLES:
      raise ValueError(f'DHENLayer: ensemble={self.ensemble!r} is not one of {ENSEMBLES}')
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'DHENLayer: shortcut={self.shortcut!r} is not one of {SHORTCUTS}')
    super().__post_init__()

  def _module(self, kind: str, index: int) -> nn.Module:
    name, m = f'{kind}_{index}', self.num_outputs
    if kind == 'attention':
      return AttentionModule(m, self.num_heads, self.ffn_units, self.activation, name=name)
    if kind == 'cross':
      return CrossModule(m, self.cross_layers, name=name)
    if kind == 'conv':
      return ConvModule(m, self.conv_channels, tuple(self.conv_kernel), self.activation, name=name)
    return MODULES[kind](m, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outs = [self._module(kind, i)(x, train) for i, kind in enumerate(self.interactions)]
    if self.ensemble == 'concat':
      y = jnp.concatenate(outs, axis=1)  # [B, M m, d]
    elif self.ensemble == 'sum':
      y = sum(outs[1:], outs[0])  # [B, m, d]
    else:
      num = len(outs)
      w = self.param('ensemble_weights', nn.with_logical_partitioning(
          nn.initializers.constant(1.0 / num), ('ensemble',)), (num,), jnp.float32)
      y = jnp.einsum('e,ebmd->bmd', w.astype(x.dtype), jnp.stack(outs))  # [B, m, d]
    if self.shortcut == 'identity':
      if y.shape[1] != x.shape[1]:
        raise ValueError(f'DHENLayer: shortcut=identity needs the ensemble to keep the {x.shape[1]} '
                         f'input embeddings, but {self.ensemble} of {list(self.interactions)} '
                         f'gives {y.shape[1]}; use shortcut=projection or change num_outputs')
      short = x
    else:
      short = LinearCompression(y.shape[1], name='shortcut')(x)
    return layer_norm('embed', 'norm')(y + short)
