"""Wukong (Zhang et al., 2024, arXiv 2403.02545): stacked factorization machines.

* Embedding layer: every categorical field -> one ``d``-dim embedding ``[B, F, d]``; the dense
  features (if any) -> ``num_dense_embeddings`` more embeddings through the shared ``MLP``
  (``dense_mlp_units`` hidden, linear output ``num_dense_embeddings * d``), appended after the
  fields. ``X0: [B, n, d]`` with ``n = F (+ num_dense_embeddings)``.
* Interaction stack: ``num_layers`` (``l``) ``WukongLayer`` s, each
  ``X_{i+1} = LN(concat(FMB(X_i), LCB(X_i)) + residual(X_i))`` with ``nF`` FMB and ``nL`` LCB
  embeddings (``jaxrec/layers/wukong.py``; the choices the paper leaves open are listed there).
  Every layer has the same hyperparameters, so only the first changes the embedding count
  (``n -> nF + nL``) and needs a projection residual.
* Top MLP on the flattened ``[B, (nF + nL) d]`` output -> logit (``top_mlp_units`` hidden, with
  optional BatchNorm and dropout as the baselines' DNNs, then a 1-wide output layer).

``upscale`` grows a Wukong configuration "synergistically" (the paper grows ``l``, ``nF``, ``nL``,
``k`` and the MLP widths together; its exact schedule is not published): every width
hyperparameter is multiplied by ``factor`` and the depth by ``depth_factor``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.layers.mlp import MLP, Activation
from jaxrec.layers.wukong import FM_PROJECTIONS, WukongLayer
from jaxrec.models.lr import Features, dense_features


def embed_with_dense(schema: FeatureSchema, dim: int, num_dense_embeddings: int,
                     dense_mlp_units: Sequence[int], activation: Activation,
                     features: Features, train: bool) -> jax.Array:
  """``X0: [B, n, d]``: the field embeddings, then the dense features projected to embeddings.

  Must be called inside a compact method (it creates ``embedding`` and ``dense_mlp``).
  """
  emb = FieldEmbedding(schema, dim, name='embedding')(features)  # [B, F, d]
  dense = dense_features(schema, features)
  if dense is None:
    return emb
  mlp = MLP(tuple(dense_mlp_units), activation, output_dim=num_dense_embeddings * dim,
            name='dense_mlp')
  dense_emb = mlp(dense, train).astype(emb.dtype).reshape(-1, num_dense_embeddings, dim)
  return jnp.concatenate([emb, dense_emb], axis=1)  # [B, F + num_dense_embeddings, d]


class Wukong(nn.Module):
  """Wukong: an interaction stack of FMB + LCB layers and a top MLP.

  Attributes:
    schema: the feature schema.
    embedding_dim: ``d``.
    num_layers: ``l``, interaction layers (0: the top MLP reads ``X0``).
    num_fm_embeddings: ``nF``, FMB output embeddings per layer.
    num_lcb_embeddings: ``nL``, LCB output embeddings per layer.
    fm_rank: ``k`` of the optimized FM.
    fm_projection: ``'learned'`` or ``'projected'`` (see ``jaxrec/layers/wukong.py``).
    fmb_mlp_units: hidden sizes of each FMB's MLP.
    fmb_dropout_rate: dropout in the FMB MLPs.
    top_mlp_units: hidden sizes of the top MLP.
    dropout_rate: dropout in the top MLP.
    batch_norm: BatchNorm in the top MLP.
    num_dense_embeddings: embeddings the dense features become (unused without dense features).
    dense_mlp_units: hidden sizes of the dense projection MLP.
    activation: activation of every MLP.
    layer_norm: each layer's LayerNorm extent, ``'embedding'`` (per embedding over ``d``) or
      ``'layer'`` (the flattened layer output); see ``jaxrec/layers/wukong.py``.

  Call:
    features: the batch dict; train: training mode.

  Returns:
    logits ``float32 [batch]``.

  Example::

    model = Wukong(schema=schema, embedding_dim=16, num_layers=2, num_fm_embeddings=8,
                   num_lcb_embeddings=8, fm_rank=8, fmb_mlp_units=(128,), top_mlp_units=(128,))
  """
  schema: FeatureSchema
  embedding_dim: int = 10
  num_layers: int = 2
  num_fm_embeddings: int = 8
  num_lcb_embeddings: int = 8
  fm_rank: int = 8
  fm_projection: str = 'learned'
  fmb_mlp_units: Sequence[int] = (64, 64)
  fmb_dropout_rate: float = 0.0
  top_mlp_units: Sequence[int] = (64, 64, 64)
  dropout_rate: float = 0.0
  batch_norm: bool = False
  num_dense_embeddings: int = 1
  dense_mlp_units: Sequence[int] = ()
  activation: Activation = 'relu'
  layer_norm: str = 'embedding'

  def __post_init__(self):
    for name in ('num_layers', 'num_fm_embeddings', 'num_lcb_embeddings'):
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError(f'Wukong: {name} must be an int >= 0, got {v!r}')
    for name in ('fm_rank', 'num_dense_embeddings'):
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f'Wukong: {name} must be a positive int, got {v!r}')
    if self.num_layers and self.num_fm_embeddings + self.num_lcb_embeddings < 1:
      raise ValueError('Wukong: num_fm_embeddings + num_lcb_embeddings must be >= 1')
    if self.fm_projection not in FM_PROJECTIONS:
      raise ValueError(f'Wukong: fm_projection={self.fm_projection!r} is not one of '
                       f'{FM_PROJECTIONS}')
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Features, train: bool) -> jax.Array:
    x = embed_with_dense(self.schema, self.embedding_dim, self.num_dense_embeddings,
                         self.dense_mlp_units, self.activation, features, train)  # [B, n, d]
    for i in range(self.num_layers):
      x = WukongLayer(self.num_fm_embeddings, self.num_lcb_embeddings, self.fm_rank,
                      tuple(self.fmb_mlp_units), self.fm_projection, self.activation,
                      self.fmb_dropout_rate, self.layer_norm,
                      name=f'layer_{i}')(x, train)  # [B, nF + nL, d]
    top = MLP(tuple(self.top_mlp_units), self.activation, self.dropout_rate, self.batch_norm,
              output_dim=1, name='top_mlp')
    return top(x.reshape(x.shape[0], -1), train)[:, 0].astype(jnp.float32)


# The width hyperparameters ``upscale`` multiplies (ints and tuples of ints).
WIDTH_FIELDS = ('num_fm_embeddings', 'num_lcb_embeddings', 'fm_rank', 'fmb_mlp_units',
                'top_mlp_units')

ConfigOrModule = Union[Wukong, Mapping[str, Any], ml_collections.ConfigDict]


def _scale(value, factor: float):
  if isinstance(value, (tuple, list)):
    return tuple(max(1, round(v * factor)) for v in value)
  return max(1, round(value * factor))


def upscaled_kwargs(kwargs: Mapping[str, Any], factor: float,
                    depth_factor: float = 1.0) -> dict[str, Any]:
  """Wukong keyword arguments with widths x ``factor`` and ``num_layers`` x ``depth_factor``.

  Missing fields take the ``Wukong`` defaults; results are rounded (at least 1).
  """
  if not factor > 0 or not depth_factor > 0:
    raise ValueError(f'upscale: factor and depth_factor must be > 0, got {factor}, {depth_factor}')
  defaults = {f: getattr(Wukong, f) for f in WIDTH_FIELDS + ('num_layers',)}
  out = dict(kwargs)
  for f in WIDTH_FIELDS:
    out[f] = _scale(out.get(f, defaults[f]), factor)
  out['num_layers'] = _scale(out.get('num_layers', defaults['num_layers']), depth_factor)
  return out


def upscale(config_or_module: ConfigOrModule, factor: float,
            depth_factor: float = 1.0) -> ConfigOrModule:
  """Grows a Wukong configuration: ``nF``, ``nL``, ``k`` and every MLP width x ``factor``,
  ``l`` x ``depth_factor`` (rounded, at least 1).

  Args:
    config_or_module: a ``Wukong`` module (a clone is returned), a mapping of Wukong keyword
      arguments (a new dict is returned) or a training ``ConfigDict`` with ``model == 'wukong'``
      (a copy with its ``model_kwargs`` upscaled is returned).
    factor: width multiplier (> 0; < 1 shrinks).
    depth_factor: layer-count multiplier (> 0).

  Raises:
    ValueError: a training config of another model, or a non-positive factor.
  """
  if isinstance(config_or_module, Wukong):
    kwargs = {f: getattr(config_or_module, f) for f in WIDTH_FIELDS + ('num_layers',)}
    return config_or_module.clone(**upscaled_kwargs(kwargs, factor, depth_factor))
  if isinstance(config_or_module, ml_collections.ConfigDict) and 'model_kwargs' in config_or_module:
    if config_or_module.get('model') != 'wukong':
      raise ValueError(f"upscale: config.model is {config_or_module.get('model')!r}, not 'wukong'")
    config = copy.deepcopy(config_or_module)
    config.model_kwargs = ml_collections.ConfigDict(
        upscaled_kwargs(config.model_kwargs.to_dict(), factor, depth_factor))
    return config
  if isinstance(config_or_module, Mapping):
    return upscaled_kwargs(config_or_module, factor, depth_factor)
  raise TypeError(f'upscale: expected a Wukong module, a kwargs mapping or a training ConfigDict, '
                  f'got {type(config_or_module).__name__}')
