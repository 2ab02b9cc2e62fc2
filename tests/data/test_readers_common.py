"""Shared reader pieces: errors, vocabularies, delimited files, seeded splits, the registry."""

import json
import pickle

import numpy as np
import pytest

from jaxrec.data import datasets
from jaxrec.data.errors import DataFormatError, data_lines, read_text, require_dir_files
from jaxrec.data.tabular import parse_binary_labels, parse_numbers, read_delimited, split_fractions
from jaxrec.data.vocab import OOV_ID, Vocabulary


def test_data_format_error_message_and_pickle():
  e = DataFormatError('/d/f.txt', 7, "field 'I5': 'x' is not a number")
  assert isinstance(e, ValueError)
  assert str(e) == "/d/f.txt:7: field 'I5': 'x' is not a number"
  assert (e.path, e.line) == ('/d/f.txt', 7)
  assert str(DataFormatError('/d/f.txt', None, 'file is empty')) == '/d/f.txt: file is empty'
  again = pickle.loads(pickle.dumps(e))
  assert str(again) == str(e) and again.line == 7


def test_read_text_missing_empty_and_blank_lines(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.txt'):
    read_text(str(tmp_path / 'nope.txt'))
  empty = tmp_path / 'empty.txt'
  empty.write_text('  \n\n')
  with pytest.raises(DataFormatError, match=r'empty\.txt: file is empty'):
    read_text(str(empty))
  assert data_lines('p', 'a\nb\n\n \n') == ['a', 'b']
  with pytest.raises(DataFormatError, match=r'^p:2: blank line'):
    data_lines('p', 'a\n\nb\n')


def test_require_dir_files_lists_expected_names(tmp_path):
  (tmp_path / 'a.txt').write_text('x')
  with pytest.raises(FileNotFoundError) as info:
    require_dir_files(str(tmp_path), ['a.txt', 'b.txt'], 'demo')
  assert "['b.txt'] not found" in str(info.value) and str(tmp_path) in str(info.value)
  assert "expected files: ['a.txt', 'b.txt']" in str(info.value)


def test_vocabulary_fit_orders_by_count_then_token():
  v = Vocabulary.fit(np.array(['b', 'a', 'c', 'a', 'b', '', 'a']), min_count=1)
  # counts: a 3, b 2, '' 1, c 1 -> ids 1.. in that order ('' < 'c').
  assert v.tokens == ('a', 'b', '', 'c')
  assert v.size == 5
  np.testing.assert_array_equal(v.lookup(np.array([['a', 'c'], ['zz', '']])), [[1, 4], [0, 3]])
  assert v.lookup(['a']).dtype == np.int32
  assert OOV_ID == 0


def test_vocabulary_min_count_and_round_trip():
  v = Vocabulary.fit(['x', 'y', 'x', 'z', 'x', 'y'], min_count=2)
  assert v.tokens == ('x', 'y')
  np.testing.assert_array_equal(v.lookup(['z', 'y', 'x']), [0, 2, 1])
  again = Vocabulary.from_dict(json.loads(json.dumps(v.to_dict())))
  assert again == v
  np.testing.assert_array_equal(again.lookup(['z', 'y', 'x']), [0, 2, 1])
  with pytest.raises(ValueError, match='min_count'):
    Vocabulary.fit(['a'], min_count=0)
  empty = Vocabulary.fit(['a'], min_count=5)
  np.testing.assert_array_equal(empty.lookup(['a', 'b']), [0, 0])
  assert empty.size == 1


def test_vocabulary_ids_do_not_depend_on_row_order():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 50, 1000).astype(str)
  a = Vocabulary.fit(values)
  b = Vocabulary.fit(values[rng.permutation(1000)])
  assert a == b


def test_read_delimited_header_detection_and_errors(tmp_path):
  p = tmp_path / 'x.csv'
  p.write_text('label,a,b\n1,x,\n0,y,z\n')
  t = read_delimited(str(p))
  assert t.header == ('label', 'a', 'b')
  np.testing.assert_array_equal(t.cells, [['1', 'x', ''], ['0', 'y', 'z']])
  np.testing.assert_array_equal(t.lines, [2, 3])
  p.write_text('1\tx\n0\ty\n')
  t = read_delimited(str(p))
  assert t.header is None and t.cells.shape == (2, 2)
  p.write_text('label,a\n1,x\n0,y,z\n')
  with pytest.raises(DataFormatError, match=r'x\.csv:3: expected 2 columns, got 3'):
    read_delimited(str(p))
  p.write_text('label,a\n1,x\n\n0,y\n')
  with pytest.raises(DataFormatError, match=r'x\.csv:3: blank line'):
    read_delimited(str(p))
  p.write_text('label,a\n')
  with pytest.raises(DataFormatError, match='no data rows'):
    read_delimited(str(p))


def test_parse_labels_and_numbers_name_line_and_field():
  lines = np.array([2, 3, 4])
  np.testing.assert_array_equal(parse_binary_labels('f', np.array(['1', '0', '1.0']), lines),
                                [1, 0, 1])
  with pytest.raises(DataFormatError, match=r"^f:3: field 'label': label '2' is not 0 or 1"):
    parse_binary_labels('f', np.array(['1', '2', '0']), lines)
  np.testing.assert_array_equal(parse_numbers('f', np.array(['1', '-2.5', '3e2']), lines, 'I1'),
                                [1, -2.5, 300])
  with pytest.raises(DataFormatError, match=r"^f:4: field 'I1': 'abc' is not a finite number"):
    parse_numbers('f', np.array(['1', '2', 'abc']), lines, 'I1')
  with pytest.raises(DataFormatError, match=r"^f:2: field 'I1': 'nan'"):
    parse_numbers('f', np.array(['nan', '2', '3']), lines, 'I1')


@pytest.mark.parametrize('n', [1, 9, 10, 115, 1000])
def test_split_fractions_keeps_every_row_once(n):
  parts = split_fractions(n, (0.8, 0.1, 0.1), seed=3)
  allrows = np.concatenate(list(parts.values()))
  np.testing.assert_array_equal(np.sort(allrows), np.arange(n))
  assert len(parts['valid']) == round(n * 0.1) and len(parts['test']) == round(n * 0.1)
  for ix in parts.values():
    assert (np.diff(ix) > 0).all()  # file order kept
  again = split_fractions(n, [0.8, 0.1, 0.1], seed=3)
  for k in parts:
    np.testing.assert_array_equal(parts[k], again[k])


def test_split_fractions_validates():
  assert set(split_fractions(10, (0.9, 0.0, 0.1), 0)) == {'train', 'test'}
  for bad in [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)]:
    with pytest.raises(ValueError, match='fractions'):
      split_fractions(10, bad, 0)


def test_registry():
  real = ('frappe', 'movielens', 'criteo', 'avazu', 'libffm')
  assert set(real) <= set(datasets.DATASETS)
  for name in real:
    module = datasets.DATASETS[name]
    assert callable(module.load) and callable(module.read_file)
    urls = module.DOWNLOAD_URLS.values()
    assert urls and all(u.startswith('https://') for u in urls)
    assert 'DOWNLOAD_URLS' in module.__doc__, name
    assert all(u in module.__doc__ for u in list(urls)[:1]), name
  with pytest.raises(ValueError) as info:
    datasets.load_dataset('kdd12', '/tmp')
  for name in datasets.DATASETS:
    assert name in str(info.value)
  with pytest.raises(ValueError, match='known datasets'):
    datasets.read_split_file('nope', '/tmp/x', {})
  with pytest.raises(ValueError, match='needs a data_dir'):
    datasets.load_dataset('frappe', None)


def test_state_of_another_dataset_is_refused(tmp_path):
  with pytest.raises(ValueError, match="state is for dataset 'criteo', not 'avazu'"):
    datasets.read_split_file('avazu', str(tmp_path / 'x.csv'), {'dataset': 'criteo', 'version': 1})
