"""Wukong's interaction blocks (Zhang et al., 2024, "Wukong: Towards a Scaling Law for Large-Scale
Recommendation", arXiv 2403.02545).

Every block maps a stack of ``n`` embeddings ``X: [batch, n, d]`` to another stack of the same
width ``d``:

* ``optimized_fm(x, y)``: the rank-``k`` factorization machine ``X X^T Y`` (``[batch, n, k]``),
  computed as ``X (X^T Y)`` in ``O(n d k)`` instead of forming the ``n x n`` Gram matrix
  (``O(n^2 d)``).
* ``LinearCompression`` (LCB): ``W X`` with ``W: [m, n]`` (stored transposed, ``[n, m]``) mixing
  embeddings, never their coordinates: ``[batch, n, d] -> [batch, m, d]``.
* ``FactorizationMachineBlock`` (FMB): ``optimized_fm`` -> flatten ``[batch, n k]`` -> LayerNorm ->
  ``MLP`` (the shared ``jaxrec.layers.mlp.MLP``, linear output layer of width ``nF d``) -> reshape
  to ``[batch, nF, d]``.
* ``WukongLayer``: ``LN(concat(FMB(X), LCB(X)) + residual(X))``, ``[batch, n, d] ->
  [batch, nF + nL, d]``; the residual is ``X`` itself when ``n == nF + nL`` and a learned linear
  compression ``n -> nF + nL`` otherwise.

Choices the paper leaves open, made here (a careful reading, not Meta's code, which is not
public):

1. **Y of the optimized FM.** The paper describes ``X X^T Y`` with ``Y`` an ``n x k`` projection.
   ``projection='learned'`` (default) makes ``Y`` a parameter ``[n, k]`` shared by all examples;
   ``projection='projected'`` makes it input dependent, ``Y = X P`` with a learned ``P: [d, k]``
   (still ``O(n d k)``: ``X^T (X P)`` then ``X (.)``), which adds one more order of interaction.
2. **FMB normalisation and MLP.** LayerNorm over the whole flattened ``n k`` vector; the MLP has
   ``mlp_units`` hidden layers with the activation (ReLU by default) and a *linear* output layer
   of width ``nF d`` (the paper gives no output activation).
3. **Layer LayerNorm** normalises each output embedding over its ``d`` coordinates (as a
   transformer normalises each token) by default (``norm='embedding'``); ``norm='layer'``
   normalises the whole flattened ``[nF + nL, d]`` matrix instead (one scale/bias per
   coordinate, logical axis ``mlp_in``), which keeps the embeddings' relative magnitudes.
4. **No bias** in the LCB or the residual projection: they are the paper's ``W X``.
5. **Initialisation**: ``W``, ``Y`` and ``P`` are Xavier normal like every dense kernel in jaxrec
   (``jaxrec.layers.mlp.xavier_normal``); LayerNorm scale 1, bias 0, epsilon 1e-5 (PyTorch's
   default, as in the paper's PyTorch stack).

Logical axes: ``W`` ``('fields_in', 'fields')`` (input / output embedding count), the learned
``Y`` ``('fields_in', 'rank')``, the projected ``P`` ``('embed', 'rank')``, the FMB LayerNorm's
scale/bias ``('mlp_in',)`` (it normalises the MLP input), the layer LayerNorm's ``('embed',)``.
The names this file adds to ``jaxrec.layers.LOGICAL_AXIS_NAMES`` are in ``AXIS_NAMES``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.layers.mlp import MLP, Activation, get_activation, xavier_normal

# Logical axis names introduced by the Wukong blocks (beyond jaxrec.layers.LOGICAL_AXIS_NAMES).
AXIS_NAMES = ('fields_in', 'fields')
FM_PROJECTIONS = ('learned', 'projected')
LAYER_NORMS = ('embedding', 'layer')
LAYER_NORM_EPSILON = 1e-5


def layer_norm(axis_name: str, name: str) -> nn.LayerNorm:
  """A LayerNorm over the last axis (epsilon 1e-5) whose scale/bias carry ``(axis_name,)``."""
  lp = nn.with_logical_partitioning
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, name=name,
                      scale_init=lp(nn.initializers.ones_init(), (axis_name,)),
                      bias_init=lp(nn.initializers.zeros_init(), (axis_name,)))


def optimized_fm(x: jax.Array, y: jax.Array) -> jax.Array:
  """Wukong's optimized (rank-``k``) factorization machine ``X X^T Y``.

  Args:
    x: ``[batch, n, d]`` embeddings.
    y: ``[n, k]`` (one projection for every example) or ``[batch, n, k]`` (per example).

  Returns:
    ``[batch, n, k]``; entry ``(b, i, j)`` is ``sum_l <x_bi, x_bl> y_lj``. Computed as
    ``X (X^T Y)``: two contractions of ``n d k`` multiply-adds each, never the ``n x n`` Gram.
  """
  if x.ndim != 3:
    raise ValueError(f'optimized_fm: x must be [batch, n, d], got shape {x.shape}')
  n = x.shape[1]
  if y.ndim == 2 and y.shape[0] == n:
    xty = jnp.einsum('bnd,nk->bdk', x, y)  # [B, d, k]
  elif y.ndim == 3 and y.shape[:2] == x.shape[:2]:
    xty = jnp.einsum('bnd,bnk->bdk', x, y)  # [B, d, k]
  else:
    raise ValueError(f'optimized_fm: y must be [n, k] or [batch, n, k] with n={n} (x is '
                     f'{x.shape}), got shape {y.shape}')
  return jnp.einsum('bnd,bdk->bnk', x, xty)  # [B, n, k]


def _positive(value, what: str) -> None:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{what} must be a positive int, got {value!r}')


class LinearCompression(nn.Module):
  """Linear compression block (LCB): ``m`` linear combinations of the ``n`` input embeddings.

  Attributes:
    num_outputs: ``m``, the number of output embeddings.

  Call:
    x: ``[batch, n, d]``.

  Returns:
    ``[batch, m, d]``: output ``j`` is ``sum_i W[i, j] x_i`` (kernel ``W: [n, m]``, no bias).

  Example::

    lcb = LinearCompression(num_outputs=4)
    variables = lcb.init(key, x)          # x: [B, 10, 16]
    y = lcb.apply(variables, x)           # [B, 4, 16]
  """
  num_outputs: int

  def __post_init__(self):
    _positive(self.num_outputs, 'LinearCompression: num_outputs')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param('kernel', nn.with_logical_partitioning(xavier_normal, ('fields_in', 'fields')),
                   (x.shape[1], self.num_outputs), jnp.float32)
    return jnp.einsum('bnd,nm->bmd', x, w.astype(x.dtype))


class FactorizationMachineBlock(nn.Module):
  """Wukong's FMB: optimized FM, flatten, LayerNorm, MLP, reshape to ``num_outputs`` embeddings.

  Attributes:
    num_outputs: ``nF``, the number of output embeddings.
    rank: ``k``, the rank of the optimized FM.
    mlp_units: hidden sizes of the MLP (its output layer has width ``nF d``, linear).
    projection: ``'learned'`` (``Y: [n, k]`` parameter) or ``'projected'`` (``Y = X P``,
      ``P: [d, k]``); see the module docstring.
    activation: hidden activation of the MLP.
    dropout_rate: dropout after each hidden MLP layer (``train=True`` only).

  Call:
    x: ``[batch, n, d]``; train: training mode (dropout).

  Returns:
    ``[batch, nF, d]``.
  """
  num_outputs: int
  rank: int
  mlp_units: Sequence[int] = ()
  projection: str = 'learned'
  activation: Activation = 'relu'
  dropout_rate: float = 0.0

  def __post_init__(self):
    _positive(self.num_outputs, 'FactorizationMachineBlock: num_outputs')
    _positive(self.rank, 'FactorizationMachineBlock: rank')
    if self.projection not in FM_PROJECTIONS:
      raise ValueError(f'FactorizationMachineBlock: projection={self.projection!r} is not one of '
                       f'{FM_PROJECTIONS}')
    get_activation(self.activation, 'FactorizationMachineBlock activation')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, n, d = x.shape
    lp = nn.with_logical_partitioning
    if self.projection == 'learned':
      y = self.param('fm_projection', lp(xavier_normal, ('fields_in', 'rank')), (n, self.rank),
                     jnp.float32).astype(x.dtype)  # [n, k]
    else:
      p = self.param('fm_projection', lp(xavier_normal, ('embed', 'rank')), (d, self.rank),
                     jnp.float32).astype(x.dtype)
      y = jnp.einsum('bnd,dk->bnk', x, p)  # [B, n, k]
    fm = optimized_fm(x, y).reshape(b, n * self.rank)  # [B, n k]
    fm = layer_norm('mlp_in', 'norm')(fm)
    mlp = MLP(tuple(self.mlp_units), self.activation, self.dropout_rate,
              output_dim=self.num_outputs * d, name='mlp')
    return mlp(fm, train).reshape(b, self.num_outputs, d)


class WukongLayer(nn.Module):
  """One Wukong interaction layer: ``LN(concat(FMB(X), LCB(X)) + residual(X))``.

  Attributes:
    num_fm_outputs: ``nF`` (FMB output embeddings; 0 drops the FMB).
    num_lcb_outputs: ``nL`` (LCB output embeddings; 0 drops the LCB).
    rank: ``k`` of the optimized FM.
    mlp_units: hidden sizes of the FMB's MLP.
    projection: the FMB's ``Y`` (``'learned'`` or ``'projected'``).
    activation: the FMB MLP's activation.
    dropout_rate: the FMB MLP's dropout.
    norm: the layer LayerNorm's extent: ``'embedding'`` (each embedding over ``d``) or
      ``'layer'`` (the flattened ``[nF + nL, d]``).

  Call:
    x: ``[batch, n, d]``; train: training mode.

  Returns:
    ``[batch, nF + nL, d]`` (FMB embeddings first). The residual is ``x`` when
    ``n == nF + nL``, else a ``LinearCompression`` named ``residual``.
  """
  num_fm_outputs: int
  num_lcb_outputs: int
  rank: int
  mlp_units: Sequence[int] = ()
  projection: str = 'learned'
  activation: Activation = 'relu'
  dropout_rate: float = 0.0
  norm: str = 'embedding'

  def __post_init__(self):
    if self.norm not in LAYER_NORMS:
      raise ValueError(f'WukongLayer: norm must be one of {LAYER_NORMS}, got {self.norm!r}')
    for name in ('num_fm_outputs', 'num_lcb_outputs'):
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError(f'WukongLayer: {name} must be an int >= 0, got {v!r}')
    if self.num_fm_outputs + self.num_lcb_outputs < 1:
      raise ValueError('WukongLayer: num_fm_outputs + num_lcb_outputs must be >= 1')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    parts = []
    if self.num_fm_outputs:
      parts.append(FactorizationMachineBlock(
          self.num_fm_outputs, self.rank, self.mlp_units, self.projection, self.activation,
          self.dropout_rate, name='fmb')(x, train))  # [B, nF, d]
    if self.num_lcb_outputs:
      parts.append(LinearCompression(self.num_lcb_outputs, name='lcb')(x))  # [B, nL, d]
    out = jnp.concatenate(parts, axis=1)  # [B, nF + nL, d]
    m = self.num_fm_outputs + self.num_lcb_outputs
    residual = x if x.shape[1] == m else LinearCompression(m, name='residual')(x)
    if self.norm == 'embedding':
      return layer_norm('embed', 'norm')(out + residual)
    y = (out + residual).reshape(x.shape[0], -1)  # [B, m d]
    return layer_norm('mlp_in', 'norm')(y).reshape(x.shape[0], m, x.shape[2])
