"""Explicit feature-interaction operators: FM, pairwise dot products, cross layers.

Inputs are either a stack of field embeddings ``[batch, fields, dim]`` (FM, dot interaction) or
a flat feature vector ``[batch, D]`` (cross layers), so Wukong / DHEN can reuse these blocks.

* ``fm_second_order`` / ``bi_interaction``: FM's sum over field pairs ``i < j`` of
  ``<e_i, e_j>``, computed in ``O(F d)`` as ``0.5 * ((sum_i e_i)^2 - sum_i e_i^2)``.
* ``dot_interaction``: DLRM's pairwise dot products, upper triangle without the diagonal, in
  row-major order ``(0,1), (0,2), ..., (0,F-1), (1,2), ..., (F-2,F-1)`` (``pair_indices``; the
  order of ``torch.triu(..., 1)`` masked selection used by FuxiCTR).
* ``CrossLayer``: DCNv2's full-rank cross layer ``x_{l+1} = x0 * (x_l W + b) + x_l``
  (FuxiCTR ``CrossNetV2``).
* ``LowRankMoECrossLayer``: DCNv2's mixture of low-rank experts (FuxiCTR ``CrossNetMix``)::

    E_e(x_l) = x0 * (g(g(x_l V_e) C_e) U_e + b)          # g = tanh in FuxiCTR
    x_{l+1}  = sum_e softmax_e(x_l G)_e * E_e(x_l) + x_l

  with ``V_e: [D, r]``, ``C_e: [r, r]``, ``U_e: [r, D]``, gate ``G: [D, E]`` (no bias) and a bias
  ``b: [D]`` shared by the experts of a layer.
* ``CrossNet``: a stack of either kind of cross layer on the same ``x0``.

Initialisation (FuxiCTR): ``CrossLayer`` is an ``nn.Linear`` reset to Xavier normal kernel and
zero bias. ``CrossNetMix`` draws each ``[E, D, r]`` / ``[E, r, r]`` tensor with PyTorch's
``xavier_normal_`` on the 3-D tensor, i.e. ``fan_in = shape[1] * r`` and ``fan_out = E * r``
(reproduced here with the same fans); each expert's gate is an ``nn.Linear(D, 1)`` reset to Xavier
normal (fans ``D`` and 1); the bias is zero.

Logical axes: cross kernel ``('cross_in', 'cross')``, cross bias ``('cross',)``; low-rank experts
``V: ('expert', 'cross_in', 'rank')``, ``C: ('expert', 'rank_in', 'rank')``,
``U: ('expert', 'rank_in', 'cross')``, gate ``('cross_in', 'expert')``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.layers.mlp import Activation, get_activation, xavier_normal


def bi_interaction(x: jax.Array) -> jax.Array:
  """Sum over field pairs ``i < j`` of the elementwise products ``e_i * e_j``.

  Args:
    x: ``[batch, fields, dim]``.

  Returns:
    ``[batch, dim]``: ``0.5 * ((sum_i e_i)^2 - sum_i e_i^2)``.
  """
  square_of_sum = jnp.square(jnp.sum(x, axis=1))  # [B, d]
  sum_of_square = jnp.sum(jnp.square(x), axis=1)  # [B, d]
  return 0.5 * (square_of_sum - sum_of_square)


def fm_second_order(x: jax.Array) -> jax.Array:
  """FM second-order term ``sum_{i<j} <e_i, e_j>`` in ``O(F d)``.

  Args:
    x: ``[batch, fields, dim]``.

  Returns:
    ``[batch]``.
  """
  return jnp.sum(bi_interaction(x), axis=-1)


def pair_indices(num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column indices of the strict upper triangle, row-major.

  ``pair_indices(4)`` gives pairs ``(0,1) (0,2) (0,3) (1,2) (1,3) (2,3)``; there are
  ``num_fields * (num_fields - 1) // 2`` of them.
  """
  if num_fields < 1:
    raise ValueError(f'pair_indices: num_fields must be >= 1, got {num_fields}')
  return np.triu_indices(num_fields, k=1)


def dot_interaction(x: jax.Array) -> jax.Array:
  """DLRM pairwise dot products without self-interaction.

  Args:
    x: ``[batch, fields, dim]``.

  Returns:
    ``[batch, fields * (fields - 1) // 2]``; column ``k`` is ``<e_i, e_j>`` for the ``k``-th
    pair of ``pair_indices(fields)`` (row-major upper triangle).
  """
  rows, cols = pair_indices(x.shape[1])
  gram = jnp.einsum('bfd,bgd->bfg', x, x)  # [B, F, F]
  return gram[:, rows, cols]


class CrossLayer(nn.Module):
  """Full-rank DCNv2 cross layer: ``x0 * (x W + b) + x``.

  Call:
    x0: ``[batch, D]``, the cross network's input.
    x: ``[batch, D]``, the previous layer's output (``x0`` for the first layer).

  Returns:
    ``[batch, D]``.
  """

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    dim = x0.shape[-1]
    w = self.param('kernel', nn.with_logical_partitioning(xavier_normal, ('cross_in', 'cross')),
                   (dim, dim), jnp.float32)
    b = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('cross',)),
                   (dim,), jnp.float32)
    return x0 * (x @ w + b) + x


# PyTorch xavier_normal_ on a [E, a, b] tensor: fan_in = a * b, fan_out = E * b. Our tensors put
# the rank axis last (V: [E, D, r], C: [E, r, r]) or in the middle (U: [E, r, D]); the fans match.
_expert_init_v = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=1, out_axis=0)
_expert_init_u = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=2, out_axis=0)
# One nn.Linear(D, 1) per expert: fans D and 1, experts stacked on axis 1 of the [D, E] gate.
_gate_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=0, out_axis=(),
                                              batch_axis=1)


class LowRankMoECrossLayer(nn.Module):
  """DCNv2 mixture of low-rank cross experts (FuxiCTR ``CrossNetMix``, one layer).

  Attributes:
    low_rank: ``r``, the rank of every expert.
    num_experts: ``E``.
    activation: the nonlinearity ``g`` in the low-rank space (FuxiCTR: tanh; ``None`` or
      ``'identity'`` makes each expert the full cross with ``W_e = V_e C_e U_e``).

  Call:
    x0: ``[batch, D]``; x: ``[batch, D]``.

  Returns:
    ``[batch, D]``: ``sum_e softmax(x G)_e * x0 * (g(g(x V_e) C_e) U_e + b) + x``.
  """
  low_rank: int = 32
  num_experts: int = 4
  activation: Optional[Activation] = 'tanh'

  def __post_init__(self):
    if self.low_rank < 1:
      raise ValueError(f'LowRankMoECrossLayer: low_rank must be >= 1, got {self.low_rank}')
    if self.num_experts < 1:
      raise ValueError(f'LowRankMoECrossLayer: num_experts must be >= 1, got {self.num_experts}')
    get_activation(self.activation, 'LowRankMoECrossLayer activation')
    super().__post_init__()

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    d, r, e = x0.shape[-1], self.low_rank, self.num_experts
    g = get_activation(self.activation)
    lp = nn.with_logical_partitioning
    v = self.param('V', lp(_expert_init_v, ('expert', 'cross_in', 'rank')), (e, d, r), jnp.float32)
    c = self.param('C', lp(_expert_init_v, ('expert', 'rank_in', 'rank')), (e, r, r), jnp.float32)
    u = self.param('U', lp(_expert_init_u, ('expert', 'rank_in', 'cross')), (e, r, d), jnp.float32)
    gate = self.param('gate', lp(_gate_init, ('cross_in', 'expert')), (d, e), jnp.float32)
    b = self.param('bias', lp(nn.initializers.zeros_init(), ('cross',)), (d,), jnp.float32)
    h = g(jnp.einsum('bd,edr->ber', x, v))  # [B, E, r]
    h = g(jnp.einsum('ber,ers->bes', h, c))  # [B, E, r]
    experts = x0[:, None, :] * (jnp.einsum('ber,erd->bed', h, u) + b)  # [B, E, D]
    weights = jax.nn.softmax(x @ gate, axis=-1)  # [B, E]
    return jnp.einsum('be,bed->bd', weights, experts) + x


class CrossNet(nn.Module):
  """A stack of cross layers sharing ``x0`` (FuxiCTR ``CrossNetV2`` / ``CrossNetMix``).

  Attributes:
    num_layers: number of cross layers (0 returns the input).
    low_rank: ``None`` for full-rank ``CrossLayer`` s; an int for ``LowRankMoECrossLayer`` s of
      that rank.
    num_experts: experts per low-rank layer.
    activation: low-rank nonlinearity (see ``LowRankMoECrossLayer``).

  Call:
    x0: ``[batch, D]``.

  Returns:
    ``[batch, D]``.
  """
  num_layers: int
  low_rank: Optional[int] = None
  num_experts: int = 4
  activation: Optional[Activation] = 'tanh'

  def __post_init__(self):
    if self.num_layers < 0:
      raise ValueError(f'CrossNet: num_layers must be >= 0, got {self.num_layers}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x0: jax.Array) -> jax.Array:
    x = x0
    for i in range(self.num_layers):
      if self.low_rank is None:
        layer = CrossLayer(name=f'cross_{i}')
      else:
        layer = LowRankMoECrossLayer(self.low_rank, self.num_experts, self.activation,
                                     name=f'cross_{i}')
      x = layer(x0, x)
    return x
