"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 28x28 grayscale images of 10 clothing classes.

The release has a training split (``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz``,
60,000 images, 6,000 per class) and a test split (``t10k-*``, 10,000 images). :func:`load` reads
only the training files and carves validation out of them, so the official test split stays a
clean hold-out: score it at the very end with ``read_file('.../t10k-images-idx3-ubyte.gz', state)``.

Splits of :func:`load` ('train' and 'valid'): the training rows are put in a fixed order,
``np.random.default_rng(split_seed).permutation(num_rows)``; in that order the first
``validation_per_class`` rows of each class are 'valid' and all other rows 'train'. Each split
then keeps file order. By default (1,000 per class, ``split_seed`` 0) that is 10,000 validation
rows (1,000 per class) and 50,000 train rows (5,000 per class).

Batches (:meth:`ImageDataset.batches`) hold ``image``: ``float32 [batch, 28, 28, 1]`` =
``(pixels / 255 - mean) / std``, where ``mean`` and ``std`` are those of the train split's pixels
(all of them, population std) and are recorded in the state, ``label``: ``int32 [batch]`` and
``weight`` (0 on padding rows), as described by :class:`~jaxrec.data.schema.ImageSchema`.

File format (IDX, the format of the original MNIST files; gzip-compressed when named ``*.gz``):
a big-endian ``uint32`` magic number, ``0x00000803`` for images (unsigned bytes, 3 dimensions) or
``0x00000801`` for labels (unsigned bytes, 1 dimension); one big-endian ``uint32`` per dimension;
then the ``prod(dims)`` bytes of the array in row-major order, nothing after them.

Nothing is downloaded, at import or at load time; get the files from :data:`DOWNLOAD_URLS`:
https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/train-images-idx3-ubyte.gz
and ``train-labels-idx1-ubyte.gz`` beside it (https://github.com/zalandoresearch/fashion-mnist).
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import zlib
from typing import Iterator, Optional

import numpy as np

from jaxrec.data.dataset import Batch, epoch_permutation, num_batches, pad_batch
from jaxrec.data.errors import DataFileNotFoundError, DataFormatError, require_file
from jaxrec.data.schema import ImageSchema, schema_from_dict
from jaxrec.data.tabular import STATE_VERSION, LoadedDataset, check_state

NAME = 'fashion_mnist'
_BASE_URL = 'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/'
TRAIN_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz')
TEST_FILES = ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')  # never read by load
DOWNLOAD_URLS = {f: _BASE_URL + f for f in TRAIN_FILES + TEST_FILES}
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
               'Bag', 'Ankle boot')
SCHEMA = ImageSchema(height=28, width=28, channels=1, num_classes=len(CLASS_NAMES),
                     class_names=CLASS_NAMES)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}
_IMAGES_NAME = re.compile(r'^(?P<prefix>.+)-images-idx3-ubyte(?P<gz>\.gz)?$')
_CHUNK_ROWS = 4096


def read_idx(path: str, ndim: Optional[int] = None) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (gzip-compressed if its name ends in ``.gz``).

  Args:
    path: the file.
    ndim: the number of dimensions it must have (3 for images, 1 for labels); None: either.

  Returns:
    ``uint8 [dims...]``: ``[N, rows, columns]`` for an images file, ``[N]`` for a labels file.

  Raises:
    FileNotFoundError: no such file.
    DataFormatError (a ValueError) naming the file: unreadable gzip, wrong magic number, a
      truncated header or payload (expected N bytes, got M), or trailing bytes.
  """
  path = os.fspath(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataFormatError(path, None, f'truncated: expected at least 4 bytes (the IDX magic '
                          f'number), got {len(data)}')
  magic = int.from_bytes(data[:4], 'big')
  if magic not in _NDIM or (ndim is not None and _NDIM[magic] != ndim):
    want = {1: f'0x{LABELS_MAGIC:08x} (uint8 labels, 1-d)', 3: f'0x{IMAGES_MAGIC:08x} (uint8 '
            'images, 3-d)'}
    expected = want[ndim] if ndim in want else f'{want[3]} or {want[1]}'
    hint = ' (the file looks gzip-compressed: name it *.gz)' if data[:2] == b'\x1f\x8b' else ''
    raise DataFormatError(path, None, f'wrong magic number 0x{magic:08x}: expected '
                          f'{expected}{hint}')
  nd = _NDIM[magic]
  header = 4 + 4 * nd
  if len(data) < header:
    raise DataFormatError(path, None, f'truncated: expected {header} bytes of header for a {nd}-d '
                          f'IDX file, got {len(data)}')
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(nd))
  expected = header + math.prod(dims)
  if len(data) < expected:
    raise DataFormatError(path, None, f'truncated: expected {expected} bytes ({header}-byte header '
                          f'and dims {dims}), got {len(data)}')
  if len(data) > expected:
    raise DataFormatError(path, None, f'{len(data) - expected} trailing bytes: expected '
                          f'{expected} bytes ({header}-byte header and dims {dims}), got '
                          f'{len(data)}')
  return np.frombuffer(data, np.uint8, math.prod(dims), header).reshape(dims).copy()


def _read_bytes(path: str) -> bytes:
  require_file(path)
  if not path.endswith('.gz'):
    with open(path, 'rb') as f:
      return f.read()
  try:
    with gzip.open(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataFormatError(path, None, f'unreadable gzip: {e}') from None


def labels_path_for(images_path: str) -> str:
  """The labels file beside an images file: ``P-images-idx3-ubyte`` -> ``P-labels-idx1-ubyte``.

  With or without ``.gz``: the labels file with the images file's compression is preferred; the
  other one is taken when only it exists.

  Raises:
    DataFormatError (a ValueError): the images file name does not follow that convention.
    FileNotFoundError: neither labels file exists (the message names both, and a download URL).
  """
  images_path = os.fspath(images_path)
  folder, base = os.path.split(images_path)
  m = _IMAGES_NAME.match(base)
  if m is None:
    raise DataFormatError(images_path, None, 'cannot locate the labels file: an images file must '
                          'be named <prefix>-images-idx3-ubyte[.gz] (its labels then are '
                          '<prefix>-labels-idx1-ubyte[.gz] beside it)')
  stem = os.path.join(folder, f'{m["prefix"]}-labels-idx1-ubyte')
  candidates = [stem + '.gz', stem] if m['gz'] else [stem, stem + '.gz']
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise DataFileNotFoundError(f'{images_path}: its labels file {candidates[0]!r} (or '
                              f'{candidates[1]!r}) not found{_url_hint(candidates[0])}')


def _url_hint(path: str) -> str:
  """'; download it from URL' for the release's file names (plain or gz), else ''."""
  base = os.path.basename(path)
  if base in DOWNLOAD_URLS:
    return f'; download it from {DOWNLOAD_URLS[base]}'
  if base + '.gz' in DOWNLOAD_URLS:
    return f'; download {DOWNLOAD_URLS[base + ".gz"]} (and gunzip it)'
  return ''


def find_file(path: str) -> str:
  """``path`` if it is a file, else the same name with the other compression (``.gz`` or not).

  Raises:
    FileNotFoundError naming the path and, for the release's files, its download URL.
  """
  path = os.fspath(path)
  other = path[:-len('.gz')] if path.endswith('.gz') else path + '.gz'
  for p in (path, other):
    if os.path.isfile(p):
      return p
  raise DataFileNotFoundError(f'{NAME}: {path!r} not found{_url_hint(path)}')


def read_images_and_labels(images_path: str,
                           num_classes: int = len(CLASS_NAMES)) -> tuple[np.ndarray, np.ndarray]:
  """Reads an IDX images file and the labels file beside it (:func:`labels_path_for`).

  Returns:
    ``images``: ``uint8 [N, height, width, 1]``; ``labels``: ``int32 [N]``.

  Raises:
    DataFormatError (a ValueError) naming the files: see :func:`read_idx`, a different number of
      images and labels, or a label outside ``[0, num_classes)`` (with its row).
  """
  images_path = os.fspath(images_path)
  labels_path = labels_path_for(images_path)
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if len(images) != len(labels):
    raise DataFormatError(images_path, None, f'{len(images)} images but {len(labels)} labels in '
                          f'{labels_path}')
  bad = labels >= num_classes
  if bad.any():
    row = int(np.argmax(bad))
    raise DataFormatError(labels_path, None, f'row {row}: label {int(labels[row])} is outside '
                          f'[0, {num_classes})')
  return images[..., None], labels.astype(np.int32)


@dataclasses.dataclass
class ImageDataset:
  """An image-classification split held in memory, batched like :class:`ArrayDataset`.

  Attributes:
    schema: the image shape and classes.
    images: ``uint8 [rows, height, width, channels]``, raw pixels.
    label: ``int32 [rows]`` in ``[0, schema.num_classes)``.
    mean, std: batches hold ``(images / 255 - mean) / std``.
    name: where the rows came from (used in error messages).
  """
  schema: ImageSchema
  images: np.ndarray
  label: np.ndarray
  mean: float = 0.0
  std: float = 1.0
  name: str = 'images'

  def __post_init__(self):
    s = self.schema
    self.images = np.asarray(self.images)
    if self.images.dtype != np.uint8 or self.images.shape[1:] != s.shape:
      raise ValueError(f'{self.name}: images must be uint8 [rows, {s.height}, {s.width}, '
                       f'{s.channels}], got {self.images.dtype} {list(self.images.shape)}')
    n = len(self.images)
    label = np.asarray(self.label)
    if label.shape != (n,) or not (label.dtype.kind in 'iu' or n == 0):
      raise ValueError(f'{self.name}: label must be integers [{n}], got {label.dtype} '
                       f'{list(label.shape)}')
    bad = (label < 0) | (label >= s.num_classes)
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(f'{self.name}: row {row}: label {int(label[row])} is outside '
                       f'[0, {s.num_classes})')
    self.label = label.astype(np.int32)
    self.mean, self.std = float(self.mean), float(self.std)
    if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
      raise ValueError(f'{self.name}: mean {self.mean} and std {self.std} must be finite, std > 0')

  @property
  def num_rows(self) -> int:
    return len(self.label)

  def __len__(self) -> int:
    return self.num_rows

  def take(self, index: np.ndarray) -> 'ImageDataset':
    """The rows ``index`` (in that order), with the same normalisation."""
    return ImageDataset(self.schema, self.images[index], self.label[index], self.mean, self.std,
                        self.name)

  def normalize(self, images: np.ndarray) -> np.ndarray:
    """``float32 [..., H, W, C]`` ``(images / 255 - mean) / std`` of ``uint8`` pixels."""
    x = images.astype(np.float32) / np.float32(255)
    return (x - np.float32(self.mean)) / np.float32(self.std)

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    """Yields ``ceil(num_rows / batch_size) - start`` batches, exactly as ArrayDataset.batches.

    The row order is the file order, or ``epoch_permutation(num_rows, seed, epoch)`` when
    ``shuffle``; batch ``b`` holds rows ``order[b * batch_size:(b + 1) * batch_size]``; the first
    ``start`` batches are skipped; the last is padded to ``batch_size`` with rows of weight 0 (all
    arrays zero there), so no row is dropped.

    Yields:
      ``{'image': float32 [B, H, W, C], 'label': int32 [B], 'weight': float32 [B]}``.
    """
    if batch_size < 1:
      raise ValueError(f'{self.name}: batch_size must be >= 1, got {batch_size}')
    order = epoch_permutation(self.num_rows, seed, epoch) if shuffle else None
    for b in range(start, num_batches(self.num_rows, batch_size)):
      lo, hi = b * batch_size, min((b + 1) * batch_size, self.num_rows)
      idx = order[lo:hi] if order is not None else slice(lo, hi)
      yield pad_batch({'image': self.normalize(self.images[idx]), 'label': self.label[idx]},
                      batch_size)


def split_rows(labels: np.ndarray, validation_per_class: int, split_seed: int,
               num_classes: int = len(CLASS_NAMES), where: str = NAME) -> dict[str, np.ndarray]:
  """The rule of the module docstring: row indices (sorted) of 'train' and 'valid'.

  Args:
    labels: ``int [rows]`` in ``[0, num_classes)``.
    validation_per_class: validation rows of each class; each class needs more rows than that.
    split_seed: seed of the fixed row order.
    where: names the data in errors.
  """
  is_int = isinstance(validation_per_class, (int, np.integer)) and not isinstance(
      validation_per_class, bool)
  if not is_int or validation_per_class < 1:
    raise ValueError(f'{where}: validation_per_class must be an integer >= 1, got '
                     f'{validation_per_class!r}')
  counts = np.bincount(labels, minlength=num_classes)
  few = np.flatnonzero(counts <= validation_per_class)
  if few.size:
    c = int(few[0])
    raise ValueError(f'{where}: class {c} has {counts[c]} rows, too few to keep '
                     f'validation_per_class={validation_per_class} for validation and train on '
                     f'the rest')
  perm = np.random.default_rng(split_seed).permutation(len(labels))
  by_class = np.argsort(labels[perm], kind='stable')  # positions in perm, grouped by class
  rank = np.empty(len(labels), np.int64)  # rank of perm[i] among its class, in perm order
  rank[by_class] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
  valid = rank < validation_per_class
  return {'train': np.sort(perm[~valid]), 'valid': np.sort(perm[valid])}


def pixel_stats(images: np.ndarray, index: np.ndarray) -> tuple[float, float]:
  """Mean and population std of ``images[index] / 255`` over all their pixels (exact, float64)."""
  counts = np.zeros(256, np.int64)
  for lo in range(0, len(index), _CHUNK_ROWS):
    counts += np.bincount(images[index[lo:lo + _CHUNK_ROWS]].ravel(), minlength=256)
  values = np.arange(256) / 255.0
  n = counts.sum()
  mean = float(counts @ values / n)
  return mean, float(np.sqrt(counts @ (values - mean) ** 2 / n))


def load(data_dir: str, *, validation_per_class: int = 1000, split_seed: int = 0,
         train_images: str = TRAIN_FILES[0], train_rows: int = 0) -> LoadedDataset:
  """Loads the Fashion-MNIST training files from ``data_dir``, split into 'train' and 'valid'.

  Args:
    data_dir: folder with ``train_images`` and its labels file (:func:`labels_path_for`).
    validation_per_class: validation rows of each class (the split rule is in the module
      docstring).
    split_seed: seed of the row order that picks the validation rows.
    train_images: the images file's name in ``data_dir`` (``.gz`` or not: the other compression
      is taken when only it exists).
    train_rows: if > 0, train on only this many of the train rows: the first ones in the fixed
      row order of the split rule (a random subset, for short runs and studies); validation is
      unchanged.

  Returns:
    A LoadedDataset whose ``schema`` is an ImageSchema, whose splits are ImageDatasets and whose
    JSON-serialisable ``state`` (mean, std, schema, split options, rows per split) lets
    :func:`read_file` read the test files normalised the same way.
  """
  if data_dir is None:
    raise DataFileNotFoundError(f'{NAME}: data_dir is required (the folder holding '
                                f'{list(TRAIN_FILES)}; download from {DOWNLOAD_URLS})')
  path = find_file(os.path.join(os.fspath(data_dir), train_images))
  images, labels = read_images_and_labels(path, SCHEMA.num_classes)
  _check_shape(path, images, SCHEMA)
  index = split_rows(labels, validation_per_class, split_seed, SCHEMA.num_classes, path)
  if isinstance(train_rows, bool) or not isinstance(train_rows, (int, np.integer)) or train_rows < 0:
    raise ValueError(f'{path}: train_rows must be an integer >= 0, got {train_rows!r}')
  if train_rows:
    if train_rows > len(index['train']):
      raise ValueError(f'{path}: train_rows={train_rows} is more than the '
                       f'{len(index["train"])} train rows')
    order = np.random.default_rng(split_seed).permutation(len(labels))
    in_train = np.zeros(len(labels), bool)
    in_train[index['train']] = True
    index['train'] = np.sort(order[in_train[order]][:train_rows])
  mean, std = pixel_stats(images, index['train'])
  if std == 0:
    raise ValueError(f'{path}: every train pixel has the same value; cannot normalise')
  state = {'dataset': NAME, 'version': STATE_VERSION, 'schema': SCHEMA.to_dict(), 'mean': mean,
           'std': std, 'validation_per_class': int(validation_per_class),
           'split_seed': int(split_seed), 'train_images': train_images,
           'train_rows': int(train_rows),
           'num_rows': {k: int(len(ix)) for k, ix in index.items()}}
  splits = {k: ImageDataset(SCHEMA, images[ix], labels[ix], mean, std, f'{path}[{k}]')
            for k, ix in index.items()}
  return LoadedDataset(NAME, SCHEMA, splits, state)


def read_file(path: str, state: dict) -> ImageDataset:
  """Reads any IDX images file (and the labels beside it), normalised with the state's mean/std.

  For example the official test split, ``t10k-images-idx3-ubyte.gz``, with the ``state`` of
  :func:`load`. The images must have the shape of the state's schema.
  """
  check_state(state, NAME)
  schema = schema_from_dict(state['schema'])
  if not isinstance(schema, ImageSchema):
    raise ValueError(f'{NAME} state: its schema is not an image schema: {state["schema"]}')
  path = find_file(path)
  images, labels = read_images_and_labels(path, schema.num_classes)
  _check_shape(path, images, schema)
  return ImageDataset(schema, images, labels, state['mean'], state['std'], path)


def _check_shape(path: str, images: np.ndarray, schema: ImageSchema) -> None:
  if images.shape[1:] != schema.shape:
    raise DataFormatError(path, None, f'images are {"x".join(map(str, images.shape[1:]))}, '
                          f'expected {"x".join(map(str, schema.shape))}')
