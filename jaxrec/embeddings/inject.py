"""Feeding embeddings computed outside a model (e.g. a sharded lookup) into its FieldEmbedding.

The CTR models build their own ``FieldEmbedding`` and never import ``jaxrec.sharding``. A
trainer that shards the tables takes them out of the parameters, looks them up itself and, while
applying the model, replaces every ``FieldEmbedding`` call's output with its own ``[B, F, d]``
through a Flax method interceptor; the model's other parameters and code are untouched::

  emb = stack_features(sharded.lookup(buffers, KeyedJagged.from_batch(batch, schema)), keys)
  with inject_embeddings(emb):
    logits = model.apply({'params': params_without_embedding}, batch, train=False)
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax.numpy as jnp

from jaxrec.layers.embedding import FieldEmbedding


@contextlib.contextmanager
def inject_embeddings(emb: jnp.ndarray):
  """Within the block, ``FieldEmbedding.__call__`` returns ``emb`` ``[B, F, d]`` unchanged.

  The layer then creates no parameters, so its tables may be absent from the variables.
  """

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, FieldEmbedding) and context.method_name == '__call__':
      return emb
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
