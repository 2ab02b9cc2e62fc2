"""A TFDS builder of Fashion-MNIST, ``jaxrec_fashion_mnist``, split exactly as the jaxrec reader.

The IDX training files are read from TFDS's ``manual_dir`` (nothing is downloaded) with
:func:`jaxrec.data.fashion_mnist.load`, whose 'train' / 'valid' splits become the TFDS splits
'train' / 'validation', row for row (``disable_shuffling``: row ``i`` of a split is row ``i`` of the
reader's split). The official test files (t10k-*) are not read. Building and reading need no
TensorFlow::

  builder = FashionMNISTBuilder(data_dir='/tmp/tfds')       # file_format='array_record'
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir='/work/shared/data/fashion-mnist'))
  rows = builder.as_data_source(split='validation')         # {'image': uint8 [28, 28, 1],
                                                            #  'label': int64 []}
  valid = image_dataset(builder, 'validation')              # an ImageDataset, reader-normalised

Features: ``image``, a ``uint8 [28, 28, 1]`` Tensor (raw pixels; TFDS's Image feature would need
TensorFlow to PNG-encode numpy arrays) and ``label``, a ClassLabel named by
:data:`~jaxrec.data.fashion_mnist.CLASS_NAMES`. The reader's state (mean, std, schema, split
options) is stored in the dataset's metadata under ``jaxrec_state``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data import fashion_mnist
from jaxrec.data.fashion_mnist import ImageDataset
from jaxrec.data.schema import ImageSchema, schema_from_dict
from jaxrec.data.tfds import rows

SPLITS = {'train': 'train', 'validation': 'valid'}  # TFDS split -> reader split
_READ_ROWS = 8192


@dataclasses.dataclass(eq=False)
class FashionMNISTConfig(tfds.core.BuilderConfig):
  """Reader options of a build (see :func:`jaxrec.data.fashion_mnist.load`).

  Attributes:
    validation_per_class: validation rows of each class.
    split_seed: seed of the row order that picks them.
    train_images: the images file in ``manual_dir`` (its labels file lies beside it).
  """
  validation_per_class: int = 1000
  split_seed: int = 0
  train_images: str = fashion_mnist.TRAIN_FILES[0]


def _instructions() -> str:
  lines = ['Put the Fashion-MNIST training files in `manual_dir` (nothing is downloaded):']
  lines += [f'  {f}: {fashion_mnist.DOWNLOAD_URLS[f]}' for f in fashion_mnist.TRAIN_FILES]
  lines += ['(plain, un-gzipped files are read too). Validation is carved from them; the test '
            'files t10k-* are not read (score them with jaxrec.data.fashion_mnist.read_file).']
  return '\n'.join(lines)


class FashionMNISTBuilder(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST, train / validation carved from the training files as the jaxrec reader does."""
  name = 'jaxrec_fashion_mnist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Train / validation split of the jaxrec reader.'}
  BUILDER_CONFIGS = [FashionMNISTConfig(
      name='default', description='1,000 validation images per class (split seed 0)')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions()
  DOWNLOAD_URLS = fashion_mnist.DOWNLOAD_URLS
  HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'
  CITATION = """@article{xiao2017fashion,
  title={Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
  journal={arXiv preprint arXiv:1708.07747},
  year={2017}
}"""

  def __init__(self, *, file_format: str = 'array_record', **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The file defining the builder (see :meth:`jaxrec.data.tfds.builder.CTRBuilder.code_path`)."""
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    s = fashion_mnist.SCHEMA
    return tfds.core.DatasetInfo(
        builder=self,
        description=(fashion_mnist.__doc__ or '').split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=s.shape, dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(s.class_names)),
        }),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    try:
      manual_dir = pathlib.Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS asserts that the folder exists and is not empty.
      raise FileNotFoundError(f'{self.name}: {e}') from e
    loaded = fashion_mnist.load(os.fspath(manual_dir),
                                validation_per_class=config.validation_per_class,
                                split_seed=config.split_seed, train_images=config.train_images)
    self.info.metadata.update({rows.STATE_KEY: loaded.state})
    return {split: self._generate_examples(loaded.splits[ours]) for split, ours in SPLITS.items()}

  def _generate_examples(self, ds: ImageDataset) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in range(ds.num_rows):
      yield i, {'image': ds.images[i], 'label': int(ds.label[i])}


def state_from_info(info: tfds.core.DatasetInfo) -> dict:
  """The reader's state (mean, std, schema, split options) stored by the builder."""
  meta = info.metadata
  if meta is None or rows.STATE_KEY not in meta:
    raise ValueError(f'{info.full_name}: no {rows.STATE_KEY!r} in the dataset metadata; was it '
                     'built by FashionMNISTBuilder?')
  return dict(meta[rows.STATE_KEY])


def image_dataset(builder: tfds.core.DatasetBuilder, split: str) -> ImageDataset:
  """A prepared split, read through ``as_data_source``, as an ImageDataset normalised like the
  reader's (its rows equal ``fashion_mnist.load``'s split: 'validation' is 'valid')."""
  state = state_from_info(builder.info)
  schema = schema_from_dict(state['schema'])
  if not isinstance(schema, ImageSchema):
    raise ValueError(f'{builder.info.full_name}: the stored schema is not an image schema')
  source = builder.as_data_source(split=split)
  n = len(source)
  images = np.zeros((n,) + schema.shape, np.uint8)
  label = np.zeros((n,), np.int32)
  for lo in range(0, n, _READ_ROWS):
    index = list(range(lo, min(lo + _READ_ROWS, n)))
    got = source.__getitems__(index)
    images[lo:lo + len(index)] = np.stack([r['image'] for r in got])
    label[lo:lo + len(index)] = [r['label'] for r in got]
  return ImageDataset(schema, images, label, state['mean'], state['std'],
                      name=f'{builder.info.full_name}[{split}]')
