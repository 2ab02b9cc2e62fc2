"""Tests of jaxrec.data.fashion_mnist and its TFDS builder, on tiny IDX files made here.

One test reads the real training files from ../shared/data/fashion-mnist when they are there.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrec.data import fashion_mnist as fm
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.datasets import DatasetOption, dataset_options, load_dataset, read_split_file
from jaxrec.data.errors import DataFormatError
from jaxrec.data.schema import FeatureSchema, ImageSchema, SparseField
from jaxrec.data.tfds import fashion_mnist as tfds_fm
from jaxrec.errors import ConfigError

PER_CLASS = 7  # rows of each class in the tiny training files
VPC = 2  # validation rows per class in the tiny tests


def write_idx(path: pathlib.Path, array: np.ndarray, *, magic: int | None = None,
              extra: bytes = b'', cut: int = 0) -> str:
  """Writes ``array`` (uint8) as an IDX file (gzip if ``path`` ends in .gz); ``extra`` bytes are
  appended, the last ``cut`` bytes dropped."""
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = {1: fm.LABELS_MAGIC, 3: fm.IMAGES_MAGIC}[array.ndim]
  data = (magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
          + array.tobytes() + extra)
  data = data[:len(data) - cut]
  with (gzip.open if str(path).endswith('.gz') else open)(path, 'wb') as f:
    f.write(data)
  return str(path)


def write_split(folder: pathlib.Path, prefix: str, images: np.ndarray, labels: np.ndarray,
                gz: bool = True) -> str:
  """Writes ``<prefix>-images-idx3-ubyte[.gz]`` and its labels in ``folder``; the images path."""
  ext = '.gz' if gz else ''
  write_idx(folder / f'{prefix}-labels-idx1-ubyte{ext}', labels)
  return write_idx(folder / f'{prefix}-images-idx3-ubyte{ext}', images)


def make_rows(per_class: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """``uint8 [10 * per_class, size, size]`` random images and shuffled balanced labels."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
  return rng.integers(0, 256, (len(labels), size, size), dtype=np.uint8), labels


@pytest.fixture
def tiny(tmp_path) -> tuple[pathlib.Path, np.ndarray, np.ndarray]:
  """A data dir with tiny training files (70 rows), and their images and labels."""
  images, labels = make_rows(PER_CLASS, 0)
  write_split(tmp_path, 'train', images, labels)
  return tmp_path, images, labels


def reference_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The documented rule, written as a loop: first ``per_class`` rows of each class in the
  seeded order are validation."""
  seen = collections.Counter()
  valid = []
  for i in np.random.default_rng(seed).permutation(len(labels)):
    if seen[labels[i]] < per_class:
      seen[labels[i]] += 1
      valid.append(i)
  valid = np.sort(valid)
  return np.setdiff1d(np.arange(len(labels)), valid), valid


# --- IDX files ---


@pytest.mark.parametrize('name', ['x-images-idx3-ubyte.gz', 'x-images-idx3-ubyte'])
def test_read_idx_round_trip(tmp_path, name):
  images, labels = make_rows(3, 1, size=5)
  got = fm.read_idx(write_idx(tmp_path / name, images))
  assert got.dtype == np.uint8 and got.shape == (30, 5, 5)
  np.testing.assert_array_equal(got, images)
  got = fm.read_idx(write_idx(tmp_path / name.replace('images-idx3', 'labels-idx1'), labels), 1)
  np.testing.assert_array_equal(got, labels)


BAD_IDX = {  # case -> (write_idx kwargs, ndim asked, expected message)
    'wrong magic': (dict(magic=0x00000804), None,
                    r'wrong magic number 0x00000804: expected 0x00000803 .* or 0x00000801'),
    'labels magic for images': (dict(magic=fm.LABELS_MAGIC), 3,
                                r'wrong magic number 0x00000801: expected 0x00000803'),
    # 16-byte header + 2 * 3 * 3 = 34 bytes expected.
    'truncated payload': (dict(cut=5), 3, r'truncated: expected 34 bytes .*got 29'),
    'truncated header': (dict(cut=24), 3, r'truncated: expected 16 bytes of header .*got 10'),
    'trailing bytes': (dict(extra=b'\0\1\2'), 3, r'3 trailing bytes: expected 34 bytes .*got 37'),
}


@pytest.mark.parametrize('case', sorted(BAD_IDX))
@pytest.mark.parametrize('ext', ['.gz', ''])
def test_read_idx_errors_name_the_file(tmp_path, case, ext):
  kwargs, ndim, message = BAD_IDX[case]
  path = write_idx(tmp_path / f'bad-images-idx3-ubyte{ext}', np.ones((2, 3, 3)), **kwargs)
  with pytest.raises(ValueError, match=message) as e:
    fm.read_idx(path, ndim)
  assert isinstance(e.value, DataFormatError) and str(e.value).startswith(path)


def test_read_idx_unreadable_gzip(tmp_path):
  plain = tmp_path / 'plain-images-idx3-ubyte.gz'
  plain.write_bytes(b'\0\0\x08\x03 not a gzip stream')
  with pytest.raises(ValueError, match='unreadable gzip') as e:
    fm.read_idx(str(plain))
  assert str(plain) in str(e.value)
  whole = gzip.compress(b'\0\0\x08\x01\0\0\0\x10' + bytes(16))
  cut = tmp_path / 'cut-labels-idx1-ubyte.gz'
  cut.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match='unreadable gzip') as e:
    fm.read_idx(str(cut))
  assert str(cut) in str(e.value)
  # A gzip stream under a plain name: the magic number is wrong, and the message says why.
  path = tmp_path / 'gz-images-idx3-ubyte'
  path.write_bytes(whole)
  with pytest.raises(ValueError, match='looks gzip-compressed') as e:
    fm.read_idx(str(path))
  assert str(path) in str(e.value)


def test_labels_path_for(tmp_path):
  images, labels = make_rows(1, 2, size=4)
  gz = write_split(tmp_path, 'a', images, labels, gz=True)
  plain = write_split(tmp_path, 'b', images, labels, gz=False)
  assert fm.labels_path_for(gz) == str(tmp_path / 'a-labels-idx1-ubyte.gz')
  assert fm.labels_path_for(plain) == str(tmp_path / 'b-labels-idx1-ubyte')
  # Only the other compression is there: it is taken.
  write_idx(tmp_path / 'c-labels-idx1-ubyte', labels)
  assert fm.labels_path_for(tmp_path / 'c-images-idx3-ubyte.gz') == str(
      tmp_path / 'c-labels-idx1-ubyte')
  os.remove(tmp_path / 'b-labels-idx1-ubyte')
  write_idx(tmp_path / 'b-labels-idx1-ubyte.gz', labels)
  assert fm.labels_path_for(plain) == str(tmp_path / 'b-labels-idx1-ubyte.gz')


def test_labels_path_for_bad_name_and_missing_labels(tmp_path):
  bad = str(tmp_path / 'train_images.gz')
  with pytest.raises(ValueError, match='<prefix>-images-idx3-ubyte') as e:
    fm.labels_path_for(bad)
  assert bad in str(e.value)
  images = write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', np.zeros((2, 28, 28)))
  with pytest.raises(FileNotFoundError, match='t10k-labels-idx1-ubyte.gz') as e:
    fm.labels_path_for(images)
  assert images in str(e.value) and fm.DOWNLOAD_URLS['t10k-labels-idx1-ubyte.gz'] in str(e.value)


def test_count_mismatch_names_both_files(tmp_path):
  images, labels = make_rows(2, 3)
  path = write_split(tmp_path, 'x', images, labels[:-1])
  with pytest.raises(ValueError, match='20 images but 19 labels') as e:
    fm.read_images_and_labels(path)
  assert path in str(e.value) and str(tmp_path / 'x-labels-idx1-ubyte.gz') in str(e.value)


def test_label_out_of_range_names_file_and_row(tmp_path):
  images, labels = make_rows(2, 4)
  labels[13] = 10
  write_split(tmp_path, 'train', images, labels)
  with pytest.raises(ValueError, match=r'row 13: label 10 is outside \[0, 10\)') as e:
    fm.load(str(tmp_path), validation_per_class=1)
  assert str(tmp_path / 'train-labels-idx1-ubyte.gz') in str(e.value)


# --- load ---


def test_load_splits_by_the_documented_rule(tiny):
  data_dir, images, labels = tiny
  loaded = fm.load(str(data_dir), validation_per_class=VPC, split_seed=5)
  assert loaded.name == 'fashion_mnist' and set(loaded.splits) == {'train', 'valid'}
  assert loaded.schema == fm.SCHEMA and isinstance(loaded.schema, ImageSchema)
  train_ix, valid_ix = reference_split(labels, VPC, 5)
  for split, ix in (('train', train_ix), ('valid', valid_ix)):
    ds = loaded.splits[split]
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(ix), 28, 28, 1)
    assert ds.label.dtype == np.int32
    np.testing.assert_array_equal(ds.images[..., 0], images[ix])
    np.testing.assert_array_equal(ds.label, labels[ix])
  assert np.bincount(loaded.splits['valid'].label).tolist() == [VPC] * 10
  assert np.bincount(loaded.splits['train'].label).tolist() == [PER_CLASS - VPC] * 10
  # Another seed picks other rows; the same seed the same ones.
  other = fm.load(str(data_dir), validation_per_class=VPC, split_seed=6)
  assert not np.array_equal(other.splits['valid'].images, loaded.splits['valid'].images)
  again = fm.load(str(data_dir), validation_per_class=VPC, split_seed=5)
  np.testing.assert_array_equal(again.splits['valid'].images, loaded.splits['valid'].images)


def test_load_mean_std_from_train_pixels_and_state(tiny):
  data_dir, images, labels = tiny
  loaded = fm.load(str(data_dir), validation_per_class=VPC)
  train_ix, _ = reference_split(labels, VPC, 0)
  x = images[train_ix].astype(np.float64) / 255
  state = loaded.state
  np.testing.assert_allclose(state['mean'], x.mean(), rtol=1e-12)
  np.testing.assert_allclose(state['std'], x.std(), rtol=1e-12)
  for ds in loaded.splits.values():
    assert (ds.mean, ds.std) == (state['mean'], state['std'])
  assert json.loads(json.dumps(state)) == state
  assert state == {'dataset': 'fashion_mnist', 'version': 1, 'schema': fm.SCHEMA.to_dict(),
                   'mean': state['mean'], 'std': state['std'], 'validation_per_class': VPC,
                   'split_seed': 0, 'train_images': 'train-images-idx3-ubyte.gz',
                   'train_rows': 0, 'num_rows': {'train': 50, 'valid': 20}}
  assert state['schema']['class_names'][9] == 'Ankle boot'


def test_load_ignores_test_files_and_reads_plain_files(tmp_path):
  images, labels = make_rows(PER_CLASS, 0)
  write_split(tmp_path, 'train', images, labels, gz=False)
  (tmp_path / 't10k-images-idx3-ubyte.gz').write_bytes(b'never read')
  loaded = fm.load(str(tmp_path), validation_per_class=VPC)  # default name is .gz: plain taken
  assert loaded.state['num_rows'] == {'train': 50, 'valid': 20}


def test_load_errors(tmp_path, tiny):
  missing = tmp_path / 'empty'
  missing.mkdir()
  with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte.gz') as e:
    fm.load(str(missing))
  assert str(missing) in str(e.value)
  assert fm.DOWNLOAD_URLS['train-images-idx3-ubyte.gz'] in str(e.value)
  data_dir, _, _ = tiny
  with pytest.raises(ValueError, match=f'class 0 has {PER_CLASS} rows, too few') as e:
    fm.load(str(data_dir), validation_per_class=PER_CLASS)
  assert 'train-images-idx3-ubyte.gz' in str(e.value)
  with pytest.raises(ValueError, match='validation_per_class must be an integer >= 1'):
    fm.load(str(data_dir), validation_per_class=0)
  small = tmp_path / 'small'
  small.mkdir()
  path = write_split(small, 'train', *make_rows(PER_CLASS, 0, size=14))
  with pytest.raises(ValueError, match='images are 14x14x1, expected 28x28x1') as e:
    fm.load(str(small), validation_per_class=VPC)
  assert path in str(e.value)


# --- ImageDataset ---


def test_batches_follow_array_dataset_semantics(tiny):
  data_dir, _, _ = tiny
  ds = fm.load(str(data_dir), validation_per_class=VPC).splits['train']  # 50 rows
  n = ds.num_rows
  rows = ArrayDataset(FeatureSchema((SparseField('row', n),)), sparse=np.arange(n)[:, None],
                      label=np.zeros(n))
  for kwargs in (dict(), dict(shuffle=True, seed=3, epoch=2), dict(shuffle=True, seed=3, start=2)):
    got = list(ds.batches(16, **kwargs))
    want = list(rows.batches(16, **kwargs))
    assert len(got) == len(want) == 4 - kwargs.get('start', 0)
    for g, w in zip(got, want):
      assert set(g) == {'image', 'label', 'weight'}
      assert g['image'].dtype == np.float32 and g['image'].shape == (16, 28, 28, 1)
      assert g['label'].dtype == np.int32 and g['weight'].dtype == np.float32
      np.testing.assert_array_equal(g['weight'], w['weight'])
      real = w['weight'] > 0
      idx = w['sparse'][real, 0]
      expected = (ds.images[idx].astype(np.float64) / 255 - ds.mean) / ds.std
      np.testing.assert_allclose(g['image'][real], expected, rtol=1e-6, atol=1e-6)
      np.testing.assert_array_equal(g['label'][real], ds.label[idx])
      assert not g['image'][~real].any() and not g['label'][~real].any()
  last = list(ds.batches(16))[-1]
  assert last['weight'].tolist() == [1.0] * 2 + [0.0] * 14  # 50 = 3 * 16 + 2: nothing dropped


def test_image_dataset_checks_and_take():
  s = ImageSchema(4, 4, 1, 3)
  images = np.arange(5 * 16, dtype=np.uint8).reshape(5, 4, 4, 1)
  ds = fm.ImageDataset(s, images, np.array([0, 1, 2, 1, 0]), 0.5, 0.25, name='mine')
  sub = ds.take(np.array([4, 1]))
  assert sub.num_rows == 2 and (sub.mean, sub.std, sub.name) == (0.5, 0.25, 'mine')
  np.testing.assert_array_equal(sub.images, images[[4, 1]])
  with pytest.raises(ValueError, match=r'mine: row 3: label 3 is outside \[0, 3\)'):
    fm.ImageDataset(s, images, np.array([0, 1, 2, 3, 0]), name='mine')
  with pytest.raises(ValueError, match=r'mine: images must be uint8 \[rows, 4, 4, 1\]'):
    fm.ImageDataset(s, images.astype(np.float32), np.zeros(5, int), name='mine')
  with pytest.raises(ValueError, match=r'mine: images must be uint8'):
    fm.ImageDataset(s, images[..., 0], np.zeros(5, int), name='mine')
  with pytest.raises(ValueError, match='mine: label must be integers'):
    fm.ImageDataset(s, images, np.zeros(4, int), name='mine')
  with pytest.raises(ValueError, match='std > 0'):
    fm.ImageDataset(s, images, np.zeros(5, int), std=0.0, name='mine')


# --- read_file: the held-out test files, by path ---


def test_read_file_normalises_with_the_state(tiny, tmp_path_factory):
  data_dir, _, _ = tiny
  loaded = fm.load(str(data_dir), validation_per_class=VPC)
  other = tmp_path_factory.mktemp('test_files')
  images, labels = make_rows(3, 9)
  path = write_split(other, 't10k', images, labels)
  ds = fm.read_file(path, loaded.state)
  assert isinstance(ds, fm.ImageDataset) and ds.name == path
  assert (ds.mean, ds.std) == (loaded.state['mean'], loaded.state['std'])
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.label, labels)
  batch = next(ds.batches(30))
  np.testing.assert_allclose(batch['image'][..., 0], (images / 255 - ds.mean) / ds.std,
                             rtol=1e-6, atol=1e-6)
  same = read_split_file('fashion_mnist', path, json.loads(json.dumps(loaded.state)))
  np.testing.assert_array_equal(same.images, ds.images)


def test_read_file_errors(tiny, tmp_path_factory):
  data_dir, _, _ = tiny
  state = fm.load(str(data_dir), validation_per_class=VPC).state
  other = tmp_path_factory.mktemp('bad_test_files')
  path = write_split(other, 't10k', *make_rows(1, 9, size=14))
  with pytest.raises(ValueError, match='images are 14x14x1, expected 28x28x1') as e:
    fm.read_file(path, state)
  assert path in str(e.value)
  with pytest.raises(ValueError, match="state is for dataset 'frappe'"):
    fm.read_file(path, dict(state, dataset='frappe'))
  with pytest.raises(ValueError, match='state version'):
    fm.read_file(path, dict(state, version=99))
  absent = str(other / 't10k-images-idx3-ubyte.gz').replace('bad_test_files', 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere') as e:
    fm.read_file(absent, state)
  assert fm.DOWNLOAD_URLS['t10k-images-idx3-ubyte.gz'] in str(e.value)


# --- the dataset registry ---


def test_registry_options_and_load(tiny):
  data_dir, _, _ = tiny
  assert dataset_options('fashion_mnist') == {
      'validation_per_class': DatasetOption(1000, int), 'split_seed': DatasetOption(0, int),
      'train_images': DatasetOption('train-images-idx3-ubyte.gz', str),
      'train_rows': DatasetOption(0, int)}
  loaded = load_dataset('fashion_mnist', str(data_dir), validation_per_class=VPC, split_seed=5)
  ref = fm.load(str(data_dir), validation_per_class=VPC, split_seed=5)
  assert loaded.state == ref.state
  np.testing.assert_array_equal(loaded.splits['valid'].images, ref.splits['valid'].images)
  with pytest.raises(ConfigError, match=r"does not take \['seed'\]"):
    load_dataset('fashion_mnist', str(data_dir), seed=1)
  with pytest.raises(ConfigError, match='needs a data_dir') as e:
    load_dataset('fashion_mnist', None)
  assert fm.DOWNLOAD_URLS['train-images-idx3-ubyte.gz'] in str(e.value)


def test_download_urls_and_class_names():
  assert sorted(fm.DOWNLOAD_URLS) == sorted(fm.TRAIN_FILES + fm.TEST_FILES)
  for name, url in fm.DOWNLOAD_URLS.items():
    assert url.startswith('https://') and 'zalandoresearch/fashion-mnist' in url
    assert url.endswith('/' + name)
  assert 'DOWNLOAD_URLS' in fm.__doc__ and fm.DOWNLOAD_URLS[fm.TRAIN_FILES[0]] in fm.__doc__
  assert callable(fm.load) and callable(fm.read_file)
  assert fm.CLASS_NAMES == ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                            'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


# --- the TFDS builder ---


def test_tfds_builder_equals_load(tiny, tmp_path_factory):
  data_dir, _, _ = tiny
  config = tfds_fm.FashionMNISTConfig(name='tiny', validation_per_class=VPC, split_seed=5)
  builder = tfds_fm.FashionMNISTBuilder(data_dir=tmp_path_factory.mktemp('tfds'), config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
  ref = fm.load(str(data_dir), validation_per_class=VPC, split_seed=5)
  assert builder.info.file_format.value == 'array_record'
  assert builder.info.features['label'].names == list(fm.CLASS_NAMES)
  assert tfds_fm.state_from_info(builder.info) == ref.state
  for split, ours in (('train', 'train'), ('validation', 'valid')):
    want = ref.splits[ours]
    source = builder.as_data_source(split=split)
    assert len(source) == want.num_rows == builder.info.splits[split].num_examples
    for i in (0, 7, want.num_rows - 1):
      row = source[i]
      assert row['image'].dtype == np.uint8 and row['image'].shape == (28, 28, 1)
      np.testing.assert_array_equal(row['image'], want.images[i])
      assert int(row['label']) == want.label[i]
    got = tfds_fm.image_dataset(builder, split)
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.label, want.label)
    assert (got.mean, got.std) == (want.mean, want.std)
  assert tfds.builder_cls('jaxrec_fashion_mnist') is tfds_fm.FashionMNISTBuilder


def test_tfds_builder_missing_files(tmp_path):
  manual = tmp_path / 'fmnist_files_here'
  builder = tfds_fm.FashionMNISTBuilder(data_dir=tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='fmnist_files_here'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  manual.mkdir()
  (manual / 'README').write_text('not the data')
  with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte.gz') as e:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  assert fm.DOWNLOAD_URLS['train-images-idx3-ubyte.gz'] in str(e.value)
  for f in fm.TRAIN_FILES:
    assert fm.DOWNLOAD_URLS[f] in tfds_fm.FashionMNISTBuilder.MANUAL_DOWNLOAD_INSTRUCTIONS


# --- the real training files (../shared/data/fashion-mnist) ---


def test_real_training_files(shared_data):
  folder = shared_data / 'fashion-mnist'
  if not (folder / 'train-images-idx3-ubyte.gz').is_file():
    pytest.skip(f'{folder} has no Fashion-MNIST training files')
  loaded = fm.load(str(folder))
  train, valid = loaded.splits['train'], loaded.splits['valid']
  assert (train.num_rows, valid.num_rows) == (50_000, 10_000)
  assert np.bincount(valid.label).tolist() == [1000] * 10
  assert np.bincount(train.label).tolist() == [5000] * 10
  # The published statistics of all 60,000 training images: mean 0.2860, std 0.3530; those of the
  # 50,000 train rows of split seed 0, computed exactly once, are pinned.
  assert abs(loaded.state['mean'] - 0.2860) < 1e-3 and abs(loaded.state['std'] - 0.3530) < 1e-3
  np.testing.assert_allclose([loaded.state['mean'], loaded.state['std']],
                             [0.28617264675870346, 0.3530991518538913], rtol=1e-12)
  batch = next(valid.batches(256, shuffle=True, seed=1))
  assert batch['image'].shape == (256, 28, 28, 1) and batch['weight'].sum() == 256
  assert abs(float(batch['image'].mean())) < 0.2  # normalised pixels are centred


def test_train_rows_takes_the_first_train_rows_of_the_fixed_order(tiny):
  data_dir, images, labels = tiny
  full = fm.load(str(data_dir), validation_per_class=VPC)
  part = fm.load(str(data_dir), validation_per_class=VPC, train_rows=7)
  train_ix, valid_ix = reference_split(labels, VPC, 0)
  order = np.random.default_rng(0).permutation(len(labels))
  want = np.sort([i for i in order if i in set(train_ix)][:7])
  np.testing.assert_array_equal(part.splits['train'].images, images[want][..., None])
  np.testing.assert_array_equal(part.splits['valid'].images, full.splits['valid'].images)
  assert part.state['num_rows'] == {'train': 7, 'valid': len(valid_ix)}
  for bad in (-1, 10_000, 1.5):
    with pytest.raises(ValueError, match='train_rows'):
      fm.load(str(data_dir), validation_per_class=VPC, train_rows=bad)
