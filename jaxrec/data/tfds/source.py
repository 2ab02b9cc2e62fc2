"""Training from a TFDS CTR dataset: a data-source split as a CTRSource or an ArrayDataset.

:class:`TFDSSource` reads rows on demand (``data_source.__getitems__``) and batches exactly like
:meth:`jaxrec.data.dataset.ArrayDataset.batches`: same row order, shuffling, padding and resume
semantics, so a run trains on the same batches from either.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data.dataset import ArrayDataset, Batch, epoch_permutation, num_batches, pad_batch
from jaxrec.data.schema import FeatureSchema, check_ids, check_multi_hot
from jaxrec.data.tfds import rows


def schema_from_info(info: tfds.core.DatasetInfo) -> FeatureSchema:
  """The FeatureSchema a jaxrec CTR builder stored with the dataset."""
  return rows.schema_from_metadata(info.metadata, info.full_name)


def state_from_info(info: tfds.core.DatasetInfo) -> Any:
  """The reader state (vocabularies, statistics) a jaxrec CTR builder stored with the dataset."""
  return rows.state_from_metadata(info.metadata, info.full_name)


class TFDSSource:
  """A CTRSource over a random-access TFDS split (``builder.as_data_source(split=...)``).

  Attributes:
    schema: the feature schema.
    num_rows: rows in the split.
    name: used in error messages.
  """

  def __init__(self, data_source: Sequence[dict[str, np.ndarray]], schema: FeatureSchema,
               name: str = 'tfds'):
    self.data_source = data_source
    self.schema = schema
    self.name = name
    self.layout = rows.RowLayout.of(schema)
    self.num_rows = len(data_source)

  def __len__(self) -> int:
    return self.num_rows

  def read(self, index: Sequence[int] | np.ndarray) -> Batch:
    """Rows ``index`` (in that order) as unpadded batch arrays, ids checked against the schema."""
    index = [int(i) for i in np.asarray(index).reshape(-1)]
    bad = [i for i in index if not 0 <= i < self.num_rows]
    if bad:
      raise IndexError(f'{self.name}: row {bad[0]} is outside [0, {self.num_rows})')
    decoded = self.data_source.__getitems__(index) if index else []
    batch = rows.stack_rows(list(decoded), self.layout)
    where = f'{self.name} rows {index[0]}..' if index else self.name
    check_ids(self.schema, batch['sparse'], where)
    check_multi_hot(self.schema, batch['multi_hot_ids'], batch['multi_hot_lengths'], where)
    return batch

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    """As :meth:`ArrayDataset.batches`: ``ceil(num_rows / batch_size) - start`` padded batches."""
    order = epoch_permutation(self.num_rows, seed, epoch) if shuffle else None
    for b in range(start, num_batches(self.num_rows, batch_size)):
      lo, hi = b * batch_size, min((b + 1) * batch_size, self.num_rows)
      idx = order[lo:hi] if order is not None else np.arange(lo, hi)
      yield pad_batch(self.read(idx), batch_size)

  def to_array_dataset(self, chunk_rows: int = 65536) -> ArrayDataset:
    """All rows in memory (read ``chunk_rows`` at a time)."""
    parts = [self.read(np.arange(lo, min(lo + chunk_rows, self.num_rows)))
             for lo in range(0, self.num_rows, chunk_rows)] or [self.read([])]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in rows.FEATURE_KEYS}
    return ArrayDataset(self.schema, name=self.name, **arrays)


def source_from_builder(builder: tfds.core.DatasetBuilder, split: str) -> TFDSSource:
  """The ``split`` of a prepared jaxrec CTR builder as a :class:`TFDSSource`."""
  schema = schema_from_info(builder.info)
  expected = {k: (shape, np.dtype(dtype)) for k, (shape, dtype) in
              rows.RowLayout.of(schema).shapes().items()}
  stored = {k: (tuple(f.shape), np.dtype(f.np_dtype)) for k, f in builder.info.features.items()}
  if stored != expected:
    raise ValueError(f'{builder.info.full_name}: stored features {stored} do not match the stored '
                     f'schema, which needs {expected}')
  return TFDSSource(builder.as_data_source(split=split), schema,
                    name=f'{builder.info.full_name}[{split}]')
