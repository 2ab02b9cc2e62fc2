"""libffm reader: the real xLearn Criteo files, weighted bags, bag-length limits, errors."""

import json

import numpy as np
import pytest

from jaxrec.data import libffm
from jaxrec.data.datasets import load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError

TRAIN, TEST = 'xlearn_small_train.libffm', 'xlearn_small_test.libffm'


def _decode(state, field, ids):
  return [(['<oov>'] + state['vocabularies'][field]['tokens'])[i] for i in ids]


def _bag(data, split, row, field):
  """(decoded feature tokens, weights) of one bag."""
  ds = data.splits[split]
  j = [f.name for f in data.schema.multi_hot_fields].index(field)
  n = ds.multi_hot_lengths[row, j]
  return (_decode(data.state, field, ds.multi_hot_ids[row, j, :n]),
          ds.multi_hot_weights[row, j, :n].tolist())


@pytest.fixture(scope='module')
def real(shared_data):
  return load_dataset('libffm', str(shared_data / 'criteo'), train_file=TRAIN, test_file=TEST)


def test_real_schema_and_counts(real):
  assert {k: v.num_rows for k, v in real.splits.items()} == {'train': 200, 'test': 200}
  assert {k: int(v.label.sum()) for k, v in real.splits.items()} == {'train': 48, 'test': 46}
  fields = real.schema.multi_hot_fields
  assert [f.name for f in fields] == [f'field_{i}' for i in range(18)]
  assert real.schema.num_sparse == 0 and all(f.pooling == 'sum' for f in fields)
  # Longest bags (awk): field 16 has 11 entries in a test row, field 17 10; others at most 1 -> 2.
  assert [f.max_length for f in fields] == [2] * 16 + [11, 10]
  for ds in real.splits.values():
    assert ds.multi_hot_ids.shape == (200, 18, 11)
    valid = np.arange(11)[None, None, :] < ds.multi_hot_lengths[:, :, None]
    assert (ds.multi_hot_ids[~valid] == 0).all() and (ds.multi_hot_weights[~valid] == 0).all()
    assert (ds.multi_hot_weights[valid] > 0).all()
  train = real.splits['train']
  assert (train.multi_hot_ids[np.arange(11)[None, None, :] < train.multi_hot_lengths[:, :, None]]
          > 0).all()  # train features all have ids


def test_real_first_rows_by_hand(real):
  # train line 1: 1 0:0:0.3651 2:1163:0.3651 ... 15:5428:0.3651 17:2434:0.50000 16:7755:0.50000
  assert real.splits['train'].label[0] == 1
  assert _bag(real, 'train', 0, 'field_0') == (['0'], [pytest.approx(0.3651)])
  assert _bag(real, 'train', 0, 'field_1') == ([], [])
  assert _bag(real, 'train', 0, 'field_2') == (['1163'], [pytest.approx(0.3651)])
  assert _bag(real, 'train', 0, 'field_16') == (['7755'], [0.5])
  # test line 1: 0 1:7759:0.3651 ... 17:8323:0.22361 17:2434:0.44721 16:7755:0.44721 16:2974:0.22361
  assert real.splits['test'].label[0] == 0
  assert _bag(real, 'test', 0, 'field_0') == ([], [])
  assert _bag(real, 'test', 0, 'field_17') == (['8323', '2434'],
                                               [pytest.approx(0.22361), pytest.approx(0.44721)])
  assert _bag(real, 'test', 0, 'field_16') == (['7755', '2974'],
                                               [pytest.approx(0.44721), pytest.approx(0.22361)])


def test_real_round_trip_and_too_long_bag(real, shared_data):
  state = json.loads(json.dumps(real.state))
  again = read_split_file('libffm', str(shared_data / 'criteo' / TEST), state)
  for k, v in real.splits['test'].arrays().items():
    np.testing.assert_array_equal(again.arrays()[k], v, err_msg=k)
  # With the train file alone the bags of field 16 hold 8; test line 117 has 9: never truncated.
  train_only = libffm.load(str(shared_data / 'criteo'), train_file=TRAIN, split=(1.0, 0.0, 0.0))
  assert train_only.schema.multi_hot_fields[16].max_length == 8
  with pytest.raises(DataFormatError, match=r'xlearn_small_test\.libffm:117: field 16: 9 entries, '
                     'more than the bag length max_length=8'):
    libffm.read_file(str(shared_data / 'criteo' / TEST), train_only.state)


def test_real_single_file_split_keeps_rows(shared_data):
  data = libffm.load(str(shared_data / 'criteo'), train_file=TRAIN, seed=5)
  assert {k: v.num_rows for k, v in data.splits.items()} == {'train': 160, 'valid': 20, 'test': 20}
  assert sum(int(v.label.sum()) for v in data.splits.values()) == 48


def _write(tmp_path, text, name='f.ffm'):
  (tmp_path / name).write_text(text)
  return str(tmp_path / name)


def test_max_length_option_and_unknown_field(tmp_path):
  _write(tmp_path, '1 0:a:1 0:b:2 1:c:1\n0 1:c:0.5\n', 'train.libffm')
  data = libffm.load(str(tmp_path), split=(1.0, 0.0, 0.0), max_length=3)
  assert [f.max_length for f in data.schema.multi_hot_fields] == [3, 3]
  np.testing.assert_array_equal(data.splits['train'].multi_hot_lengths, [[2, 1], [0, 1]])
  np.testing.assert_array_equal(data.splits['train'].multi_hot_weights[0, 0], [1, 2, 0])
  _write(tmp_path, '1 0:a:1 0:b:2 0:c:1\n0 1:c:0.5\n', 'train.libffm')
  with pytest.raises(DataFormatError, match=r'train\.libffm:1: field 0: 3 entries, more than the '
                     'bag length max_length=2'):
    libffm.load(str(tmp_path), split=(1.0, 0.0, 0.0), max_length=2)
  with pytest.raises(ValueError, match='max_length must be >= 2'):
    libffm.load(str(tmp_path), split=(1.0, 0.0, 0.0), max_length=1)
  path = _write(tmp_path, '1 0:a:1\n0 5:a:1\n')
  with pytest.raises(DataFormatError, match=r"f\.ffm:2: field 5 is not one of the dataset's fields "
                     r'\[0, 1\]'):
    libffm.read_file(path, data.state)
  np.testing.assert_array_equal(libffm.read_file(_write(tmp_path, '1 0:zz:1\n'), data.state)
                                .multi_hot_ids[0, 0], [0, 0, 0])  # unseen 'zz' -> OOV, empty pad


@pytest.mark.parametrize('line,message', [
    ('1 0:a', r"f\.ffm:2: token '0:a' is not field:feature:value"),
    ('1 0:a:1:2', r"f\.ffm:2: token '0:a:1:2' is not field:feature:value"),
    ('1 x:a:1', r"f\.ffm:2: token 'x:a:1' is not field:feature:value \(field a non-negative"),
    ('1 -1:a:1', r"f\.ffm:2: token '-1:a:1'"),
    ('1 0::1', r"f\.ffm:2: token '0::1'"),
    ('1 0:a:one', r"f\.ffm:2: field 0: value 'one' \(token '0:a:one'\) is not a finite number"),
    ('1 0:a:inf', r"f\.ffm:2: field 0: value 'inf'"),
    ('2 0:a:1', r"f\.ffm:2: label '2' is not 1, 0 or -1"),
    ('', r'f\.ffm:2: blank line'),
])
def test_bad_lines(tmp_path, line, message):
  with pytest.raises(DataFormatError, match=message):
    libffm.parse_file(_write(tmp_path, f'1 0:a:1\n{line}\n0 1:b:0.5\n'))


def test_labels_and_bad_files(tmp_path):
  e = libffm.parse_file(_write(tmp_path, '1 0:a:1\n-1 0:a:1\n0\n+1 1:b:2\n'))
  np.testing.assert_array_equal(e.label, [1, 0, 0, 1])
  np.testing.assert_array_equal(e.row, [0, 1, 3])
  with pytest.raises(DataFormatError, match=r'f\.ffm: file is empty'):
    libffm.parse_file(_write(tmp_path, ''))
  with pytest.raises(FileNotFoundError, match='absent.ffm'):
    libffm.parse_file(str(tmp_path / 'absent.ffm'))
  with pytest.raises(FileNotFoundError, match=r"\['train\.libffm'\] not found"):
    libffm.load(str(tmp_path / 'nowhere'))
