"""The datasets by name (real-data readers and the synthetic generator): ``load_dataset('frappe', data_dir)``.

Each module of :data:`DATASETS` has ``load(data_dir, **options) -> LoadedDataset`` and
``read_file(path, state) -> ArrayDataset`` (any split file, read with the ids of the run whose
``LoadedDataset.state`` is given), a ``DOWNLOAD_URLS`` constant and its format in its docstring.

A dataset's options are the keyword arguments of its ``load`` (for ``synthetic`` also the fields
of :class:`~jaxrec.data.synthetic.SyntheticConfig`), documented there; :func:`dataset_options`
lists them with their defaults and types, and :func:`load_dataset` refuses, naming them, options
the dataset does not take.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from types import ModuleType
from typing import Any, Mapping, NamedTuple

from jaxrec.data import (avazu, criteo, fashion_mnist, frappe, libffm, mixed_modal, movielens,
                         synthetic)
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.tabular import LoadedDataset
from jaxrec.errors import ConfigError

__all__ = ['DATASETS', 'DatasetOption', 'LoadedDataset', 'check_options', 'dataset_options',
           'load_dataset', 'read_split_file']

DATASETS: dict[str, ModuleType] = {
    'frappe': frappe,
    'movielens': movielens,
    'criteo': criteo,
    'avazu': avazu,
    'libffm': libffm,
    'synthetic': synthetic,
    'fashion_mnist': fashion_mnist,
    'mixed_modal': mixed_modal,
}

# Datasets generated in memory, which need no data_dir.
GENERATED = frozenset({'synthetic'})

# Datasets whose ``load(**options)`` also takes the fields of a dataclass.
_OPTION_DATACLASSES = {'synthetic': synthetic.SyntheticConfig}


class DatasetOption(NamedTuple):
  """One option of a dataset's ``load``: its default and its value type (X of Optional[X])."""
  default: Any
  type: type


def _module(name: str) -> ModuleType:
  if name not in DATASETS:
    raise ConfigError(f'unknown dataset {name!r}; known datasets: {sorted(DATASETS)}')
  return DATASETS[name]


def _value_type(hint: Any, default: Any) -> type:
  """``int`` for ``Optional[int]``, ``tuple`` for ``Sequence[float]``, else the hint's class."""
  if typing.get_origin(hint) is typing.Union:
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  origin = typing.get_origin(hint) or hint
  if origin in (collections.abc.Sequence, tuple, list):
    return tuple
  return origin if isinstance(origin, type) else type(default)


def dataset_options(name: str) -> dict[str, DatasetOption]:
  """The options of dataset ``name``, in its ``load``'s order, with defaults and types."""
  load = _module(name).load
  hints = typing.get_type_hints(load)
  out = {}
  for arg, param in inspect.signature(load).parameters.items():
    if arg != 'data_dir' and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
      out[arg] = DatasetOption(param.default, _value_type(hints.get(arg), param.default))
  cls = _OPTION_DATACLASSES.get(name)
  if cls is not None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      out[field.name] = DatasetOption(field.default, _value_type(hints[field.name], field.default))
  return out


def check_options(name: str, options: Mapping[str, Any], where: str = 'options') -> None:
  """ConfigError naming the ``options`` dataset ``name`` does not take (and those it does)."""
  valid = dataset_options(name)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ConfigError(f'{where}: dataset {name!r} does not take {unknown}; its options are '
                      f'{list(valid)}')


def load_dataset(name: str, data_dir: str, **options) -> LoadedDataset:
  """Loads dataset ``name`` from ``data_dir``; ``options`` go to its module's ``load``."""
  module = _module(name)
  if data_dir is None and name not in GENERATED:
    raise ConfigError(f'dataset {name!r} needs a data_dir '
                      f'(download locations: {module.DOWNLOAD_URLS})')
  check_options(name, options)
  return module.load(data_dir, **options)


def read_split_file(name: str, path: str, state: dict) -> ArrayDataset:
  """Reads one split file of dataset ``name`` with the ids recorded in ``state``."""
  return _module(name).read_file(path, state)
