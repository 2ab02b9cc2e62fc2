"""Criteo display ads (Kaggle 2014 / Terabyte): a label, 13 integer and 26 categorical features.

Files read (per file, by its first line):

* the Kaggle TSV (``train.txt``): no header, tab-separated, 40 columns ``label I1..I13 C1..C26``;
* CSV or TSV with a header naming ``label``, ``I1``..``I13``, ``C1``..``C26`` (any order), as in the
  DeepCTR / torch-rechub samples.

Integer features (DLRM preprocessing): a missing value is 0, then ``x -> log(1 + max(x, 0))``
(negative counts such as I2's -1 clip to 0); a non-numeric value is a DataFormatError naming the
file, line and field. Categorical features: one vocabulary per field fit on the train split only
(:class:`~jaxrec.data.vocab.Vocabulary`, OOV id 0); a missing value (empty cell) is a token of
its own. ``min_count`` defaults to 1, right for the small samples; on the full Kaggle or Terabyte
data pass ``min_count=10`` (as BARS Criteo_x1 / FuxiCTR do) to send rare values to the OOV id.

Splits: ``train_file`` / ``valid_file`` / ``test_file`` name files in ``data_dir``; with only
``train_file`` its rows are split at random (``split`` fractions, default 8:1:1, seeded) with every
row in exactly one split. The Kaggle ``test.txt`` has no labels and cannot be read.

Nothing is downloaded at load time; get the data from :data:`DOWNLOAD_URLS`: Kaggle
https://www.kaggle.com/c/criteo-display-ad-challenge/data (mirror
https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz), Terabyte
https://labs.criteo.com/2013/12/download-terabyte-click-logs/.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError
from jaxrec.data.schema import FeatureSchema
from jaxrec.data.tabular import (STATE_VERSION, LoadedDataset, RawRows, categorical_schema,
                                 check_state, encode, fit_vocabularies, load_splits,
                                 parse_binary_labels, parse_numbers, read_delimited)
from jaxrec.data.vocab import Vocabulary

NAME = 'criteo'
DOWNLOAD_URLS = {
    'kaggle': 'https://www.kaggle.com/c/criteo-display-ad-challenge/data',
    'kaggle (Criteo mirror)': 'https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz',
    'terabyte': 'https://labs.criteo.com/2013/12/download-terabyte-click-logs/',
    'sample (DeepCTR)': 'https://github.com/shenweichen/DeepCTR/blob/master/examples/criteo_sample.txt',
}
LABEL = 'label'
DENSE = tuple(f'I{i}' for i in range(1, 14))
CATEGORICAL = tuple(f'C{i}' for i in range(1, 27))
COLUMNS = (LABEL,) + DENSE + CATEGORICAL
DENSE_TRANSFORM = 'missing -> 0, then log(1 + max(x, 0))'


def load(data_dir: str, train_file: str = 'train.txt', valid_file: Optional[str] = None,
         test_file: Optional[str] = None, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
         min_count: int = 1) -> LoadedDataset:
  """Loads Criteo split files from ``data_dir`` (see the module docstring).

  Args:
    data_dir: the folder of the files.
    train_file, valid_file, test_file: file names relative to ``data_dir``.
    split: train/valid/test fractions used when only ``train_file`` is given.
    seed: seed of that random split.
    min_count: a categorical value needs this many train rows to get its own id.
  """
  raw = load_splits(NAME, data_dir, parse_file, train_file=train_file, valid_file=valid_file,
                    test_file=test_file, split=split, seed=seed)
  vocabs = fit_vocabularies(raw['train'][1].cats, CATEGORICAL, min_count)
  schema = categorical_schema(CATEGORICAL, vocabs, DENSE)
  state = {'dataset': NAME, 'version': STATE_VERSION, 'schema': schema.to_dict(),
           'vocabularies': {n: v.to_dict() for n, v in vocabs.items()}, 'min_count': min_count,
           'dense_transform': DENSE_TRANSFORM,
           'source': {'train_file': train_file, 'valid_file': valid_file, 'test_file': test_file,
                      'split': list(split), 'seed': seed}}
  splits = {k: encode(rows, schema, vocabs, src) for k, (src, rows) in raw.items()}
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> ArrayDataset:
  """Reads any Criteo file (TSV or headed CSV) with the vocabularies of ``state``."""
  check_state(state, NAME)
  schema = FeatureSchema.from_dict(state['schema'])
  vocabs = {n: Vocabulary.from_dict(d) for n, d in state['vocabularies'].items()}
  return encode(parse_file(path), schema, vocabs, str(path))


def parse_file(path: str) -> RawRows:
  """Label, transformed integer features ``float32 [rows, 13]`` and raw categorical strings."""
  table = read_delimited(path)
  if table.header is None:
    if table.cells.shape[1] != len(COLUMNS):
      hint = (' (Kaggle test.txt has no label column and cannot be evaluated)'
              if table.cells.shape[1] == len(COLUMNS) - 1 else '')
      raise DataFormatError(path, int(table.lines[0]), f'expected {len(COLUMNS)} columns (label, '
                            f'I1..I13, C1..C26), got {table.cells.shape[1]}{hint}')
    cols = list(range(len(COLUMNS)))
  else:
    extra = sorted(set(table.header) - set(COLUMNS))
    if extra:
      raise DataFormatError(path, 1, f'unexpected columns {extra}: a Criteo file holds {LABEL}, '
                            'I1..I13 and C1..C26')
    cols = [table.column(n) for n in COLUMNS]
  cells, lines = table.cells, table.lines
  label = parse_binary_labels(path, cells[:, cols[0]], lines, LABEL)
  dense = np.zeros((len(label), len(DENSE)), np.float32)
  for j, name in enumerate(DENSE):
    col = cells[:, cols[1 + j]]
    col = np.where(np.strings.strip(col) == '', '0', col)
    dense[:, j] = np.log1p(np.maximum(parse_numbers(path, col, lines, name), 0.0))
  cats = cells[:, cols[1 + len(DENSE):]]
  return RawRows(label, dense, cats)
