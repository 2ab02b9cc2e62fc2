"""How a CTR row is stored in a TFDS dataset, and how schema and state travel as metadata.

One TFDS example per row, every feature a fixed-shape tensor:

  * ``sparse``: ``int32 [num_sparse]``;
  * ``dense``: ``float32 [num_dense]``;
  * ``label``: ``float32 []``;
  * ``multi_hot_ids`` / ``multi_hot_weights``: ``int32`` / ``float32 [num_multi_hot, max_length]``;
  * ``multi_hot_lengths``: ``int32 [num_multi_hot]``.

A feature whose tensor would hold no values (``dense`` of a dataset without dense features, the
``multi_hot_*`` ones of a dataset without multi-hot fields) is left out of the FeaturesDict:
decoding it costs as much per row as a real one. Readers rebuild it as a zero-width array from
the schema.

The :class:`~jaxrec.data.schema.FeatureSchema` and the reader's ``state`` (vocabularies, dense
statistics: whatever the reader returned) are stored in the builder's ``metadata.json`` through
a small tagged-JSON codec that round-trips numpy arrays, tuples and dicts with non-string keys
exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.schema import FeatureSchema

FEATURE_KEYS = ('sparse', 'dense', 'label', 'multi_hot_ids', 'multi_hot_lengths',
                'multi_hot_weights')
SCHEMA_KEY = 'jaxrec_schema'
STATE_KEY = 'jaxrec_state'
FORMAT_KEY = 'jaxrec_row_format'
MAX_ROWS_KEY = 'jaxrec_max_rows'
ROW_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """The tensor shapes of one stored row (everything but the vocabulary sizes).

  Attributes:
    num_sparse: one-hot fields, the length of ``sparse``.
    num_dense: dense features, the length of ``dense``.
    num_multi_hot: multi-hot fields.
    max_multi_hot_length: padded bag length (0 when there are no multi-hot fields).
  """
  num_sparse: int
  num_dense: int = 0
  num_multi_hot: int = 0
  max_multi_hot_length: int = 0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if getattr(self, f.name) < 0:
        raise ValueError(f'RowLayout.{f.name} must be >= 0, got {getattr(self, f.name)}')
    if (self.num_multi_hot == 0) != (self.max_multi_hot_length == 0):
      raise ValueError(f'RowLayout: num_multi_hot={self.num_multi_hot} and max_multi_hot_length='
                       f'{self.max_multi_hot_length} must both be 0 or both be positive')

  @classmethod
  def of(cls, schema: FeatureSchema) -> 'RowLayout':
    return cls(schema.num_sparse, schema.num_dense, schema.num_multi_hot,
               schema.max_multi_hot_length)

  def shapes(self) -> dict[str, tuple[tuple[int, ...], type]]:
    """``{feature: (shape, dtype)}`` of the stored features (empty ones left out)."""
    m, length = self.num_multi_hot, self.max_multi_hot_length
    out = {'label': ((), np.float32)}
    if self.num_sparse:
      out['sparse'] = ((self.num_sparse,), np.int32)
    if self.num_dense:
      out['dense'] = ((self.num_dense,), np.float32)
    if m:
      out['multi_hot_ids'] = ((m, length), np.int32)
      out['multi_hot_lengths'] = ((m,), np.int32)
      out['multi_hot_weights'] = ((m, length), np.float32)
    return out

  def features(self) -> tfds.features.FeaturesDict:
    """The TFDS FeaturesDict of a stored row."""
    return tfds.features.FeaturesDict({
        k: tfds.features.Tensor(shape=shape, dtype=dtype)
        for k, (shape, dtype) in self.shapes().items()
    })


def examples(ds: ArrayDataset, layout: RowLayout,
             max_rows: Optional[int] = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Yields ``(row_index, example)`` for the first ``max_rows`` rows of ``ds`` (all if None)."""
  if RowLayout.of(ds.schema) != layout:
    raise ValueError(f'{ds.name}: its schema has layout {RowLayout.of(ds.schema)}, but the builder '
                     f'declares {layout}')
  arrays = ds.arrays()
  keys = tuple(layout.shapes())
  n = ds.num_rows if max_rows is None else min(max_rows, ds.num_rows)
  for i in range(n):
    yield i, {k: arrays[k][i] for k in keys}


def stack_rows(rows: list[dict[str, np.ndarray]], layout: RowLayout) -> dict[str, np.ndarray]:
  """Stacks decoded rows into batch arrays with all six keys of an ArrayDataset batch."""
  n = len(rows)
  m, length = layout.num_multi_hot, layout.max_multi_hot_length
  out = {
      'sparse': np.zeros((n, layout.num_sparse), np.int32),
      'dense': np.zeros((n, layout.num_dense), np.float32),
      'multi_hot_ids': np.zeros((n, m, length), np.int32),
      'multi_hot_lengths': np.zeros((n, m), np.int32),
      'multi_hot_weights': np.zeros((n, m, length), np.float32),
  }
  for k, (shape, dtype) in layout.shapes().items():
    out[k] = np.asarray([r[k] for r in rows], dtype).reshape((n,) + shape)
  return {k: out[k] for k in FEATURE_KEYS}


def encode_json(obj: Any, where: str = 'state') -> Any:
  """Turns ``obj`` into JSON data that :func:`decode_json` turns back into an equal object.

  Handles None, bool, int, float, str, lists, tuples, dicts (any hashable keys of these kinds),
  numpy scalars and numpy arrays of numeric or bool dtype. Anything else raises TypeError naming
  ``where`` (the path inside the object), rather than being stored as something else.
  """
  if obj is None or isinstance(obj, (bool, str)):
    return obj
  if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
    return obj
  if isinstance(obj, np.generic):
    return {'__np_scalar__': obj.item(), 'dtype': obj.dtype.str}
  if isinstance(obj, np.ndarray):
    if obj.dtype.kind not in 'biuf':
      raise TypeError(f'{where}: numpy array of dtype {obj.dtype} cannot be stored as metadata')
    return {'__ndarray__': obj.ravel().tolist(), 'dtype': obj.dtype.str, 'shape': list(obj.shape)}
  if isinstance(obj, list):
    return [encode_json(v, f'{where}[{i}]') for i, v in enumerate(obj)]
  if isinstance(obj, tuple):
    return {'__tuple__': [encode_json(v, f'{where}[{i}]') for i, v in enumerate(obj)]}
  if isinstance(obj, dict):
    if all(isinstance(k, str) and not k.startswith('__') for k in obj):
      return {k: encode_json(v, f'{where}[{k!r}]') for k, v in obj.items()}
    return {'__items__': [[encode_json(k, f'{where} key {k!r}'), encode_json(v, f'{where}[{k!r}]')]
                          for k, v in obj.items()]}
  raise TypeError(f'{where}: a {type(obj).__name__} cannot be stored as metadata')


def decode_json(data: Any) -> Any:
  """Inverse of :func:`encode_json`."""
  if isinstance(data, list):
    return [decode_json(v) for v in data]
  if not isinstance(data, dict):
    return data
  if '__ndarray__' in data:
    return np.asarray(data['__ndarray__'], np.dtype(data['dtype'])).reshape(data['shape'])
  if '__np_scalar__' in data:
    return np.dtype(data['dtype']).type(data['__np_scalar__'])
  if '__tuple__' in data:
    return tuple(decode_json(v) for v in data['__tuple__'])
  if '__items__' in data:
    return {_hashable(decode_json(k)): decode_json(v) for k, v in data['__items__']}
  return {k: decode_json(v) for k, v in data.items()}


def _hashable(key: Any) -> Any:
  return key.item() if isinstance(key, np.ndarray) and key.ndim == 0 else key


def metadata(schema: FeatureSchema, state: Any, max_rows: Optional[int]) -> dict[str, Any]:
  """The metadata entries that let a reader rebuild ``schema`` and ``state``.

  ``max_rows`` (None: every row) records that each split holds only its first ``max_rows`` rows.
  """
  return {FORMAT_KEY: ROW_FORMAT, SCHEMA_KEY: schema.to_dict(), STATE_KEY: encode_json(state),
          MAX_ROWS_KEY: max_rows}


def schema_from_metadata(meta: Any, where: str) -> FeatureSchema:
  """The FeatureSchema stored by :func:`metadata`; ``where`` names the dataset in errors."""
  if meta is None or SCHEMA_KEY not in meta:
    raise ValueError(f'{where}: no {SCHEMA_KEY!r} in the dataset metadata; was it built by a '
                     'jaxrec CTR builder?')
  if meta.get(FORMAT_KEY) != ROW_FORMAT:
    raise ValueError(f'{where}: row format {meta.get(FORMAT_KEY)!r}; this jaxrec reads '
                     f'{ROW_FORMAT}')
  return FeatureSchema.from_dict(meta[SCHEMA_KEY])


def state_from_metadata(meta: Any, where: str) -> Any:
  if meta is None or STATE_KEY not in meta:
    raise ValueError(f'{where}: no {STATE_KEY!r} in the dataset metadata')
  return decode_json(meta[STATE_KEY])
