"""A field transformer for CTR: the fields' embeddings are the tokens of a transformer stack.

``tokens = [e_1, ..., e_F (, dense @ W_dense)]`` (``[B, T, d]``; the dense features, if any, are
one more token) -> ``TransformerStack`` (``jaxrec.layers.transformer``) -> mean over tokens ->
``MLP(output_dim=1)`` -> logit. It is the transformer used to verify FSDP (a block stack with
scanned, rematerialisable layers) in the same trainer as the CTR models, and an AutoInt-style
baseline in its own right.

Logical axes: embedding tables ``('vocab', 'embed')``, the dense projection ``('mlp_in',
'embed')`` / ``('embed',)``, the blocks as in ``jaxrec.layers.transformer`` (``'embed'``,
``'heads'``, ``'kv'``, ``'mlp'``, ``'layers'``), the head as ``MLP``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.mlp import MLP, Activation, xavier_normal
from jaxrec.layers.transformer import TransformerStack
from jaxrec.models.lr import Features, dense_features

PyTree = Any


class FieldTransformer(nn.Module):
  """Transformer over field embeddings.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``, the embedding width and the transformer width.
    num_layers, num_heads, head_dim, mlp_dim: the block stack.
    dropout_rate: dropout inside the blocks.
    activation: MLP activation inside the blocks.
    scan_layers: scan the blocks (stacked ``'layers'`` parameters) instead of unrolling them.
    remat_policy: per-block rematerialisation (``jaxrec.layers.transformer.REMAT_POLICIES``).
    dtype: activation dtype of the stack (the embeddings are cast to it); float32 by default.
    layer_param_fn: per-block parameter map (see ``TransformerStack``), set by the sharding code.

  Call:
    features: the batch dict; train: training mode (dropout).

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = FieldTransformer(schema, embedding_dim=32, num_layers=2, num_heads=4, head_dim=8,
                             mlp_dim=64)
    variables = model.init({'params': key}, batch, train=False)
    logits = model.apply(variables, batch, train=False)   # [batch]
  """
  schema: FeatureSchema
  embedding_dim: int = 16
  num_layers: int = 2
  num_heads: int = 2
  head_dim: int = 8
  mlp_dim: int = 64
  dropout_rate: float = 0.0
  activation: Activation = 'gelu'
  scan_layers: bool = True
  remat_policy: str = 'none'
  dtype: Any = jnp.float32
  layer_param_fn: Optional[Callable[[PyTree], PyTree]] = None

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    tokens = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B,F,d]
    dense = dense_features(self.schema, features)
    if dense is not None:
      proj = nn.Dense(self.embedding_dim, name='dense_token',
                      kernel_init=nn.with_logical_partitioning(xavier_normal,
                                                               ('mlp_in', 'embed')),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ('embed',)))
      tokens = jnp.concatenate([tokens, proj(dense.astype(tokens.dtype))[:, None, :]], axis=1)
    h = nn.with_logical_constraint(tokens.astype(self.dtype), ('batch', 'length', 'embed'))
    h = TransformerStack(self.num_layers, self.num_heads, self.head_dim, self.mlp_dim,
                         dropout_rate=self.dropout_rate, activation=self.activation,
                         scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                         dtype=self.dtype, layer_param_fn=self.layer_param_fn,
                         name='stack')(h, train=train)  # [B, T, d]
    pooled = jnp.mean(h, axis=1)  # [B, d]
    return MLP(output_dim=1, name='head')(pooled, train)[:, 0].astype(jnp.float32)
