"""MovieLens in RecBole atomic format (``ml-100k.inter`` / ``.item`` / ``.user``).

Atomic files are tab-separated with a header of ``name:type`` cells; types ``token`` (a string),
``float``, ``token_seq`` and ``float_seq`` (space-separated lists). :func:`read_atomic` returns the
raw tables (titles, release years, genres, time-stamped ratings) for any use;
:func:`user_histories` gives each user's interactions in time order.

:func:`load` builds a CTR task from them:

* label: ``rating >= rating_threshold`` (default 4, the usual "liked" cut);
* one-hot fields: ``user_id``, ``item_id``, ``age``, ``gender``, ``occupation``, ``zip_code`` and
  ``release_year``; ``zip_code`` keeps its first ``zip_prefix`` (default 3) characters, the US
  sectional centre: the full code adds little beyond ``user_id`` (795 codes for 943 users) while
  the prefix groups nearby users (``zip_prefix=None`` keeps the full code);
* multi-hot field: ``genres`` (``max_length`` = most genres of one movie, ``pooling='mean'``);
* vocabularies fit on the train split (OOV id 0);
* split by time per user: each user's last ``test_per_user`` interactions (default 1) are test,
  the ``valid_per_user`` (default 1) before them valid, the rest train; ties in time keep file
  order. Users with too few interactions give up train rows first.

Nothing is downloaded at load time; get the files from :data:`DOWNLOAD_URLS`: RecBole atomic files
https://github.com/RUCAIBox/RecBole/tree/master/dataset/ml-100k, GroupLens original
https://files.grouplens.org/datasets/movielens/ml-100k.zip.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError, data_lines, read_text, require_dir_files
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.data.tabular import STATE_VERSION, LoadedDataset, check_state, first_true
from jaxrec.data.vocab import Vocabulary

NAME = 'movielens'
DOWNLOAD_URLS = {
    'RecBole atomic files': 'https://github.com/RUCAIBox/RecBole/tree/master/dataset/ml-100k',
    'RecBole dataset hub': 'https://github.com/RUCAIBox/RecSysDatasets',
    'GroupLens original': 'https://files.grouplens.org/datasets/movielens/ml-100k.zip',
}
TYPES = ('token', 'float', 'token_seq', 'float_seq')
ONE_HOT_FIELDS = ('user_id', 'item_id', 'age', 'gender', 'occupation', 'zip_code', 'release_year')
USER_FEATURES = ('age', 'gender', 'occupation', 'zip_code')
GENRE_COLUMNS = ('class', 'genre')  # RecBole ml-100k names it 'class', ml-1m 'genre'


@dataclasses.dataclass
class AtomicTable:
  """One atomic file.

  Attributes:
    path: the file.
    columns: name -> values, one per row: ``token`` str array, ``float`` float64 array,
      ``token_seq`` object array of tuples of str, ``float_seq`` object array of tuples of float.
    types: name -> atomic type.
  """
  path: str
  columns: dict[str, np.ndarray]
  types: dict[str, str]

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.columns:
      raise KeyError(f'{self.path}: no column {name!r} (columns: {list(self.columns)})')
    return self.columns[name]


@dataclasses.dataclass
class AtomicTables:
  inter: AtomicTable
  item: Optional[AtomicTable]
  user: Optional[AtomicTable]


def read_atomic_file(path: str) -> AtomicTable:
  """Parses one atomic file; DataFormatError naming the line and column of a bad cell."""
  lines = data_lines(path, read_text(path))
  names, types = [], []
  for cell in lines[0].split('\t'):
    name, sep, kind = cell.strip().rpartition(':')
    if not sep or not name or kind not in TYPES:
      raise DataFormatError(path, 1, f'header cell {cell!r} is not name:type with type in {TYPES}')
    if name in names:
      raise DataFormatError(path, 1, f'duplicate column {name!r}')
    names.append(name)
    types.append(kind)
  rows = [line.split('\t') for line in lines[1:]]
  if not rows:
    raise DataFormatError(path, None, 'file has a header but no data rows')
  widths = np.fromiter(map(len, rows), np.int64, len(rows))
  if (widths != len(names)).any():
    i = first_true(widths != len(names))
    raise DataFormatError(path, i + 2, f'expected {len(names)} tab-separated columns {names}, '
                          f'got {widths[i]}')
  cells = np.array(rows, dtype=str)
  columns = {}
  for j, (name, kind) in enumerate(zip(names, types)):
    columns[name] = _convert(path, cells[:, j], name, kind)
  return AtomicTable(str(path), columns, dict(zip(names, types)))


def _convert(path: str, col: np.ndarray, name: str, kind: str) -> np.ndarray:
  if kind == 'token':
    return col
  if kind == 'token_seq':
    out = np.empty(len(col), object)
    out[:] = [tuple(c.split()) for c in col.tolist()]
    return out
  if kind == 'float':
    try:
      return np.strings.strip(col).astype(np.float64)
    except ValueError:
      values = col.tolist()
      i = next(i for i, v in enumerate(values) if not _is_float(v))
      raise DataFormatError(path, i + 2,
                            f'column {name!r}: {values[i]!r} is not a number') from None
  out = np.empty(len(col), object)
  for i, c in enumerate(col.tolist()):
    try:
      out[i] = tuple(float(x) for x in c.split())
    except ValueError:
      raise DataFormatError(path, i + 2,
                            f'column {name!r}: {c!r} is not a list of numbers') from None
  return out


def _is_float(s: str) -> bool:
  try:
    float(s)
    return True
  except ValueError:
    return False


def atomic_paths(data_dir: str, dataset: str = 'ml-100k') -> dict[str, str]:
  return {k: os.path.join(data_dir, f'{dataset}.{k}') for k in ('inter', 'item', 'user')}


def read_atomic(data_dir: str, dataset: str = 'ml-100k') -> AtomicTables:
  """The ``{dataset}.inter`` table and, when present, ``.item`` and ``.user`` of ``data_dir``."""
  paths = atomic_paths(data_dir, dataset)
  require_dir_files(data_dir, [os.path.basename(paths['inter'])], NAME)
  tables = {k: read_atomic_file(p) if os.path.isfile(p) else None for k, p in paths.items()}
  return AtomicTables(**tables)


def user_histories(inter: AtomicTable) -> dict[str, np.ndarray]:
  """user_id -> row indices of ``inter`` in time order (ties in file order)."""
  order = _time_order(inter['user_id'], inter['timestamp'])
  users = inter['user_id'][order]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
  ends = np.r_[starts[1:], len(order)]
  return {str(users[s]): order[s:e] for s, e in zip(starts, ends)}


def _time_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
  return np.lexsort((np.arange(len(users)), timestamps, users))


def split_by_time(users: np.ndarray, timestamps: np.ndarray, valid_per_user: int = 1,
                  test_per_user: int = 1) -> dict[str, np.ndarray]:
  """Row indices (file order) of train / valid / test: each user's last interactions are test."""
  if valid_per_user < 0 or test_per_user < 0:
    raise ValueError(f'valid_per_user and test_per_user must be >= 0, got {valid_per_user}, '
                     f'{test_per_user}')
  order = _time_order(users, timestamps)
  sorted_users = users[order]
  starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
  ends = np.r_[starts[1:], len(order)]
  group_end = np.repeat(ends, ends - starts)
  from_end = group_end - 1 - np.arange(len(order))  # 0 = the user's last interaction
  rank = np.empty(len(order), np.int64)
  rank[order] = from_end
  out = {'train': np.flatnonzero(rank >= valid_per_user + test_per_user)}
  if valid_per_user:
    out['valid'] = np.flatnonzero((rank >= test_per_user) & (rank < valid_per_user + test_per_user))
  if test_per_user:
    out['test'] = np.flatnonzero(rank < test_per_user)
  return out


def load(data_dir: str, dataset: str = 'ml-100k', rating_threshold: float = 4.0,
         valid_per_user: int = 1, test_per_user: int = 1, min_count: int = 1,
         zip_prefix: Optional[int] = 3) -> LoadedDataset:
  """The CTR task of the module docstring from ``{dataset}.inter/.item/.user`` in ``data_dir``."""
  paths = atomic_paths(data_dir, dataset)
  require_dir_files(data_dir, [os.path.basename(p) for p in paths.values()], NAME)
  tables = read_atomic(data_dir, dataset)
  _require(tables.inter, ('user_id', 'item_id', 'rating', 'timestamp'))
  side = {'users': _user_side(tables.user, zip_prefix), 'items': _item_side(tables.item)}
  raw = _interactions(tables.inter, side)
  index = split_by_time(tables.inter['user_id'], tables.inter['timestamp'], valid_per_user,
                        test_per_user)
  train = index['train']
  vocabs = {n: Vocabulary.fit(raw['cats'][train, j], min_count)
            for j, n in enumerate(ONE_HOT_FIELDS)}
  genres_train = [g for row in train.tolist() for g in raw['genres'][row]]
  vocabs['genres'] = Vocabulary.fit(np.asarray(genres_train, dtype=str), min_count)
  max_genres = max(2, max(len(year_genres[1]) for year_genres in side['items'].values()))
  schema = FeatureSchema(tuple(SparseField(n, vocabs[n].size) for n in ONE_HOT_FIELDS)
                         + (SparseField('genres', vocabs['genres'].size, max_genres, 'mean'),))
  state = {'dataset': NAME, 'version': STATE_VERSION, 'schema': schema.to_dict(),
           'vocabularies': {n: v.to_dict() for n, v in vocabs.items()},
           'rating_threshold': rating_threshold, 'zip_prefix': zip_prefix, 'min_count': min_count,
           'source': {'dataset': dataset, 'valid_per_user': valid_per_user,
                      'test_per_user': test_per_user},
           **side}
  full = _encode(raw, schema, vocabs, rating_threshold, paths['inter'])
  splits = {k: full.take(ix) for k, ix in index.items()}
  for k, ds in splits.items():
    ds.name = f'{paths["inter"]}[{k}]'
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> ArrayDataset:
  """Reads an atomic ``.inter`` file as one split, with the side features and ids of ``state``.

  The file needs ``user_id``, ``item_id`` and ``rating`` columns; its users and items must be in
  the user and item tables the state was built from.
  """
  check_state(state, NAME)
  schema = FeatureSchema.from_dict(state['schema'])
  vocabs = {n: Vocabulary.from_dict(d) for n, d in state['vocabularies'].items()}
  raw = _interactions(read_atomic_file(path), state)
  return _encode(raw, schema, vocabs, state['rating_threshold'], str(path))


def _require(table: AtomicTable, names) -> None:
  missing = [n for n in names if n not in table.columns]
  if missing:
    raise DataFormatError(table.path, 1, f'missing columns {missing} (header: {list(table.types)})')


def _user_side(user: AtomicTable, zip_prefix: Optional[int]) -> dict[str, list[str]]:
  """user_id -> [age, gender, occupation, zip_code (prefix)] as raw tokens."""
  _require(user, ('user_id',) + USER_FEATURES)
  zips = user['zip_code']
  if zip_prefix is not None:
    zips = np.strings.slice(zips, 0, int(zip_prefix))
  cols = [user['age'], user['gender'], user['occupation'], zips]
  return {str(u): [str(c[i]) for c in cols] for i, u in enumerate(user['user_id'].tolist())}


def _item_side(item: AtomicTable) -> dict[str, list]:
  """item_id -> [release_year, [genres]] as raw tokens."""
  genre_col = next((c for c in GENRE_COLUMNS if c in item.columns), None)
  if genre_col is None:
    raise DataFormatError(item.path, 1, f'no genre column (one of {GENRE_COLUMNS})')
  _require(item, ('item_id', 'release_year'))
  genres = item[genre_col]
  if item.types[genre_col] != 'token_seq':
    genres = [(g,) for g in genres.tolist()]
  return {str(i): [str(y), list(g)] for i, y, g in
          zip(item['item_id'].tolist(), item['release_year'].tolist(), genres)}


def _interactions(inter: AtomicTable, side: dict) -> dict:
  """Raw tokens of every interaction: ``cats`` ``str [rows, 7]``, ``genres`` lists, ``rating``."""
  _require(inter, ('user_id', 'item_id', 'rating'))
  users, items = inter['user_id'].tolist(), inter['item_id'].tolist()
  cats, genres = [], []
  for i, (u, it) in enumerate(zip(users, items)):
    us, im = side['users'].get(u), side['items'].get(it)
    if us is None or im is None:
      what = f'user_id {u!r} is not in the user table' if us is None else (
          f'item_id {it!r} is not in the item table')
      raise DataFormatError(inter.path, i + 2, what)
    cats.append([u, it, *us, im[0]])
    genres.append(im[1])
  return {'cats': np.array(cats, dtype=str).reshape(len(users), len(ONE_HOT_FIELDS)),
          'genres': genres, 'rating': inter['rating']}


def _encode(raw: dict, schema: FeatureSchema, vocabs: dict[str, Vocabulary], threshold: float,
            name: str) -> ArrayDataset:
  n = len(raw['rating'])
  sparse = np.stack([vocabs[f].lookup(raw['cats'][:, j]) for j, f in enumerate(ONE_HOT_FIELDS)],
                    axis=1) if n else np.zeros((0, len(ONE_HOT_FIELDS)), np.int32)
  length = schema.max_multi_hot_length
  lengths = np.array([len(g) for g in raw['genres']], np.int32)
  if n and lengths.max() > length:
    i = first_true(lengths > length)
    raise DataFormatError(name, i + 2, f'field \'genres\': {lengths[i]} genres, more than '
                          f'max_length={length}')
  tokens = np.full((n, length), '', dtype=object)
  for i, g in enumerate(raw['genres']):
    tokens[i, :len(g)] = g
  valid = np.arange(length)[None, :] < lengths[:, None]
  ids = np.where(valid, vocabs['genres'].lookup(tokens.astype(str)), 0)
  label = (raw['rating'] >= threshold).astype(np.float32)
  return ArrayDataset(schema, sparse=sparse, label=label, multi_hot_ids=ids[:, None, :],
                      multi_hot_lengths=lengths[:, None],
                      multi_hot_weights=valid[:, None, :].astype(np.float32), name=name)
