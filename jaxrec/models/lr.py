"""Logistic regression, and the first-order term LR / FM / DeepFM share.

FuxiCTR's ``LogisticRegression`` block: a 1-dim embedding per categorical id (a weight per id,
drawn like every embedding, N(0, 1e-4)), summed over fields, plus a scalar bias (zero init).
Dense features (if the schema has any) add a linear term ``dense @ w`` (no bias of its own;
Xavier-normal ``w`` as every dense kernel; FuxiCTR would embed each numeric feature separately,
which for a 1-dim "embedding" is the same linear function).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.mlp import MLP

Features = Mapping[str, Any]


def dense_features(schema: FeatureSchema, features: Features) -> Optional[jax.Array]:
  """The batch's dense features ``float32 [batch, num_dense]``, or None if the schema has none.

  Raises ValueError if the schema has dense features and the batch lacks them or has the wrong
  width.
  """
  if schema.num_dense == 0:
    return None
  if 'dense' not in features:
    raise ValueError(f"features: schema has {schema.num_dense} dense features "
                     f"{list(schema.dense)} but the batch has no 'dense' key")
  dense = jnp.asarray(features['dense'], jnp.float32)
  if dense.ndim != 2 or dense.shape[1] != schema.num_dense:
    raise ValueError(f"features['dense']: expected shape [batch, {schema.num_dense}], "
                     f'got {tuple(dense.shape)}')
  return dense


class LinearLogit(nn.Module):
  """First-order term ``bias + sum_f w_f[id_f] + dense @ w_dense``.

  Attributes:
    schema: the feature schema.
    use_bias: whether the term has its own bias (DeepFM's has none: its DNN output carries it).

  Call:
    features: the batch dict.

  Returns:
    ``float32 [batch]``.
  """
  schema: FeatureSchema
  use_bias: bool = True

  @nn.compact
  def __call__(self, features: Features) -> jax.Array:
    weights = FieldEmbedding(self.schema, dim=1, name='embedding')(features)  # [B, F, 1]
    out = jnp.sum(weights, axis=(1, 2))  # [B]
    dense = dense_features(self.schema, features)
    if dense is not None:
      out = out + MLP(output_dim=1, use_bias=False, name='dense')(dense, train=False)[:, 0]
    if not self.use_bias:
      return out
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ()),
                      (), jnp.float32)
    return out + bias


class LR(nn.Module):
  """Logistic regression (BARS "LR").

  Attributes:
    schema: the feature schema.
    embedding_dim: accepted for the common model signature; LR has no ``d``-dim embeddings.

  Call:
    features: the batch dict (``sparse``, ``dense``, ``multi_hot_*``; labels are ignored).
    train: unused (LR has no dropout or BatchNorm).

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = LR(schema=schema)
    variables = model.init({'params': key}, batch, train=False)
    logits = model.apply(variables, batch, train=False)
  """
  schema: FeatureSchema
  embedding_dim: int = 10

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    del train
    return LinearLogit(self.schema, name='linear')(features).astype(jnp.float32)
