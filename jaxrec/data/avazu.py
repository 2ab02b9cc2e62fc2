"""Avazu mobile ads CTR (Kaggle 2014): ``id,click,hour,C1,banner_pos,site_id,...,C21``.

* ``click`` is the label (a file whose label column is named ``label`` instead, such as the
  index-encoded torch-rechub samples, is read the same way);
* ``id`` identifies the impression and is not a feature (it is unique per row, so it could only
  memorise); it is read past and not kept;
* ``hour`` (``YYMMDDHH``, UTC) becomes two categorical fields, ``weekday`` (Monday = token '0') and
  ``hour_of_day`` ('0'..'23'), with fixed vocabularies; a malformed hour is a DataFormatError;
* every other column is categorical with a vocabulary fit on the train split only (OOV id 0,
  ``min_count`` as for Criteo: 1 for samples; FuxiCTR's Avazu_x4 uses 2 on the full data).

Splits as for Criteo: ``train_file`` / ``valid_file`` / ``test_file`` in ``data_dir``, or one file
split at random by ``split`` fractions (default 8:1:1, seeded), every row kept. The Kaggle
``test.csv`` has no ``click`` column and cannot be read.

Nothing is downloaded at load time; get the data from :data:`DOWNLOAD_URLS`: Kaggle
https://www.kaggle.com/c/avazu-ctr-prediction/data (BARS splits: https://huggingface.co/datasets/reczoo/Avazu_x4).
"""

from __future__ import annotations

import datetime
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError
from jaxrec.data.schema import FeatureSchema
from jaxrec.data.tabular import (STATE_VERSION, LoadedDataset, RawRows, Table, categorical_schema,
                                 check_state, encode, first_true, fit_vocabularies, load_splits,
                                 parse_binary_labels, read_delimited)
from jaxrec.data.vocab import Vocabulary

NAME = 'avazu'
DOWNLOAD_URLS = {
    'kaggle': 'https://www.kaggle.com/c/avazu-ctr-prediction/data',
    'BARS Avazu_x1 / x4': 'https://huggingface.co/datasets/reczoo/Avazu_x4',
    'sample (DeepCTR)': 'https://github.com/shenweichen/DeepCTR/blob/master/examples/avazu_sample.txt',
}
LABELS = ('click', 'label')
ID = 'id'
HOUR = 'hour'
TIME_FIELDS = ('weekday', 'hour_of_day')
TIME_VOCABS = {'weekday': Vocabulary(tuple(str(i) for i in range(7))),
               'hour_of_day': Vocabulary(tuple(str(i) for i in range(24)))}


def load(data_dir: str, train_file: str = 'train.csv', valid_file: Optional[str] = None,
         test_file: Optional[str] = None, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
         min_count: int = 1) -> LoadedDataset:
  """Loads Avazu CSV files from ``data_dir`` (arguments as :func:`jaxrec.data.criteo.load`)."""
  columns = {}

  def parse(path):
    rows, cols = _parse(path, columns.get('train'))
    columns.setdefault('train', cols)
    return rows

  raw = load_splits(NAME, data_dir, parse, train_file=train_file, valid_file=valid_file,
                    test_file=test_file, split=split, seed=seed)
  names = _field_names(columns['train'])
  vocabs = fit_vocabularies(raw['train'][1].cats, names, min_count)
  vocabs.update({n: TIME_VOCABS[n] for n in names if n in TIME_VOCABS})
  schema = categorical_schema(names, vocabs)
  state = {'dataset': NAME, 'version': STATE_VERSION, 'schema': schema.to_dict(),
           'columns': list(columns['train']), 'min_count': min_count,
           'vocabularies': {n: v.to_dict() for n, v in vocabs.items()},
           'source': {'train_file': train_file, 'valid_file': valid_file, 'test_file': test_file,
                      'split': list(split), 'seed': seed}}
  splits = {k: encode(rows, schema, vocabs, src) for k, (src, rows) in raw.items()}
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> ArrayDataset:
  """Reads any Avazu CSV with the columns and vocabularies of ``state``."""
  check_state(state, NAME)
  schema = FeatureSchema.from_dict(state['schema'])
  vocabs = {n: Vocabulary.from_dict(d) for n, d in state['vocabularies'].items()}
  rows, _ = _parse(path, tuple(state['columns']))
  return encode(rows, schema, vocabs, str(path))


def _field_names(columns: Sequence[str]) -> list[str]:
  """Schema field order: weekday, hour_of_day (when the file has ``hour``), then the columns."""
  return (list(TIME_FIELDS) if HOUR in columns else []) + [c for c in columns if c != HOUR]


def _parse(path: str, expected: Optional[Sequence[str]]) -> tuple[RawRows, tuple[str, ...]]:
  """Rows of one file and its feature columns (in file order; ``hour`` included, label/id not).

  ``expected``: the train file's feature columns, which a later file must hold exactly.
  """
  table = read_delimited(path, ',', header=True)
  label_col = next((c for c in LABELS if c in table.header), None)
  if label_col is None:
    raise DataFormatError(path, 1, f'no label column: expected one of {list(LABELS)} in header '
                          f'{list(table.header)} (the Kaggle test.csv has no labels)')
  cols = tuple(c for c in table.header if c not in (label_col, ID))
  if len(set(table.header)) != len(table.header):
    raise DataFormatError(path, 1, f'duplicate column names in header {list(table.header)}')
  if expected is not None and set(cols) != set(expected):
    raise DataFormatError(path, 1, f'feature columns {sorted(cols)} differ from the training '
                          f'file\'s {sorted(expected)}')
  order = tuple(expected) if expected is not None else cols
  label = parse_binary_labels(path, table.cells[:, table.column(label_col)], table.lines, label_col)
  parts = []
  if HOUR in order:
    parts.append(_time_fields(table))
  plain = [c for c in order if c != HOUR]
  parts.append(table.cells[:, [table.column(c) for c in plain]])
  cats = np.concatenate(parts, axis=1)
  return RawRows(label, np.zeros((len(label), 0), np.float32), cats), order


def _time_fields(table: Table) -> np.ndarray:
  """``str [rows, 2]``: weekday ('0' = Monday) and hour of day of the ``YYMMDDHH`` column."""
  hours = np.strings.strip(table.cells[:, table.column(HOUR)])
  uniq, inverse = np.unique(hours, return_inverse=True)
  out = np.zeros((len(uniq), 2), dtype='U2')
  bad = np.zeros(len(uniq), bool)
  for u, value in enumerate(uniq.tolist()):
    try:
      if len(value) != 8 or not value.isdigit():
        raise ValueError(value)
      t = datetime.datetime.strptime(value, '%y%m%d%H')
    except ValueError:
      bad[u] = True
      continue
    out[u] = (str(t.weekday()), str(t.hour))
  inverse = inverse.reshape(-1)
  if bad.any():
    i = first_true(bad[inverse])
    raise DataFormatError(table.path, int(table.lines[i]),
                          f'field {HOUR!r}: {str(hours[i])!r} is not a valid YYMMDDHH time')
  return out[inverse]
