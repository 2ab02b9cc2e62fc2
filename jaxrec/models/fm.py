"""Factorization machine (Rendle 2010), as FuxiCTR's ``FM`` (BARS "FM").

``logit = bias + sum_f w_f[id_f] + dense @ w_dense + sum_{i<j} <e_i, e_j>``

The first-order part is ``LinearLogit`` (its own dim-1 tables); the second-order part uses the
``d``-dim field embeddings and the ``O(F d)`` sum-square identity. Dense features enter only the
linear term.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.interactions import fm_second_order
from jaxrec.models.lr import Features, LinearLogit


class FM(nn.Module):
  """Factorization machine: first-order term plus pairwise embedding inner products.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``.

  Call:
    features: the batch dict; train: unused (no dropout or BatchNorm).

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = FM(schema=schema, embedding_dim=10)
    logits = model.apply(variables, batch, train=False)
  """
  schema: FeatureSchema
  embedding_dim: int = 10

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    del train
    emb = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B, F, d]
    logit = LinearLogit(self.schema, name='linear')(features) + fm_second_order(emb)
    return logit.astype(jnp.float32)
