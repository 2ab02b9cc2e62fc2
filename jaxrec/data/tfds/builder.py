"""A TFDS builder base for jaxrec's CTR datasets: parse with jaxrec's reader, store rows in TFDS.

A concrete builder names its reader (``READER``), its configs (files, options) and its public
sources. The raw files are never downloaded: they are read from TFDS's ``manual_dir``. Building
and reading need no TensorFlow (TFDS writes its own ``tf.train.Example`` protos)::

  builder = FrappeBuilder(data_dir='/tmp/tfds')            # file_format='array_record'
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir='/work/shared/data/frappe'))
  rows = builder.as_data_source(split='train')             # random access, dicts of numpy
  source = jaxrec.data.tfds.source_from_builder(builder, 'train')   # a CTRSource

Rows keep the reader's order (``disable_shuffling``): row ``i`` of a split is row ``i`` of the
reader's ArrayDataset. A config's ``max_rows`` keeps only the first ``max_rows`` rows of each split
(and names a separate dataset directory, so a capped build never passes for a full one).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
from types import ModuleType
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.schema import FeatureSchema
from jaxrec.data.tfds import rows


class Loaded(Protocol):
  """What a reader returns (``jaxrec.data.datasets.LoadedDataset``)."""
  name: str
  schema: FeatureSchema
  splits: dict[str, ArrayDataset]
  state: Any


@dataclasses.dataclass(eq=False)
class CTRConfig(tfds.core.BuilderConfig):
  """A builder config: which files, which reader options, which row layout.

  Attributes:
    layout: the shapes of a stored row; the reader's schema must match it (checked at build).
    options: keyword options for the reader, as ``((name, value), ...)``.
    files: files the reader needs in ``manual_dir`` (checked before reading).
    max_rows: keep only the first ``max_rows`` rows of each split (None: all).
  """
  layout: Optional[rows.RowLayout] = None
  options: tuple[tuple[str, Any], ...] = ()
  files: tuple[str, ...] = ()
  max_rows: Optional[int] = None

  def __post_init__(self):
    if self.layout is None:
      raise ValueError(f'CTRConfig {self.name!r}: layout is required')
    if self.max_rows is not None and self.max_rows < 1:
      raise ValueError(f'CTRConfig {self.name!r}: max_rows must be >= 1, got {self.max_rows}')

  def capped(self, max_rows: int) -> 'CTRConfig':
    """This config keeping the first ``max_rows`` rows of each split, named ``<name>_first<N>``."""
    return dataclasses.replace(self, name=f'{self.name}_first{max_rows}', max_rows=max_rows,
                               description=f'{self.description or self.name}, first {max_rows} '
                               'rows of each split')


class CTRBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of jaxrec's CTR dataset builders (see the module docstring).

  Subclasses set ``name``, ``BUILDER_CONFIGS`` (of :class:`CTRConfig`),
  ``MANUAL_DOWNLOAD_INSTRUCTIONS``, ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION``, ``DOWNLOAD_URLS``
  and ``READER`` (a jaxrec reader module with ``load(data_dir, **options) -> LoadedDataset``) or
  override :meth:`read`.
  """
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Rows as parsed by the jaxrec reader.'}
  DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''
  DOWNLOAD_URLS: Mapping[str, str] = {}
  READER: Optional[ModuleType] = None

  def __init__(self, *, file_format: str = 'array_record', **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The file defining the builder.

    TFDS 4.9.10 finds it through ``importlib_resources``, which it imports unconditionally but only
    requires on Python < 3.9 (tensorflow/datasets#11212); this is TFDS's own fallback path.
    """
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def read(cls, manual_dir: epath.PathLike, options: Mapping[str, Any]) -> Loaded:
    """Parses the raw files in ``manual_dir`` with the jaxrec reader ``cls.READER``."""
    if cls.READER is None:
      raise NotImplementedError(f'{cls.__name__} sets no READER module')
    return cls.READER.load(os.fspath(manual_dir), **dict(options))

  @classmethod
  def config_from_files(cls, name: str, manual_dir: epath.PathLike, files: Sequence[str],
                        description: Optional[str] = None, **options: Any) -> CTRConfig:
    """A config for other files or reader options; reads them once to learn the row layout.

    Example::

      config = LibFFMBuilder.config_from_files('full', manual_dir, ['train.libffm'],
                                               train_file='train.libffm')
      LibFFMBuilder(data_dir=data_dir, config=config).download_and_prepare(...)
    """
    layout = rows.RowLayout.of(cls.read(manual_dir, options).schema)
    return CTRConfig(name=name, description=description, layout=layout,
                     options=tuple(sorted(options.items())), files=tuple(files))

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION + _urls_text(self.DOWNLOAD_URLS),
        features=config.layout.features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._checked_manual_dir(dl_manager)
    config = self.builder_config
    loaded = self.read(manual_dir, config.options)
    layout = rows.RowLayout.of(loaded.schema)
    if layout != config.layout:
      raise ValueError(f'{self.name}/{config.name}: the reader gave a schema with layout {layout}, '
                       f'but the config declares {config.layout}')
    self.info.metadata.update(rows.metadata(loaded.schema, loaded.state, config.max_rows))
    return {split: self._generate_examples(ds) for split, ds in loaded.splits.items()}

  def _generate_examples(self, ds: ArrayDataset) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    config = self.builder_config
    return rows.examples(ds, config.layout, config.max_rows)

  def _checked_manual_dir(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    """``manual_dir`` as a path, or FileNotFoundError naming the folder and the expected files."""
    try:
      manual_dir = pathlib.Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS asserts that the folder exists and is not empty.
      raise FileNotFoundError(f'{self.name}: {e}') from e
    files = self.builder_config.files
    missing = [f for f in files if not (manual_dir / f).is_file()]
    if missing:
      raise FileNotFoundError(
          f'{self.name}/{self.builder_config.name}: manual_dir {manual_dir} lacks {missing}; '
          f'expected files: {list(files)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return manual_dir


def _urls_text(urls: Mapping[str, str]) -> str:
  if not urls:
    return ''
  return '\n\nPublic sources:\n' + '\n'.join(f'  {k}: {v}' for k, v in urls.items())
