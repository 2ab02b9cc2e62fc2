"""DeepFM (Guo et al., 2017), as FuxiCTR's ``DeepFM`` (BARS "DeepFM").

``logit = LinearLogit(x) + sum_{i<j} <e_i, e_j> + MLP([flatten(e), dense])``

The FM and the DNN share the ``d``-dim field embeddings; the first-order term has its own dim-1
tables and no bias, and the DNN's output layer carries the model's one bias (as in FuxiCTR, whose
DeepFM builds its FM part with ``use_bias=False``). Dense features
enter the linear term and are appended to the DNN input.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.interactions import fm_second_order
from jaxrec.layers.mlp import MLP, Activation
from jaxrec.models.lr import Features, LinearLogit, dense_features


class DeepFM(nn.Module):
  """FM plus a DNN over the flattened embeddings.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``.
    hidden_units: DNN hidden sizes (FuxiCTR default ``[64, 64, 64]``).
    activation: DNN activation.
    dropout_rate: DNN dropout (FuxiCTR ``net_dropout``).
    batch_norm: BatchNorm in the DNN.

  Call:
    features: the batch dict; train: dropout on and batch statistics (needs ``rngs={'dropout'}``
      and ``mutable=['batch_stats']`` when those are enabled).

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = DeepFM(schema=schema, embedding_dim=10, hidden_units=(400, 400, 400))
  """
  schema: FeatureSchema
  embedding_dim: int = 10
  hidden_units: Sequence[int] = (64, 64, 64)
  activation: Activation = 'relu'
  dropout_rate: float = 0.0
  batch_norm: bool = False

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    emb = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B, F, d]
    dnn_in = emb.reshape(emb.shape[0], -1)  # [B, F * d]
    dense = dense_features(self.schema, features)
    if dense is not None:
      dnn_in = jnp.concatenate([dnn_in, dense.astype(dnn_in.dtype)], axis=-1)
    dnn = MLP(self.hidden_units, self.activation, self.dropout_rate, self.batch_norm,
              output_dim=1, name='dnn')
    logit = (LinearLogit(self.schema, use_bias=False, name='linear')(features) + fm_second_order(emb)
             + dnn(dnn_in, train)[:, 0])
    return logit.astype(jnp.float32)
