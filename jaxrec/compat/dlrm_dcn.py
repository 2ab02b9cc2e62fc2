"""TorchRec's ``DLRM_DCN`` as a Flax module, so its weights convert exactly (no torch needed).

TorchRec's ``DLRM_DCN`` (``torchrec.models.dlrm``) is a DCNv2 with three differences from
jaxrec's :class:`~jaxrec.models.dcnv2.DCNv2`:

1. Dense features pass through a bottom MLP (ReLU after *every* layer, the last one ``d`` wide)
   and join the embeddings as one more ``d``-wide field; DCNv2 concatenates the raw features.
2. The cross layers are plain low rank (DCNv2 paper, eq. 2 with ``W = V U``)::

     x_{l+1} = x0 * ((x_l V_l) U_l + b_l) + x_l        V_l: [D, r], U_l: [r, D], b_l: [D]

   with no experts, gate or nonlinearity; DCNv2 has full-rank layers or FuxiCTR's mixture of
   low-rank experts (an extra ``r x r`` matrix, a tanh and a softmax gate).
3. TorchRec orders the cross input ``[dense_emb, e_1, ..., e_F]``; here it is
   ``[e_1, ..., e_F, dense_emb]`` (jaxrec's order, as in DLRM and DCNv2). Cross layers are
   equivariant under a permutation of the input coordinates applied to ``V``'s rows, ``U``'s
   columns and ``b``, so ``jaxrec.compat.torchrec`` converts weights exactly by permuting them.

The over arch (hidden ReLU layers, then a 1-wide linear layer) is DCNv2's ``'stacked'`` structure,
and parameter names follow DCNv2's: ``embedding/<field>``, ``bottom_mlp/{dense_i, output}``,
``crossnet/cross_<l>/{V, U, bias}``, ``stacked_dnn/dense_i``, ``fc/output``.

Initialisation is jaxrec's (embeddings ``N(0, 1e-4)``, Xavier-normal dense kernels, zero biases);
the cross kernels are Xavier normal with fans ``D`` and ``r`` like TorchRec's
``LowRankCrossNet``. ``jaxrec.compat.torchrec_init.torchrec_init`` redraws all parameters with
TorchRec's defaults.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.mlp import MLP, Activation, xavier_normal
from jaxrec.models.lr import Features, dense_features


class LowRankCrossLayer(nn.Module):
  """One plain low-rank cross layer: ``x0 * ((x V) U + b) + x`` (TorchRec ``LowRankCrossNet``).

  Attributes:
    low_rank: the rank ``r``.

  Call:
    x0: ``[batch, D]``, the cross network's input; x: ``[batch, D]``, the previous output.

  Returns:
    ``[batch, D]``.
  """
  low_rank: int

  def __post_init__(self):
    if self.low_rank < 1:
      raise ValueError(f'LowRankCrossLayer: low_rank must be >= 1, got {self.low_rank}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
    dim, r = x0.shape[-1], self.low_rank
    lp = nn.with_logical_partitioning
    v = self.param('V', lp(xavier_normal, ('cross_in', 'rank')), (dim, r), jnp.float32)
    u = self.param('U', lp(xavier_normal, ('rank_in', 'cross')), (r, dim), jnp.float32)
    b = self.param('bias', lp(nn.initializers.zeros_init(), ('cross',)), (dim,), jnp.float32)
    return x0 * ((x @ v) @ u + b) + x  # [B, D]


class LowRankCrossNet(nn.Module):
  """A stack of ``LowRankCrossLayer`` s sharing ``x0`` (layers named ``cross_<l>``).

  Attributes:
    num_layers: number of layers (0 returns the input).
    low_rank: the rank ``r`` of every layer.

  Call:
    x0: ``[batch, D]``.

  Returns:
    ``[batch, D]``.
  """
  num_layers: int
  low_rank: int

  def __post_init__(self):
    if self.num_layers < 0:
      raise ValueError(f'LowRankCrossNet: num_layers must be >= 0, got {self.num_layers}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x0: jax.Array) -> jax.Array:
    x = x0
    for i in range(self.num_layers):
      x = LowRankCrossLayer(self.low_rank, name=f'cross_{i}')(x0, x)
    return x


class DLRMDCN(nn.Module):
  """DLRM with a low-rank cross network as interaction (TorchRec ``DLRM_DCN``).

  Attributes:
    schema: the feature schema (TorchRec's DLRM_DCN needs dense features; without them the
      bottom MLP is skipped and ``x0`` is the flattened embeddings).
    embedding_dim: ``d`` (also the bottom MLP's output width).
    bottom_mlp_units: bottom MLP hidden sizes (TorchRec ``dense_arch_layer_sizes[:-1]``).
    num_cross_layers: TorchRec ``dcn_num_layers``.
    low_rank: TorchRec ``dcn_low_rank_dim``.
    top_mlp_units: over-arch hidden sizes (TorchRec ``over_arch_layer_sizes[:-1]``, at least
      one, as TorchRec requires).
    activation: activation of both MLPs (TorchRec: ReLU).

  Call:
    features: the batch dict; train: training mode (accepted for the common model signature;
      there is no dropout or BatchNorm).

  Returns:
    logits ``float32 [batch]``.
  """
  schema: FeatureSchema
  embedding_dim: int = 64
  bottom_mlp_units: Sequence[int] = (512, 256)
  num_cross_layers: int = 3
  low_rank: int = 512
  top_mlp_units: Sequence[int] = (1024, 1024, 512, 256)
  activation: Activation = 'relu'

  def __post_init__(self):
    if not self.top_mlp_units:
      raise ValueError('DLRMDCN: top_mlp_units must not be empty (TorchRec OverArch needs '
                       'a hidden layer)')
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    emb = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B, F, d]
    x0 = emb.reshape(emb.shape[0], -1)  # [B, F d]
    dense = dense_features(self.schema, features)
    if dense is not None:
      bottom = MLP(self.bottom_mlp_units, self.activation, output_dim=self.embedding_dim,
                   output_activation=self.activation, name='bottom_mlp')
      x0 = jnp.concatenate([x0, bottom(dense, train).astype(x0.dtype)], axis=-1)  # [B, D]
    x = LowRankCrossNet(self.num_cross_layers, self.low_rank, name='crossnet')(x0)  # [B, D]
    out = MLP(self.top_mlp_units, self.activation, name='stacked_dnn')(x, train)
    return MLP(output_dim=1, name='fc')(out, train)[:, 0].astype(jnp.float32)
