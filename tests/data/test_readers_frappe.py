"""Frappe_x1 readers: the libfm layout on the real files, the BARS csv layout, libfm errors."""

import json
import time

import numpy as np
import pytest

from jaxrec.data import frappe
from jaxrec.data.datasets import load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError
from jaxrec.data.libfm import read_libfm

NAMES = frappe.FIELD_NAMES
SIZES = frappe.FIELD_SIZES
# Field offsets by hand: 0, 957, 957+4082, +7, +7, +2, +3, +2, +9, +80.
OFFSETS = (0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149)
CANONICAL = ('-1 296:1 4528:1 5040:1 5049:1 5054:1 5055:1 5058:1 5060:1 5073:1 5249:1\n'
             '1 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1\n')


@pytest.fixture(scope='module')
def frappe_data(shared_data):
  start = time.perf_counter()
  data = load_dataset('frappe', str(shared_data / 'frappe'))
  return data, time.perf_counter() - start


def test_real_split_sizes_labels_and_ids(frappe_data):
  data, seconds = frappe_data
  assert seconds < 15, f'loading Frappe took {seconds:.1f} s'
  assert data.name == 'frappe' and set(data.splits) == {'train', 'valid'}
  train, valid = data.splits['train'], data.splits['valid']
  assert (train.num_rows, valid.num_rows) == (202_027, 57_722)
  assert int(train.label.sum()) == 67_604 and int(valid.label.sum()) == 19_063
  assert data.schema.vocab_sizes == SIZES and data.schema.num_dense == 0
  for split in (train, valid):
    assert split.sparse.min() == 0
    assert (split.sparse.max(axis=0) < np.array(SIZES)).all()
  # Every user, item and context value of the 5,382 features occurs in train+valid.
  seen = [len(np.unique(np.r_[train.sparse[:, j], valid.sparse[:, j]])) for j in range(10)]
  assert seen == list(SIZES)


def test_real_first_rows_by_hand(frappe_data):
  data, _ = frappe_data
  # train line 1: -1 296:1 4528:1 5040:1 5049:1 5054:1 5055:1 5058:1 5060:1 5073:1 5249:1
  np.testing.assert_array_equal(data.splits['train'].sparse[0],
                                [296, 4528 - 957, 1, 3, 1, 0, 0, 0, 4, 100])
  assert data.splits['train'].label[0] == 0
  # validation line 1: 1 266:1 1244:1 5042:1 5049:1 5054:1 5055:1 5058:1 5062:1 5074:1 5149:1
  np.testing.assert_array_equal(data.splits['valid'].sparse[0],
                                [266, 287, 3, 3, 1, 0, 0, 2, 5, 0])
  assert data.splits['valid'].label[0] == 1


def test_real_round_trip_through_json_state(frappe_data, shared_data):
  data, _ = frappe_data
  state = json.loads(json.dumps(data.state))
  assert state['schema'] == data.schema.to_dict()
  again = read_split_file('frappe', str(shared_data / 'frappe' / 'frappe.validation.libfm'), state)
  for k, v in data.splits['valid'].arrays().items():
    np.testing.assert_array_equal(again.arrays()[k], v, err_msg=k)


def test_real_as_bars_csv_layout(shared_data, tmp_path):
  """The first rows of the real files written in the BARS csv layout read back consistently."""
  src = {'train': 'frappe.train.libfm', 'valid': 'frappe.validation.libfm'}
  dst = {'train': 'train.csv', 'valid': 'valid.csv'}
  libfm_rows = {}
  for k in src:
    lines = (shared_data / 'frappe' / src[k]).read_text().splitlines()[:3000]
    rows = []
    for line in lines:
      tok = line.split()
      rows.append(['1' if tok[0] == '1' else '0'] + [t.split(':')[0] for t in tok[1:]])
    libfm_rows[k] = np.array(rows, dtype=np.int64)
    (tmp_path / dst[k]).write_text('label,' + ','.join(NAMES) + '\n'
                                   + ''.join(','.join(r) + '\n' for r in rows))
  data = frappe.load(str(tmp_path))
  assert data.state['layout'] == 'csv' and set(data.splits) == {'train', 'valid'}
  for k in src:
    ds = data.splits[k]
    np.testing.assert_array_equal(ds.label, libfm_rows[k][:, 0])
    for j, name in enumerate(NAMES):
      tokens = np.array(['<oov>'] + data.state['vocabularies'][name]['tokens'])
      decoded = tokens[ds.sparse[:, j]]
      raw = libfm_rows[k][:, 1 + j].astype(str)
      if k == 'train':  # every train value is in the vocabulary
        np.testing.assert_array_equal(decoded, raw)
      else:  # valid values unseen in train map to the OOV id 0
        seen = np.isin(raw, tokens[1:])
        np.testing.assert_array_equal(decoded[seen], raw[seen])
        assert (ds.sparse[~seen, j] == 0).all()
  # Most frequent train value first (FuxiCTR order): the top user has id 1.
  users, counts = np.unique(libfm_rows['train'][:, 1], return_counts=True)
  top = min(users[counts == counts.max()].astype(str).tolist())
  assert data.state['vocabularies']['user']['tokens'][0] == top
  again = read_split_file('frappe', str(tmp_path / 'valid.csv'), json.loads(json.dumps(data.state)))
  np.testing.assert_array_equal(again.sparse, data.splits['valid'].sparse)


def test_csv_layout_errors(tmp_path):
  header = 'label,' + ','.join(NAMES) + '\n'
  (tmp_path / 'train.csv').write_text(header + '1,' + ','.join(['7'] * 10) + '\n')
  (tmp_path / 'valid.csv').write_text(header + '2,' + ','.join(['7'] * 10) + '\n')
  with pytest.raises(DataFormatError,
                     match=r"valid\.csv:2: field 'label': label '2' is not 0 or 1"):
    frappe.load(str(tmp_path))
  (tmp_path / 'valid.csv').write_text(header.replace('city', 'town') + '1,' + ','.join(['7'] * 10))
  with pytest.raises(DataFormatError, match=r"valid\.csv:1: header .* does not hold exactly"):
    frappe.load(str(tmp_path))
  (tmp_path / 'valid.csv').write_text(header + '1,' + ','.join(['7'] * 9) + '\n')
  with pytest.raises(DataFormatError, match=r'valid\.csv:2: expected 11 columns, got 10'):
    frappe.load(str(tmp_path))


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    frappe.load(str(tmp_path))
  for name in ('frappe.train.libfm', 'frappe.validation.libfm', 'train.csv', 'valid.csv'):
    assert name in str(info.value)
  (tmp_path / 'frappe.train.libfm').write_text(CANONICAL)
  with pytest.raises(FileNotFoundError, match=r"\['frappe\.validation\.libfm'\] not found"):
    frappe.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='missing.libfm'):
    read_libfm(str(tmp_path / 'missing.libfm'), NAMES, SIZES)


def test_optional_test_split(tmp_path):
  for name in ('frappe.train.libfm', 'frappe.validation.libfm', 'frappe.test.libfm'):
    (tmp_path / name).write_text(CANONICAL)
  data = frappe.load(str(tmp_path))
  assert set(data.splits) == {'train', 'valid', 'test'}
  np.testing.assert_array_equal(data.splits['test'].sparse[1],
                                [0, 0, 0, 0, 0, 0, 0, 0, 0, 232])
  np.testing.assert_array_equal(data.splits['test'].label, [0, 1])


def _write(tmp_path, text):
  p = tmp_path / 'f.libfm'
  p.write_text(text)
  return str(p)


def test_libfm_non_canonical_spacing_parses_like_canonical(tmp_path):
  canonical = read_libfm(_write(tmp_path, CANONICAL), NAMES, SIZES)
  loose = CANONICAL.replace(' ', '\t', 3).replace('5055:1', '5055:1.0').replace('\n1 ', '\n+1  ')
  other = read_libfm(_write(tmp_path, loose.replace('\n', '\r\n') + '\n\n'), NAMES, SIZES)
  for k, v in canonical.arrays().items():
    np.testing.assert_array_equal(other.arrays()[k], v, err_msg=k)
  np.testing.assert_array_equal(canonical.sparse[0], [296, 3571, 1, 3, 1, 0, 0, 0, 4, 100])


BAD_LINES = [
    # (second line, message regex): the first line is always good.
    ('1 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1',
     r'f\.libfm:2: expected 11 tokens .* got 10'),
    ('1 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1 5381:1',
     r'f\.libfm:2: expected 11 tokens .* got 12'),
    ('2 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: label '2' is not 1, -1 or 0"),
    ('yes 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: label 'yes'"),
    ('1 0:1 957:1 5038:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: field 'daytime': index 5038 .* outside the field's range \[5039, 5046\)"),
    ('1 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5382:1',
     r"f\.libfm:2: field 'city': index 5382 .* outside the field's range \[5149, 5382\)"),
    ('1 0:1 957:2 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: field 'item': value '2' .* is not 1"),
    ('1 0:1 957:1 5039:1 5046 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: field 'weekday': token '5046' is not index:value"),
    ('1 0:1 957:1 5039:1 5046:1 5053:1:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: field 'isweekend': token '5053:1:1' is not index:value"),
    ('1 0:1 957:1 5039:1 5046:1 5053:1 x:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: field 'homework': token 'x:1' is not integer_index:number"),
    ('1:1 0 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5381:1',
     r"f\.libfm:2: label '1:1'"),
    ('', r'f\.libfm:2: blank line'),
]


@pytest.mark.parametrize('line,message', BAD_LINES)
def test_libfm_bad_lines_name_file_line_and_field(tmp_path, line, message):
  first = CANONICAL.splitlines()[0]
  path = _write(tmp_path, f'{first}\n{line}\n{first}\n')
  with pytest.raises(DataFormatError, match=message) as info:
    read_libfm(path, NAMES, SIZES)
  assert info.value.path == path and info.value.line == 2


def test_libfm_empty_file(tmp_path):
  with pytest.raises(DataFormatError, match=r'f\.libfm: file is empty'):
    read_libfm(_write(tmp_path, ''), NAMES, SIZES)
