"""Shared pieces of the dataset readers: the loaded-dataset record, delimited-file parsing,
label/number parsing with line-numbered errors, train-only vocabularies and seeded row splits.

Data flow of a CSV-style reader (Criteo, Avazu, Frappe's BARS layout)::

  read_delimited(path) -> Table            # str cells [rows, columns], 1-based line per row
  -> RawRows(label, dense, cats)           # parsed, still raw categorical strings
  -> split (files or seeded fractions)     # rows are never dropped
  -> fit_vocabularies(train.cats)          # train split only
  -> encode(raw, schema, vocabularies)     # ArrayDataset
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError, read_text, require_dir_files
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.data.vocab import Vocabulary

SPLITS = ('train', 'valid', 'test')
STATE_VERSION = 1


@dataclasses.dataclass
class LoadedDataset:
  """A dataset read from its files.

  Attributes:
    name: dataset name ('frappe', 'criteo', ...).
    schema: the feature schema shared by all splits.
    splits: 'train', 'valid' and 'test' (those present) -> rows.
    state: JSON-serialisable; with the dataset module's ``read_file(path, state)`` it reads
      further files of the same dataset with identical ids (vocabularies, field sizes, schema).
  """
  name: str
  schema: FeatureSchema
  splits: dict[str, ArrayDataset]
  state: dict


def check_state(state: dict, dataset: str) -> None:
  """Raises ValueError unless ``state`` was written by ``dataset``'s loader."""
  got = state.get('dataset') if isinstance(state, dict) else None
  if got != dataset:
    raise ValueError(f'state is for dataset {got!r}, not {dataset!r}')
  if state.get('version') != STATE_VERSION:
    raise ValueError(f'{dataset} state version {state.get("version")!r} is not {STATE_VERSION}')


def first_true(mask: np.ndarray) -> int:
  """Index of the first True of a 1-d mask (which must have one)."""
  return int(np.flatnonzero(mask)[0])


@dataclasses.dataclass
class Table:
  """A delimited text file.

  Attributes:
    path: the file.
    cells: ``str [rows, columns]``, the data rows (header removed).
    lines: ``int64 [rows]``, the 1-based line number of each data row.
    header: the column names, or None if the file has no header line.
  """
  path: str
  cells: np.ndarray
  lines: np.ndarray
  header: Optional[tuple[str, ...]] = None

  def column(self, name: str) -> int:
    if self.header is None or name not in self.header:
      raise DataFormatError(self.path, 1, f'missing column {name!r} (header: {self.header})')
    return self.header.index(name)


def read_delimited(path: str, delimiter: Optional[str] = None, *, header: Optional[bool] = None,
                   num_columns: Optional[int] = None) -> Table:
  """Reads a CSV/TSV file into a :class:`Table`.

  Args:
    path: the file.
    delimiter: ',' or '\\t'; None picks tab if the first line has one, else comma.
    header: whether line 1 is a header; None: it is a header if its first cell is not a number.
    num_columns: the expected number of columns (None: that of line 1).

  Raises:
    FileNotFoundError: no such file.
    DataFormatError: empty file, blank or unparsable line, or a row with another column count.
  """
  text = read_text(path)
  if delimiter is None:
    delimiter = '\t' if '\t' in text.split('\n', 1)[0] else ','
  reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
  rows, lines = [], []
  try:
    for row in reader:
      rows.append(row)
      lines.append(reader.line_num)
  except csv.Error as e:
    raise DataFormatError(path, reader.line_num, f'cannot parse line: {e}') from None
  while rows and _is_blank(rows[-1]):
    rows.pop()
    lines.pop()
  blank = next((i for i, row in enumerate(rows) if _is_blank(row)), None)
  if blank is not None:
    raise DataFormatError(path, lines[blank], 'blank line')
  if header is None:
    header = not _is_number(rows[0][0].strip())
  expected = num_columns if num_columns is not None else len(rows[0])
  widths = np.fromiter(map(len, rows), np.int64, len(rows))
  bad = widths != expected
  if bad.any():
    i = first_true(bad)
    raise DataFormatError(path, lines[i], f'expected {expected} columns, got {widths[i]} '
                          f'(delimiter {delimiter!r})')
  names = None
  if header:
    names = tuple(c.strip() for c in rows[0])
    rows, lines = rows[1:], lines[1:]
    if not rows:
      raise DataFormatError(path, None, 'file has a header but no data rows')
  cells = np.array(rows, dtype=str).reshape(len(rows), expected)
  return Table(os.fspath(path), cells, np.asarray(lines, np.int64), names)


def _is_blank(row: list[str]) -> bool:
  return not row or (len(row) == 1 and not row[0].strip())


def _is_number(s: str) -> bool:
  try:
    float(s)
    return True
  except ValueError:
    return False


def parse_binary_labels(path: str, cells: np.ndarray, lines: np.ndarray,
                        field: str = 'label') -> np.ndarray:
  """``float32 [rows]`` from cells '0'/'1' (also '0.0'/'1.0'); DataFormatError otherwise."""
  cells = np.strings.strip(cells)
  one = np.isin(cells, ('1', '1.0'))
  ok = one | np.isin(cells, ('0', '0.0'))
  if not ok.all():
    i = first_true(~ok)
    raise DataFormatError(path, int(lines[i]),
                          f'field {field!r}: label {str(cells[i])!r} is not 0 or 1')
  return one.astype(np.float32)


def parse_numbers(path: str, cells: np.ndarray, lines: np.ndarray, field: str) -> np.ndarray:
  """``float64 [rows]`` from numeric cells; DataFormatError naming the line for a non-number."""
  try:
    out = np.strings.strip(cells).astype(np.float64)
  except ValueError:
    out = None
  finite = np.isfinite(out) if out is not None else None
  if out is None or not finite.all():
    for i, c in enumerate(cells):
      if not (_is_number(c.strip()) and np.isfinite(float(c))):
        raise DataFormatError(path, int(lines[i]),
                              f'field {field!r}: {str(c)!r} is not a finite number')
  return out


@dataclasses.dataclass
class RawRows:
  """Parsed rows whose categorical values are still raw strings.

  Attributes:
    label: ``float32 [rows]``.
    dense: ``float32 [rows, num_dense]``.
    cats: ``str [rows, num_categorical]``.
  """
  label: np.ndarray
  dense: np.ndarray
  cats: np.ndarray

  def __len__(self) -> int:
    return len(self.label)

  def take(self, index: np.ndarray) -> 'RawRows':
    return RawRows(self.label[index], self.dense[index], self.cats[index])


def fit_vocabularies(cats: np.ndarray, names: Sequence[str],
                     min_count: int) -> dict[str, Vocabulary]:
  """One vocabulary per column of the training split's ``cats`` ``[rows, len(names)]``."""
  return {n: Vocabulary.fit(cats[:, j], min_count) for j, n in enumerate(names)}


def categorical_schema(names: Sequence[str], vocabularies: dict[str, Vocabulary],
                       dense: Sequence[str] = ()) -> FeatureSchema:
  return FeatureSchema(tuple(SparseField(n, vocabularies[n].size) for n in names), tuple(dense))


def encode(raw: RawRows, schema: FeatureSchema, vocabularies: dict[str, Vocabulary],
           name: str) -> ArrayDataset:
  """Maps the raw categorical strings to ids (OOV id 0 for unseen values)."""
  names = [f.name for f in schema.one_hot_fields]
  sparse = np.zeros((len(raw), len(names)), np.int32)
  for j, n in enumerate(names):
    sparse[:, j] = vocabularies[n].lookup(raw.cats[:, j])
  return ArrayDataset(schema, sparse=sparse, label=raw.label, dense=raw.dense, name=name)


def split_fractions(num_rows: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
  """Seeded random split of ``range(num_rows)`` into train/valid/test row indices.

  ``valid`` and ``test`` get ``round(num_rows * fraction)`` rows, ``train`` the rest, so every row
  lands in exactly one split; each split keeps the file order. A split whose fraction is 0 is
  left out.
  """
  fr = [float(f) for f in fractions]
  if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
    raise ValueError('split fractions must be 3 numbers >= 0 (train > 0) summing to 1, '
                     f'got {fractions}')
  n_valid, n_test = int(round(num_rows * fr[1])), int(round(num_rows * fr[2]))
  n_train = num_rows - n_valid - n_test
  if n_train < 1:
    raise ValueError(f'{num_rows} rows are too few for split fractions {fractions}')
  perm = np.random.default_rng(seed).permutation(num_rows)
  parts = {'train': perm[:n_train], 'valid': perm[n_train:n_train + n_valid],
           'test': perm[n_train + n_valid:]}
  return {k: np.sort(parts[k]) for k, f in zip(SPLITS, fr) if f > 0}


def split_files(data_dir: str, dataset: str, train_file: str, valid_file: Optional[str],
                test_file: Optional[str]) -> dict[str, str]:
  """Paths of the split files named in ``data_dir``; FileNotFoundError if one is missing."""
  names = {'train': train_file, 'valid': valid_file, 'test': test_file}
  names = {k: v for k, v in names.items() if v}
  paths = require_dir_files(data_dir, list(names.values()), dataset)
  return dict(zip(names, paths))


def load_splits(dataset: str, data_dir: str, parse, *, train_file: str,
                valid_file: Optional[str], test_file: Optional[str],
                split: Sequence[float], seed: int) -> dict[str, tuple[str, RawRows]]:
  """Parses the split files (or one file split by seeded ``split`` fractions).

  ``parse(path) -> RawRows``. Returns split -> (source name, rows).
  """
  paths = split_files(data_dir, dataset, train_file, valid_file, test_file)
  if len(paths) > 1:
    return {k: (p, parse(p)) for k, p in paths.items()}
  path = paths['train']
  raw = parse(path)
  index = split_fractions(len(raw), split, seed)
  return {k: (f'{path}[{k}]', raw.take(ix)) for k, ix in index.items()}
