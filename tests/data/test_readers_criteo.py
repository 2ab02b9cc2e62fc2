"""Criteo reader: the real DeepCTR / torch-rechub samples, Kaggle TSV layout, splits, errors."""

import json
import math

import numpy as np
import pytest

from jaxrec.data import criteo
from jaxrec.data.datasets import load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError
from jaxrec.data.tabular import split_fractions

# file -> (rows, clicks), counted with awk.
SAMPLES = {'deepctr_criteo_sample.txt': (200, 49), 'torchrechub_criteo_sample.csv': (115, 26)}


def _decode(state, field, ids):
  tokens = np.array(['<oov>'] + state['vocabularies'][field]['tokens'])
  return tokens[ids]


@pytest.mark.parametrize('name', SAMPLES)
def test_real_samples_split_every_row_once(shared_data, name):
  rows, clicks = SAMPLES[name]
  data = load_dataset('criteo', str(shared_data / 'criteo'), train_file=name)
  sizes = {k: v.num_rows for k, v in data.splits.items()}
  assert sum(sizes.values()) == rows
  assert sizes['valid'] == round(rows * 0.1) and sizes['test'] == round(rows * 0.1)
  assert data.schema.num_sparse == 26 and data.schema.dense == criteo.DENSE
  assert [f.name for f in data.schema.sparse] == list(criteo.CATEGORICAL)
  labels = np.concatenate([v.label for v in data.splits.values()])
  assert int(labels.sum()) == clicks
  for v in data.splits.values():
    assert (v.sparse >= 0).all() and (v.sparse < np.array(data.schema.vocab_sizes)).all()
    assert (v.dense >= 0).all() and np.isfinite(v.dense).all()
  # Vocabularies are fit on train only: every train value has its own id.
  assert (data.splits['train'].sparse > 0).all()
  # The rows of the three splits together are the file's rows in a seeded order.
  state = json.loads(json.dumps(data.state))
  whole = read_split_file('criteo', str(shared_data / 'criteo' / name), state)
  assert whole.num_rows == rows
  for k, ix in split_fractions(rows, (0.8, 0.1, 0.1), 0).items():
    for key, value in data.splits[k].arrays().items():
      np.testing.assert_array_equal(whole.take(ix).arrays()[key], value, err_msg=f'{k} {key}')


def test_real_first_row_by_hand(shared_data):
  data = criteo.load(str(shared_data / 'criteo'), train_file='deepctr_criteo_sample.txt',
                     split=(1.0, 0.0, 0.0))
  assert set(data.splits) == {'train'}
  ds = data.splits['train']
  # 0,,3,260.0,,17668.0,,,33.0,,,,0.0,,05db9164,08d6d899,9143c832,f56b7dd5,25c83c98,7e0ccccf,
  # df5c2d18,0b153874,a73ee510,8f48ce11,a7b606c4,ae1bb660,eae197fd,b28479f6,bfef54b3,bad5ee18,
  # e5ba7672,87c6f83c,,,0429f84b,,3a171ecb,c0d61a5c,,
  assert ds.label[0] == 0
  expected = [0, math.log(4), math.log(261), 0, math.log(17669), 0, 0, math.log(34), 0, 0, 0, 0, 0]
  np.testing.assert_allclose(ds.dense[0], expected, rtol=1e-6, atol=1e-7)
  raw = ('05db9164,08d6d899,9143c832,f56b7dd5,25c83c98,7e0ccccf,df5c2d18,0b153874,a73ee510,'
         '8f48ce11,a7b606c4,ae1bb660,eae197fd,b28479f6,bfef54b3,bad5ee18,e5ba7672,87c6f83c,,,'
         '0429f84b,,3a171ecb,c0d61a5c,,').split(',')
  decoded = [_decode(data.state, f, ds.sparse[0, j]) for j, f in enumerate(criteo.CATEGORICAL)]
  assert decoded == raw
  # second row: I2 = -1 clips to 0 before the log.
  assert ds.dense[1, 1] == 0


def test_kaggle_tsv_and_separate_files(tmp_path):
  def row(label, i1, c1):
    return '\t'.join([label, i1] + [''] * 12 + [c1] + ['x'] * 25) + '\n'
  (tmp_path / 'train.txt').write_text(row('1', '5', 'aa') + row('0', '', 'bb')
                                      + row('0', '2', 'aa'))
  (tmp_path / 'valid.txt').write_text(row('0', '7', 'cc'))
  (tmp_path / 'test.txt').write_text(row('1', '0', 'bb'))
  data = criteo.load(str(tmp_path), valid_file='valid.txt', test_file='test.txt', min_count=2)
  assert {k: v.num_rows for k, v in data.splits.items()} == {'train': 3, 'valid': 1, 'test': 1}
  np.testing.assert_array_equal(data.splits['train'].label, [1, 0, 0])
  np.testing.assert_allclose(data.splits['train'].dense[:, 0], [math.log(6), 0, math.log(3)])
  # min_count=2: 'aa' (2 rows) keeps an id, 'bb' (1 row) and unseen 'cc' are OOV.
  np.testing.assert_array_equal(data.splits['train'].sparse[:, 0], [1, 0, 1])
  assert data.splits['valid'].sparse[0, 0] == 0 and data.splits['test'].sparse[0, 0] == 0
  assert data.schema.sparse[0].vocab_size == 2
  assert data.state['min_count'] == 2


def test_default_train_file_missing_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"\['train\.txt'\] not found"):
    criteo.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"\['v\.txt'\] not found"):
    (tmp_path / 'train.txt').write_text('x')
    criteo.load(str(tmp_path), valid_file='v.txt')


HEADER = ','.join(criteo.COLUMNS) + '\n'
GOOD = '0,1,2,3,4,5,6,7,8,9,10,11,12,13,' + ','.join(['a'] * 26) + '\n'


@pytest.mark.parametrize('bad,message', [
    (GOOD.replace(',5,', ',five,', 1), r"f\.csv:3: field 'I5': 'five' is not a finite number"),
    (GOOD.replace('0,', '2,', 1), r"f\.csv:3: field 'label': label '2' is not 0 or 1"),
    (GOOD.replace(',a', '', 1), r'f\.csv:3: expected 40 columns, got 39'),
    ('\n' + GOOD, r'f\.csv:3: blank line'),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad, message):
  path = tmp_path / 'f.csv'
  path.write_text(HEADER + GOOD + bad + GOOD)
  with pytest.raises(DataFormatError, match=message):
    criteo.parse_file(str(path))


def test_bad_files(tmp_path):
  path = tmp_path / 'f.csv'
  path.write_text('')
  with pytest.raises(DataFormatError, match=r'f\.csv: file is empty'):
    criteo.parse_file(str(path))
  path.write_text(HEADER.replace('\n', ',extra\n') + GOOD.replace('\n', ',1\n'))
  with pytest.raises(DataFormatError, match=r"f\.csv:1: unexpected columns \['extra'\]"):
    criteo.parse_file(str(path))
  path.write_text(HEADER.replace('C26', 'C27'))
  path.write_text(HEADER.replace('C26', 'C27') + GOOD)
  with pytest.raises(DataFormatError, match=r"f\.csv:1: unexpected columns \['C27'\]"):
    criteo.parse_file(str(path))
  path.write_text('\t'.join(['1'] * 14 + ['a'] * 25) + '\n')  # Kaggle test.txt: no label
  with pytest.raises(DataFormatError, match=r'f\.csv:1: expected 40 columns .* got 39 \(Kaggle'):
    criteo.parse_file(str(path))
  with pytest.raises(FileNotFoundError, match='nothing.csv'):
    criteo.parse_file(str(tmp_path / 'nothing.csv'))
