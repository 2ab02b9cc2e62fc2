"""Process-local data: each process reads its rows of every global batch; global arrays from them.

Global batch ``b`` (of ``batch_size`` rows, padded as every jaxrec batch) is split into
``process_count`` contiguous blocks; process ``p`` reads block ``p`` only. With the mesh in
host-major order (``jaxrec.sharding.mesh``) that block is exactly the rows its devices hold, and
``jax.make_array_from_process_local_data`` assembles the global batch without any process seeing
the others' rows. An ``ArrayDataset`` gathers only the local rows (its epoch order is a pure
function of the seed, so every process agrees on it); any other source produces the global batch
and the block is sliced out of it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxrec.data.dataset import ArrayDataset, Batch, CTRSource, epoch_permutation, num_batches
from jaxrec.data.dataset import pad_array, pad_batch


class ProcessLocalSource:
  """A CTRSource whose batches are this process's block of each global batch.

  Attributes:
    source: the global source.
    schema: its schema.
    num_rows: rows of the global source.
    process_index, process_count: this process and how many there are.

  ``batches(batch_size, ...)`` takes the *global* batch size (a multiple of ``process_count``)
  and yields batches of ``batch_size // process_count`` rows.
  """

  def __init__(self, source: CTRSource, process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    self.source = source
    self.schema = source.schema
    self.num_rows = source.num_rows
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f'process_index {self.process_index} is outside [0, {self.process_count})')

  def local_size(self, batch_size: int) -> int:
    if batch_size % self.process_count:
      raise ValueError(f'batch size {batch_size} does not split over {self.process_count} '
                       'processes; make it a multiple of the process count')
    return batch_size // self.process_count

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    local = self.local_size(batch_size)
    if self.process_count == 1:
      yield from self.source.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                     start=start)
      return
    lo = self.process_index * local
    if isinstance(self.source, ArrayDataset):
      yield from self._array_batches(batch_size, lo, local, shuffle, seed, epoch, start)
      return
    for batch in self.source.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                     start=start):
      yield {k: v[lo:lo + local] for k, v in batch.items()}

  def _array_batches(self, batch_size, lo, local, shuffle, seed, epoch, start):
    """Only this process's rows of an in-memory dataset (same rows as slicing the global batch)."""
    ds = self.source
    n = ds.num_rows
    order = epoch_permutation(n, seed, epoch) if shuffle else None
    arrays = ds.arrays()
    for b in range(start, num_batches(n, batch_size)):
      first = min(b * batch_size + lo, n)
      last = min(b * batch_size + lo + local, n, (b + 1) * batch_size)
      idx = order[first:last] if order is not None else slice(first, last)
      yield pad_batch({k: v[idx] for k, v in arrays.items()}, local)


def global_batch(local_batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """The global batch from every process's local block (rows split over the batch axes)."""
  count = jax.process_count()
  return {k: jax.make_array_from_process_local_data(sharding, v,
                                                     (v.shape[0] * count,) + v.shape[1:])
          for k, v in local_batch.items()}


def pad_rows(batch: Batch, multiple: int) -> tuple[Batch, int]:
  """Pads every array to a multiple of ``multiple`` rows (weight 0); returns it and the old size."""
  n = len(batch['label'])
  target = -(-n // multiple) * multiple
  if target == n:
    return batch, n
  return {k: pad_array(v, target) for k, v in batch.items()}, n


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array sharded by rows (in global row order)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {}
  for s in x.addressable_shards:
    start = s.index[0].start or 0
    shards.setdefault(start, s.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def eval_local_rows(eval_fn: Callable[[Any], jax.Array], to_global: Callable[[Batch], Any],
                    local_batch: Batch, batch_divisor: int,
                    check: Optional[Callable[[Batch], None]] = None) -> np.ndarray:
  """Logits ``[rows]`` of this process's ``local_batch`` through ``eval_fn`` on the global batch.

  The local rows are padded (weight 0) to a multiple of this process's share of ``batch_divisor``
  so the global batch splits evenly over the devices; ``check`` (e.g. an id range check) sees the
  padded local batch; the padding is cut from the result.
  """
  batch, n = pad_rows(local_batch, max(batch_divisor // jax.process_count(), 1))
  if check is not None:
    check(batch)
  return local_rows(eval_fn(to_global(batch)))[:n]


def gather_rows(*arrays: np.ndarray) -> tuple[Any, ...]:
  """Every process's rows concatenated in process order (the identity on one process)."""
  if jax.process_count() == 1:
    return arrays
  return tuple(np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in arrays)
