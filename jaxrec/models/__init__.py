"""Whole models: CTR models map a batch dict to logits ``float32 [batch]``, image classifiers
(``cnn``, ``resnet``; ``jaxrec.models.vision``) to logits ``float32 [batch, classes]``, the
mixed-modal decoder LM (``decoder_lm``, dense or Mixture-of-Transformers;
``jaxrec.models.mixed_modal_lm``) to next-token logits ``float32 [batch, length, vocab]``.

Every model is a ``flax.linen`` Module built as ``Model(schema=schema, <hyperparameters>)`` (CTR
models take ``embedding_dim``; image models an ``ImageSchema``) and applied as::

  logits, updates = model.apply(variables, features, train, rngs={'dropout': key},
                                mutable=['batch_stats'])

``MODELS`` names them for configs; ``build_model`` builds one by name and rejects unknown names
and unknown hyperparameters with a ValueError that lists the valid ones.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from jaxrec.data.schema import FeatureSchema, ImageSchema, SequenceSchema
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.deepfm import DeepFM
from jaxrec.models.dhen import DHEN
from jaxrec.models.dlrm import DLRM
from jaxrec.models.fm import FM
from jaxrec.models.lr import LR
from jaxrec.models.mixed_modal_lm import DecoderLM
from jaxrec.models.vision import CNN, ResNet
from jaxrec.models.wukong import Wukong

MODELS: dict[str, type[nn.Module]] = {'lr': LR, 'fm': FM, 'deepfm': DeepFM, 'dlrm': DLRM,
                                      'dcnv2': DCNv2, 'wukong': Wukong, 'dhen': DHEN,
                                      'cnn': CNN, 'resnet': ResNet, 'decoder_lm': DecoderLM}
# The schema each non-CTR model takes (CTR models take a FeatureSchema).
SCHEMA_TYPES: dict[type[nn.Module], type] = {CNN: ImageSchema, ResNet: ImageSchema,
                                             DecoderLM: SequenceSchema}


def model_hyperparameters(cls: type[nn.Module]) -> tuple[str, ...]:
  """The keyword arguments a model accepts besides ``schema`` (e.g. ``embedding_dim``)."""
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in ('schema', 'parent', 'name'))


def build_model(name: str, schema: FeatureSchema, **kwargs) -> nn.Module:
  """Builds ``MODELS[name](schema=schema, **kwargs)``.

  List values (e.g. ``hidden_units=[400, 400]`` from a config) become tuples, so the module stays
  hashable (usable as a static argument of ``jax.jit``).

  Raises:
    ValueError: unknown model name, or a keyword the model does not take (the message lists the
      valid ones), or a bad hyperparameter value.
  """
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid models: {sorted(MODELS)}')
  cls = MODELS[name]
  valid = model_hyperparameters(cls)
  bad = sorted(k for k in kwargs if k not in valid)
  if bad:
    raise ValueError(f'model {name!r}: unknown hyperparameter(s) {bad}; valid: {list(valid)}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  wanted = SCHEMA_TYPES.get(cls, FeatureSchema)
  if not isinstance(schema, wanted):
    kind = {ImageSchema: 'an image', SequenceSchema: 'a token-sequence'}.get(wanted, 'a CTR')
    raise ValueError(f'model {name!r} is {kind} model (it takes a {wanted.__name__}); the data '
                     f'has a {type(schema).__name__}')
  dim = kwargs.get('embedding_dim', 1)
  if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
    raise ValueError(f'model {name!r}: embedding_dim must be a positive int, got {dim!r}')
  return cls(schema=schema, **kwargs)
