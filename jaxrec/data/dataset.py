"""In-memory CTR datasets and deterministic, resumable batching.

Every data source in jaxrec (file readers, the synthetic generator) yields batches as dicts of
numpy arrays with the keys documented in :mod:`jaxrec.data.schema`. Batching is a pure function of
``(seed, epoch, start)``: the same arguments give the same batches, which is what makes a killed run
resume on the same trajectory. The last batch of an epoch is padded to full size with rows of
weight 0 (so jit sees one shape and no row is dropped).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Protocol

import numpy as np

from jaxrec.data.schema import FeatureSchema, check_ids, check_multi_hot

Batch = dict[str, np.ndarray]


class CTRSource(Protocol):
  """What the trainer needs from a dataset split."""
  schema: FeatureSchema
  num_rows: int

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    """Yields ``ceil(num_rows / batch_size) - start`` batches, padded to ``batch_size``."""
    ...


def num_batches(num_rows: int, batch_size: int) -> int:
  return -(-num_rows // batch_size)


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of one shuffled epoch; a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_rows)


@dataclasses.dataclass
class ArrayDataset:
  """A CTR split held in memory.

  Attributes:
    schema: the feature schema.
    sparse: ``int32 [rows, schema.num_sparse]``.
    label: ``float32 [rows]``.
    dense: ``float32 [rows, schema.num_dense]``.
    multi_hot_ids: ``int32 [rows, schema.num_multi_hot, schema.max_multi_hot_length]``.
    multi_hot_lengths: ``int32 [rows, schema.num_multi_hot]``.
    multi_hot_weights: ``float32 [rows, schema.num_multi_hot, schema.max_multi_hot_length]``;
      ones when not given.
    name: where the rows came from (used in error messages).
  """
  schema: FeatureSchema
  sparse: np.ndarray
  label: np.ndarray
  dense: Optional[np.ndarray] = None
  multi_hot_ids: Optional[np.ndarray] = None
  multi_hot_lengths: Optional[np.ndarray] = None
  multi_hot_weights: Optional[np.ndarray] = None
  name: str = 'dataset'

  def __post_init__(self):
    s = self.schema
    n = len(self.label)
    self.label = np.asarray(self.label, np.float32).reshape(n)
    self.sparse = np.asarray(self.sparse, np.int32).reshape(n, s.num_sparse)
    if self.dense is None:
      if s.num_dense:
        raise ValueError(f'{self.name}: schema has {s.num_dense} dense features but no dense array')
      self.dense = np.zeros((n, 0), np.float32)
    self.dense = np.asarray(self.dense, np.float32).reshape(n, s.num_dense)
    m, length = s.num_multi_hot, s.max_multi_hot_length
    if m:
      if self.multi_hot_ids is None or self.multi_hot_lengths is None:
        raise ValueError(f'{self.name}: schema has multi-hot fields but no multi_hot arrays')
      self.multi_hot_ids = np.asarray(self.multi_hot_ids, np.int32).reshape(n, m, length)
      self.multi_hot_lengths = np.asarray(self.multi_hot_lengths, np.int32).reshape(n, m)
      if self.multi_hot_weights is None:
        self.multi_hot_weights = np.ones((n, m, length), np.float32)
      self.multi_hot_weights = np.asarray(self.multi_hot_weights, np.float32).reshape(n, m, length)
      check_multi_hot(s, self.multi_hot_ids, self.multi_hot_lengths, self.name)
    else:
      self.multi_hot_ids = np.zeros((n, 0, 0), np.int32)
      self.multi_hot_lengths = np.zeros((n, 0), np.int32)
      self.multi_hot_weights = np.zeros((n, 0, 0), np.float32)
    bad = ~np.isin(self.label, (0.0, 1.0))
    if bad.any():
      raise ValueError(f'{self.name}: row {int(np.argmax(bad))}: label {self.label[bad][0]} is not 0/1')
    check_ids(s, self.sparse, self.name)

  @property
  def num_rows(self) -> int:
    return len(self.label)

  def __len__(self) -> int:
    return self.num_rows

  def arrays(self) -> Batch:
    return {'sparse': self.sparse, 'dense': self.dense, 'label': self.label,
            'multi_hot_ids': self.multi_hot_ids, 'multi_hot_lengths': self.multi_hot_lengths,
            'multi_hot_weights': self.multi_hot_weights}

  def take(self, index: np.ndarray) -> 'ArrayDataset':
    a = self.arrays()
    return ArrayDataset(self.schema, name=self.name, **{k: v[index] for k, v in a.items()})

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    order = epoch_permutation(self.num_rows, seed, epoch) if shuffle else None
    arrays = self.arrays()
    for b in range(start, num_batches(self.num_rows, batch_size)):
      lo, hi = b * batch_size, min((b + 1) * batch_size, self.num_rows)
      idx = order[lo:hi] if order is not None else slice(lo, hi)
      yield pad_batch({k: v[idx] for k, v in arrays.items()}, batch_size)


def pad_array(x: np.ndarray, rows: int) -> np.ndarray:
  """``x [n, ...]`` with zero rows appended up to ``rows`` (``x`` itself when it has them)."""
  extra = rows - len(x)
  return np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)]) if extra > 0 else x


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads every array of ``batch`` to ``batch_size`` rows and adds ``weight`` (0 on padding)."""
  n = len(batch['label'])
  if n > batch_size:
    raise ValueError(f'batch has {n} rows, more than batch_size {batch_size}')
  out = {k: pad_array(v, batch_size) for k, v in batch.items()}
  out['weight'] = (np.arange(batch_size) < n).astype(np.float32)
  return out


def concat_batches(batches: list[Batch]) -> Batch:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
