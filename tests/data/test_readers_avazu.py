"""Avazu reader: the real raw and index-encoded samples, hour fields, splits, errors."""

import json

import numpy as np
import pytest

from jaxrec.data import avazu
from jaxrec.data.datasets import load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError
from jaxrec.data.tabular import split_fractions

RAW_COLUMNS = ('C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,'
               'device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,'
               'C19,C20,C21').split(',')
# file -> (rows, clicks), counted with awk.
RAW = {'deepctr_avazu_sample.txt': (100, 20), 'ringares_avazu_sample.txt': (999, 159)}


def _decode(state, field, ids):
  return np.array(['<oov>'] + state['vocabularies'][field]['tokens'])[ids]


@pytest.mark.parametrize('name', RAW)
def test_real_raw_samples(shared_data, name):
  rows, clicks = RAW[name]
  data = load_dataset('avazu', str(shared_data / 'avazu'), train_file=name)
  assert [f.name for f in data.schema.sparse] == ['weekday', 'hour_of_day'] + RAW_COLUMNS
  assert data.schema.sparse[0].vocab_size == 8 and data.schema.sparse[1].vocab_size == 25
  assert 'id' not in [f.name for f in data.schema.sparse] and data.schema.num_dense == 0
  assert sum(v.num_rows for v in data.splits.values()) == rows
  assert int(sum(v.label.sum() for v in data.splits.values())) == clicks
  for v in data.splits.values():
    assert (v.sparse >= 0).all() and (v.sparse < np.array(data.schema.vocab_sizes)).all()
  state = json.loads(json.dumps(data.state))
  whole = read_split_file('avazu', str(shared_data / 'avazu' / name), state)
  for k, ix in split_fractions(rows, (0.8, 0.1, 0.1), 0).items():
    for key, value in data.splits[k].arrays().items():
      np.testing.assert_array_equal(whole.take(ix).arrays()[key], value, err_msg=f'{k} {key}')


def test_real_first_row_by_hand(shared_data):
  data = avazu.load(str(shared_data / 'avazu'), train_file='deepctr_avazu_sample.txt',
                    split=(1.0, 0.0, 0.0))
  ds = data.splits['train']
  # 1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,
  # a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79
  # hour 14102100: 2014-10-21, a Tuesday, 00h.
  assert ds.label[0] == 0
  decoded = [str(_decode(data.state, f.name, ds.sparse[0, j]))
             for j, f in enumerate(data.schema.sparse)]
  assert decoded == ['1', '0', '1005', '0', '1fbe01fe', 'f3845767', '28905ebd', 'ecad2386',
                     '7801e8d9', '07d7df22', 'a99f214a', 'ddd2926e', '44956a24', '1', '2', '15706',
                     '320', '50', '1722', '0', '35', '-1', '79']
  assert ds.sparse[0, 0] == 2 and ds.sparse[0, 1] == 1  # fixed vocabularies: token '1' / '0'


def test_real_index_encoded_split_files(shared_data):
  data = avazu.load(str(shared_data / 'avazu'), train_file='torchrechub_avazu_train_sample.csv',
                    valid_file='torchrechub_avazu_valid_sample.csv',
                    test_file='torchrechub_avazu_test_sample.csv')
  assert {k: v.num_rows for k, v in data.splits.items()} == {'train': 70, 'valid': 10, 'test': 20}
  assert {k: int(v.label.sum()) for k, v in data.splits.items()} == {'train': 15, 'valid': 4,
                                                                      'test': 4}
  assert [f.name for f in data.schema.sparse] == [f'feat_{i}' for i in range(1, 23)]
  assert (data.splits['train'].sparse > 0).all()
  # valid line 2: 0,1,9,17,3581,... (feat_1 = '1', feat_2 = '9', feat_3 = '17')
  valid = data.splits['valid']
  decoded = [str(_decode(data.state, f'feat_{i}', valid.sparse[0, i - 1])) for i in (1, 2)]
  assert decoded == ['1', '9']
  again = read_split_file('avazu', str(shared_data / 'avazu' / 'torchrechub_avazu_test_sample.csv'),
                          json.loads(json.dumps(data.state)))
  np.testing.assert_array_equal(again.sparse, data.splits['test'].sparse)


HEADER = 'id,click,hour,C1,site_id\n'


def _load(tmp_path, train, valid=None):
  (tmp_path / 'train.csv').write_text(train)
  if valid is None:
    return avazu.load(str(tmp_path), split=(1.0, 0.0, 0.0))
  (tmp_path / 'valid.csv').write_text(valid)
  return avazu.load(str(tmp_path), valid_file='valid.csv')


def test_hour_fields_and_oov(tmp_path):
  data = _load(tmp_path, HEADER + '1,1,14102923,a,s\n2,0,16022900,b,s\n',
               HEADER + '3,0,14102600,c,s\n')
  train = data.splits['train']
  # 2014-10-29 is a Wednesday (token '2'), 2016-02-29 a Monday ('0'); ids are token + 1.
  np.testing.assert_array_equal(train.sparse[:, 0], [3, 1])
  np.testing.assert_array_equal(train.sparse[:, 1], [24, 1])
  valid = data.splits['valid']
  assert valid.sparse[0, 0] == 7 and valid.sparse[0, 1] == 1  # Sunday, 00h
  assert valid.sparse[0, 2] == 0  # C1 'c' unseen in train


@pytest.mark.parametrize('hour', ['14103200', '1410210', '14102124', '141021ab', '15022900'])
def test_malformed_hour(tmp_path, hour):
  with pytest.raises(DataFormatError, match=rf"train\.csv:3: field 'hour': '{hour}' is not a valid "
                     'YYMMDDHH time'):
    _load(tmp_path, HEADER + '1,1,14102100,a,s\n' + f'2,0,{hour},b,s\n' + '3,0,14102100,b,s\n')


def test_bad_inputs(tmp_path):
  with pytest.raises(DataFormatError,
                     match=r"train\.csv:2: field 'click': label 'yes' is not 0 or 1"):
    _load(tmp_path, HEADER + '1,yes,14102100,a,s\n')
  with pytest.raises(DataFormatError, match=r'train\.csv:1: no label column'):
    _load(tmp_path, 'id,hour,C1\n1,14102100,a\n')
  with pytest.raises(DataFormatError, match=r'train\.csv:3: expected 5 columns, got 4'):
    _load(tmp_path, HEADER + '1,1,14102100,a,s\n2,1,14102100,a\n')
  with pytest.raises(DataFormatError, match=r"valid\.csv:1: feature columns .* differ"):
    _load(tmp_path, HEADER + '1,1,14102100,a,s\n', 'id,click,hour,C1\n2,0,14102100,a\n')
  with pytest.raises(DataFormatError, match=r'train\.csv: file is empty'):
    _load(tmp_path, '')
  with pytest.raises(FileNotFoundError, match=r"\['nope\.csv'\] not found"):
    avazu.load(str(tmp_path), train_file='nope.csv')
  data = _load(tmp_path, HEADER + '1,1,14102100,a,s\n')
  (tmp_path / 'other.csv').write_text('id,click,hour,C1,device_ip\n1,1,14102100,a,s\n')
  with pytest.raises(DataFormatError, match=r"other\.csv:1: feature columns"):
    avazu.read_file(str(tmp_path / 'other.csv'), data.state)
