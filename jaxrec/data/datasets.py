"""The datasets by name (real-data readers and the synthetic generator): ``load_dataset('frappe', data_dir)``.

Each module of :data:`DATASETS` has ``load(data_dir, **options) -> LoadedDataset`` and
``read_file(path, state) -> ArrayDataset`` (any split file, read with the ids of the run whose
``LoadedDataset.state`` is given), a ``DOWNLOAD_URLS`` constant and its format in its docstring.
"""

from __future__ import annotations

from types import ModuleType

from jaxrec.data import avazu, criteo, frappe, libffm, movielens, synthetic
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.tabular import LoadedDataset

__all__ = ['DATASETS', 'LoadedDataset', 'load_dataset', 'read_split_file']

DATASETS: dict[str, ModuleType] = {
    'frappe': frappe,
    'movielens': movielens,
    'criteo': criteo,
    'avazu': avazu,
    'libffm': libffm,
    'synthetic': synthetic,
}

# Datasets generated in memory, which need no data_dir.
GENERATED = frozenset({'synthetic'})


def _module(name: str) -> ModuleType:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known datasets: {sorted(DATASETS)}')
  return DATASETS[name]


def load_dataset(name: str, data_dir: str, **options) -> LoadedDataset:
  """Loads dataset ``name`` from ``data_dir``; ``options`` go to its module's ``load``."""
  module = _module(name)
  if data_dir is None and name not in GENERATED:
    raise ValueError(f'dataset {name!r} needs a data_dir '
                     f'(download locations: {module.DOWNLOAD_URLS})')
  return module.load(data_dir, **options)


def read_split_file(name: str, path: str, state: dict) -> ArrayDataset:
  """Reads one split file of dataset ``name`` with the ids recorded in ``state``."""
  return _module(name).read_file(path, state)
