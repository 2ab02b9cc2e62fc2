"""Tests of jaxrec.data.tfds: build array_record TFDS datasets without TensorFlow, read back."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import avazu, criteo, frappe, libffm, movielens
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.data.tfds import builders, rows
from jaxrec.data.tfds.builder import CTRBuilder, CTRConfig
from jaxrec.data.tfds.source import (TFDSSource, schema_from_info, source_from_builder,
                                     state_from_info)

KEYS = rows.FEATURE_KEYS

# A hand-made dataset exercising every feature: 2 one-hot fields, 3 dense, 2 multi-hot fields.
SCHEMA = FeatureSchema(
    sparse=(SparseField('user', 7), SparseField('tags', 11, max_length=4, pooling='sum'),
            SparseField('item', 5), SparseField('genres', 6, max_length=3)),
    dense=('d0', 'd1', 'd2'))
LAYOUT = rows.RowLayout(num_sparse=2, num_dense=3, num_multi_hot=2, max_multi_hot_length=4)
STATE = {'vocab': {3: 'x', 'a': (1, 2.5)}, 'mean': np.arange(3, dtype=np.float32) / 3,
         'count': np.int64(7), 'names': ['u', 'v'], '__odd': None}


def hand_made(n: int, seed: int) -> ArrayDataset:
  rng = np.random.default_rng(seed)
  lengths = np.stack([rng.integers(0, 5, n), rng.integers(0, 4, n)], axis=1)
  ids = np.zeros((n, 2, 4), np.int32)
  weights = np.zeros((n, 2, 4), np.float32)
  for j, vocab in enumerate((11, 6)):
    valid = np.arange(4)[None, :] < lengths[:, j:j + 1]
    ids[:, j] = np.where(valid, rng.integers(0, vocab, (n, 4)), 0)
    weights[:, j] = np.where(valid, rng.random((n, 4)), 0)
  return ArrayDataset(SCHEMA, sparse=np.stack([rng.integers(0, 7, n), rng.integers(0, 5, n)], 1),
                      label=rng.integers(0, 2, n), dense=rng.normal(size=(n, 3)),
                      multi_hot_ids=ids, multi_hot_lengths=lengths, multi_hot_weights=weights,
                      name=f'hand_made_{seed}')


@dataclasses.dataclass
class _Loaded:
  name: str
  schema: FeatureSchema
  splits: dict[str, ArrayDataset]
  state: Any


class HandMade(CTRBuilder, skip_registration=True):
  """Reads `train.npz` / `validation.npz` (an ArrayDataset's arrays) from manual_dir."""
  name = 'jaxrec_test_hand_made'
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put train.npz and validation.npz in manual_dir.'
  BUILDER_CONFIGS = [
      CTRConfig(name='default', layout=LAYOUT, files=('train.npz', 'validation.npz'))]

  @classmethod
  def read(cls, manual_dir, options):
    splits = {}
    for split in ('train', 'validation'):
      with np.load(manual_dir / f'{split}.npz') as z:
        splits[split] = ArrayDataset(SCHEMA, name=split, **{k: z[k] for k in KEYS})
    return _Loaded('hand_made', SCHEMA, splits, STATE)


@pytest.fixture(scope='module')
def hand_made_built(tmp_path_factory):
  manual = tmp_path_factory.mktemp('manual')
  want = {'train': hand_made(300, 0), 'validation': hand_made(37, 1)}
  for split, ds in want.items():
    np.savez(manual / f'{split}.npz', **ds.arrays())
  data_dir = tmp_path_factory.mktemp('tfds')
  builder = HandMade(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder, want, manual


def assert_same_rows(got: dict[str, np.ndarray], want: dict[str, np.ndarray]):
  assert set(got) == set(want)
  for k in want:
    assert got[k].dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_hand_made_round_trip(hand_made_built):
  builder, want, _ = hand_made_built
  assert builder.info.file_format.value == 'array_record'
  assert sorted(p.name for p in pathlib.Path(builder.data_dir).glob('*.array_record*')) == [
      'jaxrec_test_hand_made-train.array_record-00000-of-00001',
      'jaxrec_test_hand_made-validation.array_record-00000-of-00001']
  for split, ds in want.items():
    data = builder.as_data_source(split=split)
    assert len(data) == ds.num_rows
    row = data[5]
    assert set(row) == set(KEYS)
    for k in KEYS:
      np.testing.assert_array_equal(row[k], ds.arrays()[k][5], err_msg=k)
    source = source_from_builder(builder, split)
    assert_same_rows(source.to_array_dataset(chunk_rows=64).arrays(), ds.arrays())


def test_metadata_round_trip_from_directory(hand_made_built):
  builder, _, _ = hand_made_built
  # A fresh builder, and the code-free read-only builder, both restore schema and state from disk.
  for b in (HandMade(data_dir=builder.data_dir_root),
            tfds.builder_from_directory(builder.data_dir)):
    assert schema_from_info(b.info) == SCHEMA
    state = state_from_info(b.info)
    assert state.keys() == STATE.keys()
    assert state['vocab'] == {3: 'x', 'a': (1, 2.5)}
    assert state['mean'].dtype == np.float32
    np.testing.assert_array_equal(state['mean'], STATE['mean'])
    assert type(state['count']) is np.int64 and state['count'] == 7
    assert state['names'] == ['u', 'v'] and state['__odd'] is None
    assert_same_rows(source_from_builder(b, 'validation').read(np.arange(37)),
                     hand_made(37, 1).arrays())


@pytest.mark.parametrize('shuffle,start', [(False, 0), (True, 0), (True, 3)])
def test_source_batches_equal_array_dataset_batches(hand_made_built, shuffle, start):
  builder, want, _ = hand_made_built
  source = source_from_builder(builder, 'train')
  assert source.num_rows == 300 and source.schema == SCHEMA
  got = list(source.batches(64, shuffle=shuffle, seed=4, epoch=2, start=start))
  ref = list(want['train'].batches(64, shuffle=shuffle, seed=4, epoch=2, start=start))
  assert len(got) == len(ref) == 5 - start
  for g, r in zip(got, ref):
    assert_same_rows(g, r)


def test_capped_config_keeps_first_rows(hand_made_built, tmp_path):
  _, want, manual = hand_made_built
  config = HandMade.BUILDER_CONFIGS[0].capped(20)
  builder = HandMade(data_dir=tmp_path, config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  assert builder.data_dir.endswith('default_first20/1.0.0')
  assert builder.info.metadata[rows.MAX_ROWS_KEY] == 20
  for split in ('train', 'validation'):
    got = source_from_builder(builder, split).to_array_dataset()
    assert_same_rows(got.arrays(), want[split].take(np.arange(20)).arrays())


def test_missing_manual_dir_names_folder_and_files(tmp_path):
  missing = tmp_path / 'no_such_folder'
  builder = HandMade(data_dir=tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='no_such_folder') as e:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=missing))
  assert 'train.npz' in str(e.value) and 'validation.npz' in str(e.value)
  partial = tmp_path / 'partial'
  partial.mkdir()
  (partial / 'train.npz').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match=r"partial lacks \['validation.npz'\]"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=partial))


def test_layout_mismatch_is_an_error(hand_made_built, tmp_path):
  _, _, manual = hand_made_built
  config = dataclasses.replace(HandMade.BUILDER_CONFIGS[0], name='wrong',
                               layout=rows.RowLayout(num_sparse=3, num_dense=3, num_multi_hot=2,
                                                     max_multi_hot_length=4))
  builder = HandMade(data_dir=tmp_path, config=config)
  with pytest.raises(ValueError, match='declares RowLayout'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))


def test_source_rejects_out_of_range_rows_and_ids(hand_made_built):
  builder, _, _ = hand_made_built
  source = source_from_builder(builder, 'validation')
  with pytest.raises(IndexError, match='row 37 is outside'):
    source.read([0, 37])
  small = dataclasses.replace(SCHEMA, sparse=(SparseField('user', 1),) + SCHEMA.sparse[1:])
  strict = TFDSSource(builder.as_data_source(split='validation'), small, name='strict')
  with pytest.raises(ValueError, match="field 'user' id"):
    strict.read(np.arange(37))


def test_encode_json_refuses_unknown_objects():
  with pytest.raises(TypeError, match=r"state\['f'\]\[1\]: a object cannot"):
    rows.encode_json({'f': [1, object()]})


# --- The real datasets (../shared/data), built through their jaxrec readers. ---


def build(builder_cls, config, manual_dir, data_dir) -> tuple[tfds.core.DatasetBuilder, float]:
  """Builds ``config`` of ``builder_cls`` into ``data_dir``; returns it and the seconds taken."""
  builder = builder_cls(data_dir=data_dir, config=config)
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder, time.perf_counter() - start


def check_against_reader(builder, loaded, max_rows=None, sample=None, seed=0):
  """Row counts, metadata and rows of every split equal the reader's, exactly.

  Compares all rows, or ``sample`` random rows plus the first and last of each split.
  """
  assert builder.info.file_format.value == 'array_record'
  assert set(builder.info.splits) == set(loaded.splits)
  assert schema_from_info(builder.info) == loaded.schema
  assert state_from_info(builder.info) == loaded.state
  assert builder.info.metadata[rows.MAX_ROWS_KEY] == max_rows
  for split, ds in loaded.splits.items():
    n = ds.num_rows if max_rows is None else min(max_rows, ds.num_rows)
    source = source_from_builder(builder, split)
    assert source.num_rows == builder.info.splits[split].num_examples == n
    if sample is None:
      index = np.arange(n)
    else:
      index = np.unique(np.r_[0, n - 1, np.random.default_rng(seed).integers(0, n, sample)])
    assert_same_rows(source.read(index), ds.take(index).arrays())


REAL = {  # test id -> (builder, config name, shared_data folder, reader module, reader options)
    'criteo_deepctr': (builders.CriteoBuilder, 'deepctr_sample', 'criteo', criteo,
                       dict(train_file='deepctr_criteo_sample.txt')),
    'criteo_torchrechub': (builders.CriteoBuilder, 'torchrechub_sample', 'criteo', criteo,
                           dict(train_file='torchrechub_criteo_sample.csv')),
    'avazu_deepctr': (builders.AvazuBuilder, 'deepctr_sample', 'avazu', avazu,
                      dict(train_file='deepctr_avazu_sample.txt')),
    'avazu_ringares': (builders.AvazuBuilder, 'ringares_sample', 'avazu', avazu,
                       dict(train_file='ringares_avazu_sample.txt')),
    'avazu_torchrechub': (builders.AvazuBuilder, 'torchrechub_sample', 'avazu', avazu,
                          dict(train_file='torchrechub_avazu_train_sample.csv',
                               valid_file='torchrechub_avazu_valid_sample.csv',
                               test_file='torchrechub_avazu_test_sample.csv')),
    'libffm_xlearn': (builders.LibFFMBuilder, 'xlearn_criteo_sample', 'criteo', libffm,
                      dict(train_file='xlearn_small_train.libffm',
                           test_file='xlearn_small_test.libffm')),
}


@pytest.mark.parametrize('case', sorted(REAL))
def test_small_real_datasets_equal_reader(case, shared_data, tmp_path):
  builder_cls, config, folder, reader, options = REAL[case]
  builder, _ = build(builder_cls, config, shared_data / folder, tmp_path)
  check_against_reader(builder, reader.load(str(shared_data / folder), **options))


def test_criteo_sample_source_batches_equal_reader_batches(shared_data, tmp_path):
  builder, _ = build(builders.CriteoBuilder, 'deepctr_sample', shared_data / 'criteo', tmp_path)
  ref = criteo.load(str(shared_data / 'criteo'), train_file='deepctr_criteo_sample.txt')
  source = source_from_builder(builder, 'train')
  for got, want in zip(source.batches(48, shuffle=True, seed=1, epoch=3),
                       ref.splits['train'].batches(48, shuffle=True, seed=1, epoch=3), strict=True):
    assert_same_rows(got, want)


def test_movielens_first_rows_equal_reader(shared_data, tmp_path):
  config = builders.MovieLensBuilder.BUILDER_CONFIGS[0].capped(1500)
  builder, _ = build(builders.MovieLensBuilder, config, shared_data / 'movielens-100k', tmp_path)
  check_against_reader(builder, movielens.load(str(shared_data / 'movielens-100k')), max_rows=1500)


def test_frappe_first_rows_equal_reader(shared_data, tmp_path):
  config = builders.FrappeBuilder.BUILDER_CONFIGS[0].capped(3000)
  builder, seconds = build(builders.FrappeBuilder, config, shared_data / 'frappe', tmp_path)
  print(f'frappe first 3000 rows per split: built in {seconds:.1f} s')
  check_against_reader(builder, frappe.load(str(shared_data / 'frappe')), max_rows=3000)
  # Also reachable by its registered TFDS name, read back without the config object.
  again = tfds.builder('jaxrec_frappe/libfm_first3000', data_dir=tmp_path)
  assert again.info.splits['valid'].num_examples == 3000


@pytest.mark.slow
def test_frappe_full_build_equals_reader(shared_data, tmp_path):
  builder, seconds = build(builders.FrappeBuilder, 'libfm', shared_data / 'frappe', tmp_path)
  print(f'frappe full (202,027 + 57,722 rows): built in {seconds:.1f} s')
  loaded = frappe.load(str(shared_data / 'frappe'))
  assert {k: v.num_rows for k, v in loaded.splits.items()} == {'train': 202027, 'valid': 57722}
  check_against_reader(builder, loaded, sample=2000)


def test_real_builder_missing_manual_dir_names_folder_and_files(shared_data, tmp_path):
  builder = builders.FrappeBuilder(data_dir=tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='frappe_files_here') as e:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / 'frappe_files_here'))
  assert 'frappe.train.libfm' in str(e.value) and 'frappe.validation.libfm' in str(e.value)
  # A real folder of another dataset: the missing files are named, with where to get them.
  builder = builders.CriteoBuilder(data_dir=tmp_path / 'tfds', config='kaggle')
  with pytest.raises(FileNotFoundError, match=r"lacks \['train.txt'\]") as e:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=shared_data / 'criteo'))
  assert criteo.DOWNLOAD_URLS['kaggle'] in str(e.value)


def test_builders_record_public_sources():
  for cls in builders.BUILDERS:
    assert cls.name.startswith('jaxrec_') and tfds.builder_cls(cls.name) is cls
    assert cls.DOWNLOAD_URLS is cls.READER.DOWNLOAD_URLS and cls.HOMEPAGE and cls.CITATION
    for url in cls.DOWNLOAD_URLS.values():
      assert url in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    for config in cls.BUILDER_CONFIGS:
      assert all(f in cls.MANUAL_DOWNLOAD_INSTRUCTIONS for f in config.files)
