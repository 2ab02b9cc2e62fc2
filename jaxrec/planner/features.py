"""Table features as NeuroShard has them: rows, dim, mean pooling factor, access histogram.

A table's cost to look up depends on more than its size: how many ids a sample reads (the
*pooling factor* ``L``, ids per sample) and how skewed its accesses are. NeuroShard (Zha et al.,
MLSys 2023) describes the skew by a 17-bin power-of-two histogram of id access counts in one
batch: bin ``i`` holds the share of the batch's *unique* ids whose count falls in
``(2^(i-1), 2^i]`` (bin 0: ids read once; bin 16: more than 32768 times). The shares sum to 1.

Example: ids ``[5, 5, 5, 7, 9, 9]`` in a batch of 2 samples: counts 3, 1, 2 over 3 unique ids, so
``hist[0] = hist[1] = hist[2] = 1/3`` (counts 1, 2 and 3 in ``(2, 4]``), ``pooling = 6 / 2 = 3``.

Features come from a sample of ids (``from_ids``: one batch of any dataset's ids for the table,
flattened) or from statistics (``from_stats``). ``FEATURE_LAYOUT`` names the columns of
``vector()``, the cost model's input; a saved cost model records it and refuses another layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from jaxrec.embeddings.config import EmbeddingBagConfig

NUM_BINS = 17
# Upper edges of bins 0..15 (bin 16 is everything above 2^15).
BIN_EDGES = tuple(2 ** i for i in range(NUM_BINS - 1))
FEATURE_LAYOUT = ('rows', 'dim', 'pooling') + tuple(f'bin_{i}' for i in range(NUM_BINS))
BYTES_PER_VALUE = 4  # float32 tables
HIST_TOLERANCE = 1e-6


def count_bins(counts) -> np.ndarray:
  """``int [n]`` bin of each access count ``>= 1``: ``i`` with ``2^(i-1) < count <= 2^i``."""
  counts = np.asarray(counts)
  if counts.size and counts.min() < 1:
    raise ValueError(f'access counts must be >= 1, got {counts.min()}')
  return np.searchsorted(np.asarray(BIN_EDGES), counts, side='left')


def histogram_of_counts(counts) -> np.ndarray:
  """``float64 [17]``: the share of unique ids per bin, from each unique id's access count."""
  counts = np.asarray(counts)
  if counts.size == 0:
    return np.zeros(NUM_BINS)
  return np.bincount(count_bins(counts), minlength=NUM_BINS) / counts.size


@dataclasses.dataclass(frozen=True)
class TableFeatures:
  """One table (or shard) as the cost model sees it.

  Attributes:
    name: the table's name (its feature, in a jaxrec plan, is named after it).
    rows: rows of the table (``num_embeddings``).
    dim: columns (``embedding_dim``).
    pooling: mean ids per sample (``L``).
    hist: 17 shares of unique ids per access-count bin (module docstring); sums to 1 (or all 0
      for a table never read).
  """
  name: str
  rows: int
  dim: int
  pooling: float
  hist: tuple[float, ...]

  def __post_init__(self):
    for attr in ('rows', 'dim'):
      v = getattr(self, attr)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f'table {self.name!r}: {attr} must be a positive int, got {v!r}')
      object.__setattr__(self, attr, int(v))
    if not np.isfinite(self.pooling) or self.pooling < 0:
      raise ValueError(f'table {self.name!r}: pooling must be a finite number >= 0, got '
                       f'{self.pooling!r}')
    object.__setattr__(self, 'pooling', float(self.pooling))
    hist = np.asarray(self.hist, np.float64)
    if hist.shape != (NUM_BINS,):
      raise ValueError(f'table {self.name!r}: hist needs {NUM_BINS} bins, got shape {hist.shape}')
    total = hist.sum()
    if (hist < 0).any() or not (abs(total - 1) < 1e-3 or total == 0):
      raise ValueError(f'table {self.name!r}: hist must be >= 0 and sum to 1 (or be all 0), '
                       f'sums to {total:.6f}')
    object.__setattr__(self, 'hist', tuple(float(x) for x in hist))

  @property
  def num_bytes(self) -> int:
    return BYTES_PER_VALUE * self.rows * self.dim

  def vector(self) -> np.ndarray:
    """``float32 [len(FEATURE_LAYOUT)]`` in ``FEATURE_LAYOUT`` order."""
    return np.array((self.rows, self.dim, self.pooling) + self.hist, np.float32)

  def config(self) -> EmbeddingBagConfig:
    """The jaxrec table: one feature named after it, sum pooling."""
    return EmbeddingBagConfig(self.name, self.rows, self.dim, (self.name,))

  def with_dim(self, dim: int) -> 'TableFeatures':
    return dataclasses.replace(self, dim=dim)

  def row_shard(self, rows: int, num_shards: int) -> 'TableFeatures':
    """A row block of ``rows`` rows out of ``num_shards``: it reads ``pooling / num_shards`` ids
    per sample (ids assumed spread evenly over the blocks) with the table's histogram."""
    return dataclasses.replace(self, rows=max(1, rows), pooling=self.pooling / num_shards)


def from_ids(name: str, ids, num_samples: int, rows: int, dim: int) -> TableFeatures:
  """Features from one batch of a table's ids.

  Args:
    name: the table.
    ids: every id the batch reads from the table (any shape; padding removed; ids outside
      ``[0, rows)`` are counted as read, as a lookup would count them).
    num_samples: samples in the batch (the pooling factor is ``ids.size / num_samples``).
    rows, dim: the table's shape.
  """
  ids = np.asarray(ids).reshape(-1)
  if num_samples < 1:
    raise ValueError(f'table {name!r}: num_samples must be >= 1, got {num_samples}')
  _, counts = np.unique(ids, return_counts=True)
  return TableFeatures(name, rows, dim, ids.size / num_samples, tuple(histogram_of_counts(counts)))


def from_stats(name: str, rows: int, dim: int, pooling: float,
               hist: Optional[Sequence[float]] = None) -> TableFeatures:
  """Features from statistics; ``hist=None`` assumes uniform access (documented fallback).

  With uniform access and no histogram given, the counts of a batch of ``B`` samples are
  Poisson(``B L / rows``) per row; the histogram is that distribution's, for a batch of 4096.
  """
  if hist is None:
    hist = uniform_access_hist(rows, pooling, batch_size=4096)
  return TableFeatures(name, rows, dim, pooling, tuple(hist))


def uniform_access_hist(rows: int, pooling: float, batch_size: int) -> np.ndarray:
  """The expected histogram when each of ``batch_size * pooling`` ids is uniform over ``rows``:
  counts per row are Poisson(``lam = batch_size * pooling / rows``); shares among rows read."""
  lam = batch_size * pooling / rows
  if lam <= 0:
    return np.zeros(NUM_BINS)
  k_max = int(max(60, lam + 12 * np.sqrt(lam) + 10))
  k = np.arange(1, k_max + 1)
  # log pmf of Poisson(lam) at k, stable for large lam.
  log_pmf = k * np.log(lam) - lam - np.array([math.lgamma(x + 1) for x in k])
  pmf = np.exp(log_pmf)
  hist = np.bincount(count_bins(k), weights=pmf, minlength=NUM_BINS)
  return hist / hist.sum()


def uniform_features(tables: Sequence[EmbeddingBagConfig], pooling: float = 1.0,
                     batch_size: int = 4096) -> list[TableFeatures]:
  """Features of jaxrec tables from their shapes alone: ``pooling`` ids per sample per feature
  (times the table's features) and uniform access (``uniform_access_hist``)."""
  out = []
  for t in tables:
    l = pooling * len(t.feature_names)
    out.append(TableFeatures(t.name, t.num_embeddings, t.embedding_dim, l,
                             tuple(uniform_access_hist(t.num_embeddings, l, batch_size))))
  return out
