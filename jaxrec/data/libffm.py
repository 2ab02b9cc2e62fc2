"""libffm files: ``label field:feature:value ...`` (LIBFFM / xLearn field-aware format).

Each field becomes a weighted multi-hot bag: a :class:`~jaxrec.data.schema.SparseField` named
``field_<id>`` with ``pooling='sum'`` whose ``max_length`` is the most entries that field has in
one row; the entries' feature ids go to ``multi_hot_ids`` and their values to
``multi_hot_weights`` (so a sum-pooled bag is the libffm term ``sum_j value_j * v_feature_j``). A
field absent from a row is an empty bag. The fields are those met in the files read by
:func:`load`; feature ids are remapped per field through a :class:`~jaxrec.data.vocab.Vocabulary`
fit on the train split (OOV id 0 for unseen ones).

``max_length`` is at least 2 so that every field stays multi-hot (a length-1 field would be a
one-hot field and lose its value and its empty bag). It is the longest bag over the files read
by :func:`load` (bag lengths say nothing about labels), or the ``max_length`` option; a file read
later with :func:`read_file` whose bag is longer, or that has a field :func:`load` did not meet,
is a DataFormatError: rows are never truncated.

Labels: 1 positive; 0 or -1 negative. Splits and ``min_count`` as for Criteo.

Nothing is downloaded at load time; public libffm data is at :data:`DOWNLOAD_URLS`: the xLearn
Criteo demo https://github.com/aksnzhy/xlearn/tree/master/demo/classification/criteo_ctr and
https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html#criteo.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError, data_lines, read_text
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.data.tabular import (STATE_VERSION, LoadedDataset, check_state, first_true,
                                 split_files, split_fractions)
from jaxrec.data.vocab import Vocabulary

NAME = 'libffm'
DOWNLOAD_URLS = {
    'xLearn Criteo demo': 'https://github.com/aksnzhy/xlearn/tree/master/demo/classification/criteo_ctr',
    'LIBFFM Criteo (Kaggle, libffm format)': 'https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary.html#criteo',
    'LIBFFM': 'https://www.csie.ntu.edu.tw/~cjlin/libffm/',
}


@dataclasses.dataclass
class Entries:
  """The parsed entries of a libffm file.

  Attributes:
    path: the file.
    label: ``float32 [rows]``.
    row: ``int64 [entries]`` row of each entry (rows in file order, entries in line order).
    field: ``int64 [entries]`` field id.
    feature: ``str [entries]`` feature token.
    value: ``float32 [entries]``.
    lines: ``int64 [rows]`` 1-based line of each row in ``path``.
  """
  path: str
  label: np.ndarray
  row: np.ndarray
  field: np.ndarray
  feature: np.ndarray
  value: np.ndarray
  lines: np.ndarray

  def __len__(self) -> int:
    return len(self.label)

  def take(self, rows: np.ndarray) -> 'Entries':
    """The given rows (sorted), renumbered 0..len(rows)-1 (``lines`` still point into ``path``)."""
    new = np.full(len(self.label), -1, np.int64)
    new[rows] = np.arange(len(rows))
    keep = new[self.row] >= 0
    return Entries(self.path, self.label[rows], new[self.row[keep]], self.field[keep],
                   self.feature[keep], self.value[keep], self.lines[rows])

  def bag_lengths(self, fields: Sequence[int]) -> np.ndarray:
    """``int64 [rows, len(fields)]`` entries per (row, field); fields must all be known."""
    pos = np.searchsorted(np.asarray(fields), self.field)
    m = len(fields)
    return np.bincount(self.row * m + pos, minlength=len(self) * m).reshape(len(self), m)


def parse_file(path: str) -> Entries:
  """Parses a libffm file; DataFormatError naming the line (and field) of any bad token."""
  lines = data_lines(path, read_text(path))
  parts = [line.split() for line in lines]
  counts = np.fromiter(map(len, parts), np.int64, len(parts)) - 1
  labels = np.array([p[0] for p in parts], dtype=str)
  lab = np.strings.strip(labels)
  pos = np.isin(lab, ('1', '+1', '1.0'))
  ok = pos | np.isin(lab, ('0', '-1', '0.0', '-1.0'))
  if not ok.all():
    i = first_true(~ok)
    raise DataFormatError(path, i + 1, f'label {str(labels[i])!r} is not 1, 0 or -1')
  tokens = np.array(list(itertools.chain.from_iterable(p[1:] for p in parts)), dtype=str)
  row = np.repeat(np.arange(len(parts), dtype=np.int64), counts)
  field_s, sep1, rest = np.strings.partition(tokens, ':')
  feature, sep2, value_s = np.strings.partition(rest, ':')
  good = ((sep1 == ':') & (sep2 == ':') & np.strings.isdigit(field_s)
          & (np.strings.str_len(feature) > 0) & (np.strings.find(value_s, ':') < 0))
  if not good.all():
    k = first_true(~good)
    raise DataFormatError(path, int(row[k]) + 1, f'token {str(tokens[k])!r} is not '
                          'field:feature:value (field a non-negative integer)')
  try:
    value = value_s.astype(np.float64)
    bad_value = ~np.isfinite(value)
  except ValueError:
    value = None
  if value is None or bad_value.any():
    k = next(k for k, v in enumerate(value_s.tolist()) if not _is_finite(v))
    raise DataFormatError(path, int(row[k]) + 1, f'field {field_s[k]}: value {str(value_s[k])!r} '
                          f'(token {str(tokens[k])!r}) is not a finite number')
  return Entries(str(path), pos.astype(np.float32), row, field_s.astype(np.int64), feature,
                 value.astype(np.float32), np.arange(1, len(parts) + 1, dtype=np.int64))


def _is_finite(s: str) -> bool:
  try:
    return bool(np.isfinite(float(s)))
  except ValueError:
    return False


def field_name(field: int) -> str:
  return f'field_{field}'


def load(data_dir: str, train_file: str = 'train.libffm', valid_file: Optional[str] = None,
         test_file: Optional[str] = None, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
         min_count: int = 1, max_length: Optional[int] = None) -> LoadedDataset:
  """Loads libffm split files from ``data_dir``.

  Args:
    data_dir, train_file, valid_file, test_file, split, seed, min_count: as for Criteo.
    max_length: bag length of every field; None: the longest bag of the field over these files
      (at least 2).
  """
  paths = split_files(data_dir, NAME, train_file, valid_file, test_file)
  if len(paths) > 1:
    parsed = {k: parse_file(p) for k, p in paths.items()}
  else:
    whole = parse_file(paths['train'])
    parsed = {k: whole.take(ix) for k, ix in split_fractions(len(whole), split, seed).items()}
  train = parsed['train']
  fields = sorted(set(itertools.chain.from_iterable(e.field.tolist() for e in parsed.values())))
  if not fields:
    raise DataFormatError(train.path, None, 'no field:feature:value entries in any split')
  if max_length is None:
    longest = np.max([e.bag_lengths(fields).max(axis=0) for e in parsed.values() if len(e)], axis=0)
    lengths = [max(2, int(x)) for x in longest]
  else:
    if max_length < 2:
      raise ValueError(f'libffm: max_length must be >= 2, got {max_length}')
    lengths = [int(max_length)] * len(fields)
  vocabs = {}
  for f in fields:
    vocabs[field_name(f)] = Vocabulary.fit(train.feature[train.field == f], min_count)
  schema = FeatureSchema(tuple(SparseField(field_name(f), vocabs[field_name(f)].size, n, 'sum')
                               for f, n in zip(fields, lengths)))
  state = {'dataset': NAME, 'version': STATE_VERSION, 'schema': schema.to_dict(), 'fields': fields,
           'vocabularies': {n: v.to_dict() for n, v in vocabs.items()}, 'min_count': min_count,
           'source': {'train_file': train_file, 'valid_file': valid_file, 'test_file': test_file,
                      'split': list(split), 'seed': seed, 'max_length': max_length}}
  splits = {k: _encode(e, schema, fields, vocabs, f'{e.path}[{k}]' if len(paths) == 1 else e.path)
            for k, e in parsed.items()}
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> ArrayDataset:
  """Reads any libffm file with the fields, bag lengths and vocabularies of ``state``."""
  check_state(state, NAME)
  schema = FeatureSchema.from_dict(state['schema'])
  vocabs = {n: Vocabulary.from_dict(d) for n, d in state['vocabularies'].items()}
  entries = parse_file(path)
  _check_fields(entries, state['fields'])
  return _encode(entries, schema, state['fields'], vocabs, str(path))


def _check_fields(entries: Entries, fields: Sequence[int]) -> None:
  unknown = ~np.isin(entries.field, fields)
  if unknown.any():
    k = first_true(unknown)
    raise DataFormatError(entries.path, int(entries.lines[entries.row[k]]),
                          f'field {int(entries.field[k])} is not one of the dataset\'s fields '
                          f'{list(fields)}')


def _encode(entries: Entries, schema: FeatureSchema, fields: Sequence[int],
            vocabs: dict[str, Vocabulary], name: str) -> ArrayDataset:
  """Packs the entries into ``multi_hot_ids`` / ``weights`` ``[rows, fields, L]`` and lengths."""
  n, m, length = len(entries), len(fields), schema.max_multi_hot_length
  lengths = entries.bag_lengths(fields)
  limits = np.array([f.max_length for f in schema.multi_hot_fields])
  over = lengths > limits
  if over.any():
    r, j = np.argwhere(over)[0]
    raise DataFormatError(entries.path, int(entries.lines[r]),
                          f'field {fields[j]}: {lengths[r, j]} entries, more than the bag length '
                          f'max_length={limits[j]} of {schema.multi_hot_fields[j].name!r} '
                          '(rows are never truncated; reload with a larger max_length)')
  fpos = np.searchsorted(np.asarray(fields), entries.field)
  order = np.lexsort((np.arange(len(fpos)), fpos, entries.row))
  group = entries.row[order] * m + fpos[order]
  starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
  slot = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
  ids = np.zeros(len(fpos), np.int32)
  for j, f in enumerate(fields):
    sel = fpos == j
    ids[sel] = vocabs[field_name(f)].lookup(entries.feature[sel])
  multi_ids = np.zeros((n, m, length), np.int32)
  weights = np.zeros((n, m, length), np.float32)
  multi_ids[entries.row[order], fpos[order], slot] = ids[order]
  weights[entries.row[order], fpos[order], slot] = entries.value[order]
  return ArrayDataset(schema, sparse=np.zeros((n, 0), np.int32), label=entries.label,
                      multi_hot_ids=multi_ids, multi_hot_lengths=lengths.astype(np.int32),
                      multi_hot_weights=weights, name=name)
