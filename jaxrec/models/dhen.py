"""DHEN (Zhang et al., 2022, arXiv 2203.11014): a deep hierarchical ensemble of heterogeneous
interaction modules.

* Embedding layer as Wukong's: the field embeddings, then the dense features (if any) projected to
  ``num_dense_embeddings`` more embeddings by the shared ``MLP``: ``X0: [B, n, d]``.
* ``len(layers)`` ``DHENLayer`` s (``jaxrec/layers/dhen.py``): layer ``i`` runs the modules named
  in ``layers[i]`` (any of ``'dot'`` (AdvancedDLRM), ``'attention'``, ``'cross'`` (DCN),
  ``'linear'``, ``'conv'``) on the same input, each producing ``num_embeddings`` embeddings,
  ensembles them (``ensemble``), adds the shortcut (``shortcut``) and applies LayerNorm. With
  ``'concat'`` a layer of ``M`` modules outputs ``M * num_embeddings`` embeddings.
* Top MLP on the flattened output -> logit (optional BatchNorm / dropout, 1-wide output layer).

The paper's choices not public, and what is done instead, are listed in
``jaxrec/layers/dhen.py``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.dhen import ENSEMBLES, SHORTCUTS, DHENLayer, check_interactions
from jaxrec.layers.mlp import MLP, Activation
from jaxrec.models.lr import Features
from jaxrec.models.wukong import embed_with_dense


def _as_layers(layers) -> tuple[tuple[str, ...], ...]:
  """Nested sequences (lists from a JSON config) -> a hashable tuple of tuples."""
  if isinstance(layers, str) or not isinstance(layers, Sequence):
    raise ValueError(f'DHEN: layers must be a sequence of sequences of module names, got '
                     f'{layers!r}')
  out = []
  for i, names in enumerate(layers):
    check_interactions(names, f'DHEN: layers[{i}]')
    out.append(tuple(names))
  return tuple(out)


class DHEN(nn.Module):
  """Deep and hierarchical ensemble network.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``.
    layers: one sequence of module names per layer, e.g. ``(('dot', 'linear'),
      ('attention', 'cross', 'linear'))``; nested lists are accepted and stored as tuples.
    num_embeddings: ``m``, embeddings produced by every module.
    ensemble: ``'concat'``, ``'sum'`` or ``'weighted_sum'`` (all layers).
    shortcut: ``'identity'`` or ``'projection'`` (all layers).
    num_heads: attention heads (must divide ``d``).
    ffn_units: attention FFN width (``None``: ``4 d``).
    cross_layers: cross layers per DCN module.
    conv_channels: filters of the conv module.
    conv_kernel: ``(height, width)`` of the conv filters.
    top_mlp_units: hidden sizes of the top MLP.
    dropout_rate: dropout in the top MLP.
    batch_norm: BatchNorm in the top MLP.
    num_dense_embeddings: embeddings the dense features become (unused without dense features).
    dense_mlp_units: hidden sizes of the dense projection MLP.
    activation: activation of the MLPs, the attention FFN and the conv module.

  Call:
    features: the batch dict; train: training mode.

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = DHEN(schema=schema, embedding_dim=16, layers=(('dot', 'linear'), ('attention',
                 'linear')), num_embeddings=8, top_mlp_units=(128,))
  """
  schema: FeatureSchema
  embedding_dim: int = 10
  layers: Sequence[Sequence[str]] = (('dot', 'linear'), ('dot', 'linear'))
  num_embeddings: int = 8
  ensemble: str = 'concat'
  shortcut: str = 'projection'
  num_heads: int = 1
  ffn_units: Optional[int] = None
  cross_layers: int = 1
  conv_channels: int = 4
  conv_kernel: Sequence[int] = (3, 3)
  top_mlp_units: Sequence[int] = (64, 64, 64)
  dropout_rate: float = 0.0
  batch_norm: bool = False
  num_dense_embeddings: int = 1
  dense_mlp_units: Sequence[int] = ()
  activation: Activation = 'relu'

  def __post_init__(self):
    object.__setattr__(self, 'layers', _as_layers(self.layers))
    object.__setattr__(self, 'conv_kernel', tuple(self.conv_kernel))
    if self.ensemble not in ENSEMBLES:
      raise ValueError(f'DHEN: ensemble={self.ensemble!r} is not one of {ENSEMBLES}')
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'DHEN: shortcut={self.shortcut!r} is not one of {SHORTCUTS}')
    for name in ('num_embeddings', 'num_heads', 'cross_layers', 'conv_channels',
                 'num_dense_embeddings'):
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f'DHEN: {name} must be a positive int, got {v!r}')
    if len(self.conv_kernel) != 2 or min(self.conv_kernel) < 1:
      raise ValueError(f'DHEN: conv_kernel must be two positive ints, got {self.conv_kernel!r}')
    if self.embedding_dim % self.num_heads:
      raise ValueError(f'DHEN: num_heads={self.num_heads} must divide embedding_dim='
                       f'{self.embedding_dim}')
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    x = embed_with_dense(self.schema, self.embedding_dim, self.num_dense_embeddings,
                         self.dense_mlp_units, self.activation, features, train)  # [B, n, d]
    for i, names in enumerate(self.layers):
      x = DHENLayer(names, self.num_embeddings, self.ensemble, self.shortcut, self.num_heads,
                    self.ffn_units, self.cross_layers, self.conv_channels, self.conv_kernel,
                    self.activation, name=f'layer_{i}')(x, train)
    top = MLP(tuple(self.top_mlp_units), self.activation, self.dropout_rate, self.batch_norm,
              output_dim=1, name='top_mlp')
    return top(x.reshape(x.shape[0], -1), train)[:, 0].astype(jnp.float32)
