"""DLRM (Naumov et al., 2019), as FuxiCTR's ``DLRM`` (BARS "DLRM").

* Categorical fields -> ``d``-dim embeddings ``[B, F, d]``.
* Dense features (if any) -> bottom MLP ``bottom_mlp_units`` then a ``d``-wide output layer with
  the same activation (FuxiCTR: ``output_activation=bottom_mlp_activations``); the result joins
  the embeddings as one more field, *last* (FuxiCTR order; the original DLRM puts it first, which
  only permutes the top MLP's input). Frappe has no dense features, hence no bottom MLP.
* Interaction ``'dot'``: pairwise dot products of the ``F'`` fields, upper triangle without the
  diagonal (``dot_interaction``, row-major pair order), followed by the dense embedding when there
  is one: top input ``[pairs, dense_emb]`` of width ``F'(F'-1)/2 (+ d)``. ``'cat'``: the flattened
  ``[B, F' d]`` fields instead.
* Top MLP ``top_mlp_units`` then a 1-wide output layer -> logit.
BatchNorm (if on) is used in both MLPs, as in FuxiCTR.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.interactions import dot_interaction
from jaxrec.layers.mlp import MLP, Activation
from jaxrec.models.lr import Features, dense_features

INTERACTIONS = ('dot', 'cat')


class DLRM(nn.Module):
  """Bottom MLP for dense features, pairwise dot interaction, top MLP.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d`` (also the bottom MLP's output width).
    top_mlp_units: top MLP hidden sizes (FuxiCTR default ``[64, 64, 64]``).
    bottom_mlp_units: bottom MLP hidden sizes (unused without dense features).
    activation: activation of both MLPs.
    top_dropout_rate / bottom_dropout_rate: dropout of each MLP.
    interaction: ``'dot'`` or ``'cat'``.
    batch_norm: BatchNorm in both MLPs.

  Call:
    features: the batch dict; train: training mode.

  Returns:
    logits ``float32 [batch]``.
  """
  schema: FeatureSchema
  embedding_dim: int = 10
  top_mlp_units: Sequence[int] = (64, 64, 64)
  bottom_mlp_units: Sequence[int] = (64, 64, 64)
  activation: Activation = 'relu'
  top_dropout_rate: float = 0.0
  bottom_dropout_rate: float = 0.0
  interaction: str = 'dot'
  batch_norm: bool = False

  def __post_init__(self):
    if self.interaction not in INTERACTIONS:
      raise ValueError(f'DLRM: interaction={self.interaction!r} is not one of {INTERACTIONS}')
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    emb = FieldEmbedding(self.schema, self.embedding_dim, name='embedding')(features)  # [B, F, d]
    dense = dense_features(self.schema, features)
    dense_emb = None
    if dense is not None:
      bottom = MLP(self.bottom_mlp_units, self.activation, self.bottom_dropout_rate,
                   self.batch_norm, output_dim=self.embedding_dim,
                   output_activation=self.activation, name='bottom_mlp')
      dense_emb = bottom(dense, train).astype(emb.dtype)  # [B, d]
      emb = jnp.concatenate([emb, dense_emb[:, None, :]], axis=1)  # [B, F + 1, d]
    if self.interaction == 'dot':
      top_in = dot_interaction(emb)  # [B, F'(F'-1)/2]
      if dense_emb is not None:
        top_in = jnp.concatenate([top_in, dense_emb], axis=-1)
    else:
      top_in = emb.reshape(emb.shape[0], -1)  # [B, F' d]
    top = MLP(self.top_mlp_units, self.activation, self.top_dropout_rate, self.batch_norm,
              output_dim=1, name='top_mlp')
    return top(top_in, train)[:, 0].astype(jnp.float32)
