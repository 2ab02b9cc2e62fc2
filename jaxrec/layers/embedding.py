"""Per-field embedding tables: ids -> one ``d``-dim vector per categorical field.

Logical axes: every table is ``('vocab', 'embed')``; the trainer's embedding regularizer and the
sharding rules find tables by the ``'vocab'`` axis name.

The lookups are ``jaxrec.embeddings.collection``'s (the unsharded embedding-bag collection: one
table per field, ``configs_from_schema``). An id outside its table gives a zero row (see
``jaxrec.embeddings.collection``).

Tables looked up elsewhere (sharded over devices, ``jaxrec.train.table_trainer``): when the
variables hold ``{EMBEDDED: {'pooled': [B, F, d]}}`` at this layer's path, the layer returns that
array and creates no tables. Each ``FieldEmbedding`` of a model (e.g. FM's first-order weights and
its second-order embeddings) has its own path, so each gets its own lookup.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.embeddings.collection import bag_lookup, one_hot_lookup

# FuxiCTR / BARS initialise embeddings with N(0, 1e-4).
default_embedding_init = nn.initializers.normal(stddev=1e-4)

EMBEDDED = 'embedded'  # variable collection of lookups computed outside the model


class FieldEmbedding(nn.Module):
  """Looks up one embedding per categorical field (multi-hot bags pooled).

  Attributes:
    schema: the feature schema (one table per sparse field, named after the field).
    dim: embedding dimension ``d``.
    embedding_init: initializer of the tables.

  Call:
    features: the batch dict; uses ``sparse`` ``int32 [B, S]`` and, if the schema has multi-hot
      fields, ``multi_hot_ids`` ``int32 [B, M, L]`` and ``multi_hot_lengths`` ``int32 [B, M]`` and
      ``multi_hot_weights`` ``float32 [B, M, L]`` (bag = weighted sum of its valid rows; 'mean'
      pooling divides by the bag length).

  Returns:
    ``[B, F, d]`` with ``F = schema.num_fields`` in schema order.

  Example::

    emb = FieldEmbedding(schema, dim=10)
    variables = emb.init(key, batch)
    x = emb.apply(variables, batch)   # [B, 10, 10] for Frappe
  """
  schema: FeatureSchema
  dim: int
  embedding_init: Callable = default_embedding_init
  dtype: jnp.dtype = jnp.float32

  def _table(self, field):
    return self.param(field.name, nn.with_logical_partitioning(self.embedding_init, ('vocab', 'embed')),
                      (field.vocab_size, self.dim), jnp.float32)

  @nn.compact
  def __call__(self, features) -> jnp.ndarray:
    if self.has_variable(EMBEDDED, 'pooled'):
      return self.get_variable(EMBEDDED, 'pooled').astype(self.dtype)  # [B, F, d]
    outs = []
    sparse = features['sparse']
    oh, mh = 0, 0
    for field in self.schema.sparse:
      table = self._table(field).astype(self.dtype)
      if not field.multi_hot:
        outs.append(one_hot_lookup(table, sparse[:, oh]))  # [B, d]
        oh += 1
      else:
        ids = features['multi_hot_ids'][:, mh, :field.max_length]  # [B, L]
        lengths = features['multi_hot_lengths'][:, mh]  # [B]
        weights = features['multi_hot_weights'][:, mh, :field.max_length]  # [B, L]
        mh += 1
        outs.append(bag_lookup(table, ids, lengths, weights, field.pooling))  # [B, d]
    return jnp.stack(outs, axis=1)  # [B, F, d]
