"""Frappe_x1: context-aware app usage (Baltrunas et al. 2015), the BARS / AFN / Wukong split.

288,609 rows = 202,027 train / 57,722 validation / 28,860 test, about 1/3 positive; 10 one-hot
fields: user 957, item 4,082, daytime 7, weekday 7, isweekend 2, homework 3, cost 2, weather 9,
country 80, city 233 (5,382 features).

Two layouts of the same split are read; :func:`load` picks the one whose files are in ``data_dir``:

* ``libfm`` (NFM repository): ``frappe.train.libfm``, ``frappe.validation.libfm`` and, if present,
  ``frappe.test.libfm``; lines ``label idx:1 ...`` with label 1 / -1 and global index = field
  offset + local id. The ids are the local ids, so every split shares them without a vocabulary.
* ``csv`` (BARS / FuxiCTR Frappe_x1): ``train.csv``, ``valid.csv`` and, if present, ``test.csv``
  with header ``label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city``
  (label 0/1, feature values the same global indices). As in FuxiCTR (``min_categr_count`` 1), each
  field gets a vocabulary fit on train (most frequent first); values unseen in train map to the
  OOV id 0.

Nothing is downloaded at load time; get the files from :data:`DOWNLOAD_URLS`: libfm
https://github.com/hexiangnan/neural_factorization_machine/tree/master/data/frappe, csv
https://huggingface.co/datasets/reczoo/Frappe_x1 (or https://zenodo.org/record/6324454/files/Frappe_x1.zip).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from jaxrec.data import libfm
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFileNotFoundError, DataFormatError
from jaxrec.data.schema import FeatureSchema
from jaxrec.data.tabular import (STATE_VERSION, LoadedDataset, RawRows, categorical_schema,
                                 check_state, encode, fit_vocabularies, parse_binary_labels,
                                 read_delimited)
from jaxrec.data.vocab import Vocabulary

NAME = 'frappe'
DOWNLOAD_URLS = {
    'libfm (NFM)': 'https://github.com/hexiangnan/neural_factorization_machine/tree/master/data/frappe',
    'csv (BARS Frappe_x1)': 'https://huggingface.co/datasets/reczoo/Frappe_x1',
    'csv zip (BARS Frappe_x1)': 'https://zenodo.org/record/6324454/files/Frappe_x1.zip',
    'raw log': 'https://www.baltrunas.info/context-aware/frappe',
}
FIELD_NAMES = ('user', 'item', 'daytime', 'weekday', 'isweekend', 'homework', 'cost', 'weather',
               'country', 'city')
FIELD_SIZES = (957, 4082, 7, 7, 2, 3, 2, 9, 80, 233)
LIBFM_FILES = {'train': 'frappe.train.libfm', 'valid': 'frappe.validation.libfm',
               'test': 'frappe.test.libfm'}
CSV_FILES = {'train': 'train.csv', 'valid': 'valid.csv', 'test': 'test.csv'}
LAYOUTS = {'libfm': LIBFM_FILES, 'csv': CSV_FILES}


def load(data_dir: str, layout: str = 'auto', min_count: int = 1) -> LoadedDataset:
  """Loads Frappe_x1 from ``data_dir``.

  Args:
    data_dir: folder with the libfm or the csv files (see the module docstring).
    layout: 'libfm', 'csv' or 'auto' (libfm if its train file is there, else csv).
    min_count: csv layout only: a value needs this many train rows to get its own id.

  Returns:
    splits 'train', 'valid' and, when its file exists, 'test'.
  """
  layout = _pick_layout(data_dir, layout)
  files = LAYOUTS[layout]
  paths = {k: os.path.join(data_dir, f) for k, f in files.items()}
  missing = [files[k] for k in ('train', 'valid') if not os.path.isfile(paths[k])]
  if missing:
    raise DataFileNotFoundError(f'frappe ({layout} layout): {missing} not found in {data_dir!r} '
                                f'(expected {files["train"]}, {files["valid"]}, '
                                f'optional {files["test"]})')
  paths = {k: p for k, p in paths.items() if os.path.isfile(p)}
  if layout == 'libfm':
    state = {'dataset': NAME, 'version': STATE_VERSION, 'layout': 'libfm'}
    splits = {k: libfm.read_libfm(p, FIELD_NAMES, FIELD_SIZES) for k, p in paths.items()}
    schema = splits['train'].schema
  else:
    raw = {k: _parse_csv(p) for k, p in paths.items()}
    vocabs = fit_vocabularies(raw['train'].cats, FIELD_NAMES, min_count)
    schema = categorical_schema(FIELD_NAMES, vocabs)
    state = {'dataset': NAME, 'version': STATE_VERSION, 'layout': 'csv', 'min_count': min_count,
             'vocabularies': {n: v.to_dict() for n, v in vocabs.items()}}
    splits = {k: encode(r, schema, vocabs, paths[k]) for k, r in raw.items()}
  state['schema'] = schema.to_dict()
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> ArrayDataset:
  """Reads any Frappe split file of the state's layout with the ids recorded in ``state``."""
  check_state(state, NAME)
  if state['layout'] == 'libfm':
    return libfm.read_libfm(path, FIELD_NAMES, FIELD_SIZES)
  schema = FeatureSchema.from_dict(state['schema'])
  vocabs = {n: Vocabulary.from_dict(d) for n, d in state['vocabularies'].items()}
  return encode(_parse_csv(path), schema, vocabs, str(path))


def _pick_layout(data_dir: Optional[str], layout: str) -> str:
  if data_dir is None:
    raise ValueError('frappe: data_dir is required')
  if layout in LAYOUTS:
    return layout
  if layout != 'auto':
    raise ValueError(f"frappe: layout must be 'auto', 'libfm' or 'csv', got {layout!r}")
  for name, files in LAYOUTS.items():
    if os.path.isfile(os.path.join(data_dir, files['train'])):
      return name
  raise DataFileNotFoundError(
      f'frappe: no Frappe_x1 files in {data_dir!r}: expected {list(LIBFM_FILES.values())[:2]} '
      f'(libfm layout, optional {LIBFM_FILES["test"]}) or {list(CSV_FILES.values())[:2]} '
      f'(BARS csv layout, optional {CSV_FILES["test"]}); download from {DOWNLOAD_URLS}')


def _parse_csv(path: str) -> RawRows:
  """The BARS csv: label and the 10 fields, located by header name."""
  table = read_delimited(path, ',', header=True)
  expected = ('label',) + FIELD_NAMES
  if set(table.header) != set(expected) or len(table.header) != len(expected):
    raise DataFormatError(path, 1, f'header {list(table.header)} does not hold exactly the columns '
                          f'{list(expected)}')
  cols = [table.column(n) for n in FIELD_NAMES]
  label = parse_binary_labels(path, table.cells[:, table.column('label')], table.lines)
  cats = np.strings.strip(table.cells[:, cols])
  return RawRows(label, np.zeros((len(label), 0), np.float32), cats)
