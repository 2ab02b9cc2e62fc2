"""Zero padding of dimensions that do not divide their mesh axes (``indivisible='pad'``).

A stored array whose dimension of size ``s`` is sharded over mesh axes of ``n`` devices with
``s % n != 0`` is kept as ``ceil(s / n) * n`` along that dimension, the extra entries zero. The
model never sees them: the gather (``jaxrec.sharding.fsdp``) slices every padded parameter back to
its logical shape after the all-gather, so the forward pass is the unpadded model's, and the
slice's transpose gives the padding a gradient of exactly zero. With zero gradients Adam's slots
stay zero, its update is zero and the padding stays zero (the L2 regularizers add ``lam * 0``),
so a padded run follows the unpadded trajectory (``tests/sharding/test_padding.py``).

Example (a 429-wide cross layer on 8 devices)::

  padded_shape((429, 429), (('fsdp',), ()), mesh)   # (432, 429)
  pad_to(np.ones((429, 429)), (432, 429))           # 3 zero rows appended
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

PyTree = Any


def padded_size(size: int, multiple: int) -> int:
  """``size`` rounded up to a multiple of ``multiple``."""
  return -(-size // multiple) * multiple


def padded_shape(shape: Sequence[int], dims: Sequence[Sequence[str]], mesh: Mesh
                 ) -> tuple[int, ...]:
  """``shape`` with each dimension rounded up to a multiple of its mesh axes' device count."""
  return tuple(padded_size(s, math.prod(mesh.shape[a] for a in axes))
               for s, axes in zip(shape, dims))


def pad_to(x, shape: Sequence[int]):
  """``x`` zero-padded at the end of each dimension to ``shape`` (numpy stays numpy)."""
  shape = tuple(shape)
  if tuple(np.shape(x)) == shape:
    return x
  widths = [(0, t - s) for s, t in zip(np.shape(x), shape)]
  if any(w < 0 for _, w in widths):
    raise ValueError(f'cannot pad shape {np.shape(x)} to the smaller {shape}')
  return np.pad(x, widths) if isinstance(x, np.ndarray) else jnp.pad(x, widths)


def unpad_to(x, shape: Sequence[int]):
  """``x`` sliced to its leading ``shape`` (the inverse of ``pad_to``)."""
  shape = tuple(shape)
  if tuple(np.shape(x)) == shape:
    return x
  return x[tuple(slice(0, s) for s in shape)]


def pad_tree(tree: PyTree, target: PyTree) -> PyTree:
  """Every leaf of ``tree`` zero-padded to the shape of the matching leaf of ``target``."""
  return jax.tree.map(lambda x, t: pad_to(x, t.shape), tree, target)


def unpad_tree(tree: PyTree, target: PyTree) -> PyTree:
  """Every leaf of ``tree`` sliced to the shape of the matching leaf of ``target``."""
  return jax.tree.map(lambda x, t: unpad_to(x, t.shape), tree, target)


class PaddedPartitioned(nn.Partitioned):
  """An ``nn.Partitioned`` box of a padded parameter that also knows the logical sizes.

  ``sizes`` has one entry per dimension (None: not padded); flax's scan removes a scanned
  dimension's entry together with its name, so a box seen inside a scanned layer stack still
  slices the right dimensions.
  """
  sizes: tuple[Optional[int], ...] = struct.field(pytree_node=False, default=())

  def add_axis(self, index: int, params: dict) -> 'PaddedPartitioned':
    sizes = list(self.sizes)
    sizes.insert(index, None)
    return super().add_axis(index, params).replace(sizes=tuple(sizes))

  def remove_axis(self, index: int, params: dict) -> 'PaddedPartitioned':
    sizes = list(self.sizes)
    sizes.pop(index)
    return super().remove_axis(index, params).replace(sizes=tuple(sizes))


def unpad_gathered(value: jax.Array, box: nn.meta.AxisMetadata) -> jax.Array:
  """A gathered parameter sliced to its logical shape (unchanged unless ``box`` is padded)."""
  if not isinstance(box, PaddedPartitioned):
    return value
  return value[tuple(slice(0, s) for s in box.sizes)]
