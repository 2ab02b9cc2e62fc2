"""MovieLens-100K atomic files: raw tables, the time-ordered CTR split, errors."""

import json

import numpy as np
import pytest

from jaxrec.data import movielens
from jaxrec.data.datasets import load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError


@pytest.fixture(scope='module')
def tables(shared_data):
  return movielens.read_atomic(str(shared_data / 'movielens-100k'))


@pytest.fixture(scope='module')
def ctr(shared_data):
  return load_dataset('movielens', str(shared_data / 'movielens-100k'))


def _decode(state, field, ids):
  return [(['<oov>'] + state['vocabularies'][field]['tokens'])[i] for i in np.atleast_1d(ids)]


def test_raw_tables(tables):
  inter, item, user = tables.inter, tables.item, tables.user
  assert (len(inter), len(item), len(user)) == (100_000, 1_682, 943)
  assert inter.types == {'user_id': 'token', 'item_id': 'token', 'rating': 'float',
                         'timestamp': 'float'}
  assert item.types['class'] == 'token_seq'
  # first lines: 196 242 3 881250949 | 1 Toy Story 1995 Animation Children's Comedy |
  # 1 24 M technician 85711
  assert (inter['user_id'][0], inter['item_id'][0], inter['rating'][0],
          inter['timestamp'][0]) == ('196', '242', 3.0, 881250949.0)
  assert item['movie_title'][0] == ('Toy', 'Story') and item['release_year'][0] == '1995'
  assert item['class'][0] == ('Animation', "Children's", 'Comedy')
  assert [user[c][0] for c in ('user_id', 'age', 'gender', 'occupation', 'zip_code')] == [
      '1', '24', 'M', 'technician', '85711']
  assert len(set(inter['user_id'].tolist())) == 943 and len(set(inter['item_id'].tolist())) == 1682
  # rating counts 1..5 (awk): 6110, 11370, 27145, 34174, 21201
  np.testing.assert_array_equal(np.bincount(inter['rating'].astype(int))[1:],
                                [6110, 11370, 27145, 34174, 21201])


def test_user_histories_are_time_ordered(tables):
  hist = movielens.user_histories(tables.inter)
  assert len(hist) == 943 and sum(len(v) for v in hist.values()) == 100_000
  rows = hist['196']
  assert len(rows) == 39
  assert (np.diff(tables.inter['timestamp'][rows]) >= 0).all()
  assert tables.inter['item_id'][rows[-3:]].tolist() == ['1118', '94', '110']


def test_ctr_splits(ctr, tables):
  sizes = {k: v.num_rows for k, v in ctr.splits.items()}
  assert sizes == {'train': 98_114, 'valid': 943, 'test': 943}
  labels = np.concatenate([v.label for v in ctr.splits.values()])
  assert int(labels.sum()) == 34_174 + 21_201  # rating >= 4
  names = [f.name for f in ctr.schema.sparse]
  assert names == ['user_id', 'item_id', 'age', 'gender', 'occupation', 'zip_code',
                   'release_year', 'genres']
  genres = ctr.schema.sparse[-1]
  assert (genres.max_length, genres.pooling) == (6, 'mean')  # at most 6 genres per movie (awk)
  assert ctr.schema.sparse[0].vocab_size == 944  # every user has train rows
  for split in ctr.splits.values():
    assert (split.sparse < np.array(ctr.schema.vocab_sizes[:-1])).all()
    assert (split.multi_hot_lengths >= 1).all()  # every movie has a genre
  # Each user's test row is their last in time, the valid row the one before.
  test, valid = ctr.splits['test'], ctr.splits['valid']
  assert sorted(_decode(ctr.state, 'user_id', test.sparse[:, 0])) == sorted(
      tables.user['user_id'].tolist())
  hist = movielens.user_histories(tables.inter)
  last = {u: tables.inter['item_id'][r[-1]] for u, r in hist.items()}
  got = dict(zip(_decode(ctr.state, 'user_id', test.sparse[:, 0]),
                 _decode(ctr.state, 'item_id', test.sparse[:, 1])))
  mismatch = [u for u in got if got[u] != last[u] and got[u] != '<oov>']
  assert not mismatch


def test_ctr_rows_of_user_196_by_hand(ctr):
  # user 196: 49 M writer 55105; last three by time: 1118 (4), 94 (3), 110 (1).
  # item 110 and 94: release years / genres from ml-100k.item.
  for split, item, label in (('test', '110', 0), ('valid', '94', 0)):
    ds = ctr.splits[split]
    row = _decode(ctr.state, 'user_id', ds.sparse[:, 0]).index('196')
    decoded = [_decode(ctr.state, f, ds.sparse[row, j])[0]
               for j, f in enumerate(movielens.ONE_HOT_FIELDS)]
    assert decoded[:6] == ['196', item, '49', 'M', 'writer', '551'], split
    assert ds.label[row] == label
  train = ctr.splits['train']
  users = _decode(ctr.state, 'user_id', train.sparse[:, 0])
  items = _decode(ctr.state, 'item_id', train.sparse[:, 1])
  row = next(i for i, (u, it) in enumerate(zip(users, items)) if (u, it) == ('196', '242'))
  # inter line 2: 196 242 3 -> label 0; item 242: Kolya 1996 Comedy
  assert train.label[row] == 0
  assert _decode(ctr.state, 'release_year', train.sparse[row, 6]) == ['1996']
  n = train.multi_hot_lengths[row, 0]
  assert _decode(ctr.state, 'genres', train.multi_hot_ids[row, 0, :n]) == ['Comedy']
  np.testing.assert_array_equal(train.multi_hot_weights[row, 0], [1, 0, 0, 0, 0, 0])


def test_ctr_round_trip_and_options(ctr, shared_data, tmp_path):
  state = json.loads(json.dumps(ctr.state))
  inter = (shared_data / 'movielens-100k' / 'ml-100k.inter').read_text().splitlines()
  path = tmp_path / 'some.inter'
  path.write_text('\n'.join(inter[:1001]) + '\n')
  part = read_split_file('movielens', str(path), state)
  assert part.num_rows == 1000
  full = movielens.load(str(shared_data / 'movielens-100k'), valid_per_user=0, test_per_user=0)
  assert set(full.splits) == {'train'} and full.splits['train'].num_rows == 100_000
  # Both keep file order; with no held-out rows the vocabularies differ, so compare raw tokens.
  for j, f in enumerate(movielens.ONE_HOT_FIELDS):
    np.testing.assert_array_equal(_decode(state, f, part.sparse[:, j]),
                                  _decode(full.state, f, full.splits['train'].sparse[:1000, j]))
  np.testing.assert_array_equal(part.label, full.splits['train'].label[:1000])
  two = movielens.load(str(shared_data / 'movielens-100k'), test_per_user=2, zip_prefix=None)
  assert two.splits['test'].num_rows == 2 * 943
  assert two.schema.sparse[5].vocab_size > ctr.schema.sparse[5].vocab_size


def _atomic(tmp_path, inter, item=None, user=None):
  (tmp_path / 'ml-100k.inter').write_text(inter)
  (tmp_path / 'ml-100k.item').write_text(
      item or 'item_id:token\trelease_year:token\tclass:token_seq\n1\t1995\tComedy Drama\n')
  (tmp_path / 'ml-100k.user').write_text(
      user or 'user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n'
      '7\t30\tF\tartist\t12345\n')
  return str(tmp_path)


INTER_HEADER = 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n'


def test_small_dataset(tmp_path):
  data = movielens.load(_atomic(tmp_path, INTER_HEADER + '7\t1\t5\t3\n7\t1\t2\t1\n7\t1\t4\t2\n'))
  # time order 2, 3, 1: train = line 3 (t=1), valid = line 4 (t=2), test = line 2 (t=3)
  assert [data.splits[k].label.tolist() for k in ('train', 'valid', 'test')] == [[0], [1], [1]]
  assert data.schema.sparse[-1].max_length == 2
  np.testing.assert_array_equal(data.splits['test'].multi_hot_lengths, [[2]])


@pytest.mark.parametrize('inter,message', [
    (INTER_HEADER + '7\t1\t5\n', r'ml-100k\.inter:2: expected 4 tab-separated columns'),
    (INTER_HEADER + '7\t1\tfive\t3\n',
     r"ml-100k\.inter:2: column 'rating': 'five' is not a number"),
    (INTER_HEADER + '7\t1\t5\t3\n8\t1\t5\t3\n',
     r"ml-100k\.inter:3: user_id '8' is not in the user"),
    (INTER_HEADER + '7\t2\t5\t3\n', r"ml-100k\.inter:2: item_id '2' is not in the item table"),
    ('user_id:token\titem_id:tok\n7\t1\n', r"ml-100k\.inter:1: header cell 'item_id:tok' is not"),
    ('user_id:token\tuser_id:token\n7\t1\n', r"ml-100k\.inter:1: duplicate column 'user_id'"),
    (INTER_HEADER, r'ml-100k\.inter: file has a header but no data rows'),
    ('', r'ml-100k\.inter: file is empty'),
    ('user_id:token\titem_id:token\ttimestamp:float\n7\t1\t3\n',
     r"ml-100k\.inter:1: missing columns \['rating'\]"),
])
def test_bad_inputs(tmp_path, inter, message):
  with pytest.raises(DataFormatError, match=message):
    movielens.load(_atomic(tmp_path, inter))


def test_missing_files(tmp_path):
  (tmp_path / 'ml-100k.inter').write_text(INTER_HEADER + '7\t1\t5\t3\n')
  with pytest.raises(FileNotFoundError) as info:
    movielens.load(str(tmp_path))
  assert 'ml-100k.item' in str(info.value) and 'ml-100k.user' in str(info.value)
  tables = movielens.read_atomic(str(tmp_path))
  assert tables.item is None and tables.user is None and len(tables.inter) == 1
