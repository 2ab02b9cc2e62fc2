"""DCNv2 (Wang et al., 2021), as FuxiCTR's ``DCNv2`` (BARS "DCNv2").

``x0 = [flatten(e), dense]`` (``[B, D]``, ``D = F d + num_dense``) feeds a cross network of
``num_cross_layers`` layers, full rank (``CrossNetV2``) or, with ``use_low_rank_mixture``, mixtures
of ``num_experts`` rank-``low_rank`` experts (``CrossNetMix``). ``model_structure``:

* ``'crossnet_only'``: ``fc(cross(x0))``;
* ``'stacked'``: ``fc(DNN_s(cross(x0)))``;
* ``'parallel'``: ``fc([cross(x0), DNN_p(x0)])`` (the BARS Frappe setting: 4 cross layers,
  DNN ``[400, 400, 400]`` with BatchNorm, dropout 0.4);
* ``'stacked_parallel'``: ``fc([DNN_s(cross(x0)), DNN_p(x0)])``;

where the DNNs are ``MLP`` s without output layer (FuxiCTR ``MLP_Block(output_dim=None)``) and
``fc`` is a 1-wide dense layer with bias. FuxiCTR fails on an empty DNN in a structure that uses
it; here an empty DNN is the identity.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.interactions import CrossNet
from jaxrec.layers.mlp import MLP, Activation
from jaxrec.models.lr import Features, dense_features

MODEL_STRUCTURES = ('crossnet_only', 'stacked', 'parallel', 'stacked_parallel')


class DCNv2(nn.Module):
  """Deep & Cross Network v2.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``.
    model_structure: one of ``MODEL_STRUCTURES``.
    num_cross_layers: cross layers (FuxiCTR default 3).
    use_low_rank_mixture: mixture of low-rank experts instead of full-rank cross layers.
    low_rank: expert rank ``r``.
    num_experts: experts per layer.
    low_rank_activation: nonlinearity in the low-rank space (FuxiCTR: tanh).
    stacked_dnn_hidden_units: hidden sizes of the DNN after the cross net.
    parallel_dnn_hidden_units: hidden sizes of the DNN beside the cross net.
    activation: DNN activation.
    dropout_rate: DNN dropout (FuxiCTR ``net_dropout``).
    batch_norm: BatchNorm in the DNNs.

  Call:
    features: the batch dict; train: training mode.

  Returns:
    logits ``float32 [batch]``.
  """
  schema: FeatureSchema
  embedding_dim: int = 10
  model_structure: str = 'parallel'
  num_cross_layers: int = 3
  use_low_rank_mixture: bool = False
  low_rank: int = 32
  num_experts: int = 4
  low_rank_activation: Optional[Activation] = 'tanh'
  stacked_dnn_hidden_units: Sequence[int] = (64, 64, 64)
  parallel_dnn_hidden_units: Sequence[int] = (64, 64, 64)
  activation: Activation = 'relu'
  dropout_rate: float = 0.0
  batch_norm: bool = False

  def __post_init__(self):
    if self.model_structure not in MODEL_STRUCTURES:
      raise ValueError(f'DCNv2: model_structure={self.model_structure!r} is not one of '
                       f'{MODEL_STRUCTURES}')
    super().__post_init__()

  def _dnn(self, units: Sequence[int], name: str) -> MLP:
    return MLP(units, self.activation, self.dropout_rate, self.batch_norm, name=name)

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    emb = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B, F, d]
    x0 = emb.reshape(emb.shape[0], -1)  # [B, F d]
    dense = dense_features(self.schema, features)
    if dense is not None:
      x0 = jnp.concatenate([x0, dense.astype(x0.dtype)], axis=-1)  # [B, D]
    cross = CrossNet(self.num_cross_layers,
                     low_rank=self.low_rank if self.use_low_rank_mixture else None,
                     num_experts=self.num_experts, activation=self.low_rank_activation,
                     name='crossnet')(x0)  # [B, D]
    s = self.model_structure
    if s == 'crossnet_only':
      out = cross
    elif s == 'stacked':
      out = self._dnn(self.stacked_dnn_hidden_units, 'stacked_dnn')(cross, train)
    elif s == 'parallel':
      out = jnp.concatenate(
          [cross, self._dnn(self.parallel_dnn_hidden_units, 'parallel_dnn')(x0, train)], axis=-1)
    else:
      out = jnp.concatenate(
          [self._dnn(self.stacked_dnn_hidden_units, 'stacked_dnn')(cross, train),
           self._dnn(self.parallel_dnn_hidden_units, 'parallel_dnn')(x0, train)], axis=-1)
    return MLP(output_dim=1, name='fc')(out, train)[:, 0].astype(jnp.float32)
