"""Framework-neutral pieces of the PyTorch converters (no torch needed): an example batch of a
schema, the parameter shapes a jaxrec model expects, and the check of a converted parameter dict
against them. Shared by :mod:`jaxrec.compat.torchrec` and :mod:`jaxrec.compat.plain_torch`."""

from __future__ import annotations

import functools
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxrec.data.schema import FeatureSchema


def example_batch(schema: FeatureSchema, rows: int = 1) -> dict[str, np.ndarray]:
  """An all-zeros batch of ``schema`` (for ``init`` / ``eval_shape``)."""
  m, length = schema.num_multi_hot, schema.max_multi_hot_length
  return {'sparse': np.zeros((rows, schema.num_sparse), np.int32),
          'dense': np.zeros((rows, schema.num_dense), np.float32),
          'multi_hot_ids': np.zeros((rows, m, length), np.int32),
          'multi_hot_lengths': np.zeros((rows, m), np.int32),
          'multi_hot_weights': np.ones((rows, m, length), np.float32)}


def expected_shapes(jax_model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
  """``{param path: shape}`` of ``jax_model``'s parameters (abstract init, no compute)."""
  shapes = jax.eval_shape(functools.partial(jax_model.init, train=False), jax.random.key(0),
                          example_batch(jax_model.schema))
  flat = traverse_util.flatten_dict(nn.unbox(shapes)['params'])
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_shapes(flat: Mapping, expected: Mapping, name: str) -> None:
  """Raises ValueError naming the missing, unexpected or misshapen parameter of ``flat``."""
  missing = sorted('/'.join(k) for k in set(expected) - set(flat))
  extra = sorted('/'.join(k) for k in set(flat) - set(expected))
  if missing or extra:
    raise ValueError(f'{name}: parameters missing {missing}, unexpected {extra}')
  for k, shape in expected.items():
    if tuple(flat[k].shape) != shape:
      raise ValueError(f'{name}: parameter {"/".join(k)} has shape {tuple(flat[k].shape)}, the '
                       f'jaxrec model expects {shape}')
