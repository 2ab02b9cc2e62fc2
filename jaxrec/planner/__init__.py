"""Sharding planner: tables, devices and memory caps -> an ``EmbeddingPlan``, explained.

``plan(tables, devices, memory_cap_bytes, method=...)`` with ``tables`` as ``TableFeatures``
(``features``: rows, dim, pooling, access histogram) or plain ``EmbeddingBagConfig`` s (uniform
access assumed), ``devices`` a count (one host) or ``(hosts, devices_per_host)``. Methods:

  ======================  ====================================================================
  method                  what
  ======================  ====================================================================
  random                  each table on a random device with room (``baselines``)
  size_greedy             greedy by bytes (``baselines``)
  dim_greedy              greedy by dim
  lookup_greedy           greedy by dim x pooling
  size_lookup_greedy      greedy by dim x pooling x log10(rows)
  torchrec                TorchRec's planner, ported (``torchrec_port``)
  neuroshard              NeuroShard: greedy grid + column-wise beam search under the
                          pre-trained cost model (``search``, ``cost_model``)
  neuroshard_refined      neuroshard, then moves / swaps off the costliest device
  ======================  ====================================================================

Every method splits a table larger than a device row-wise first (``placement``). The cost model
of the neuroshard methods is the file shipped for this device kind (``cost_model.default_file``,
written by ``scripts/pretrain_cost_model.py``) unless ``cost_model`` is given (a model or a
path). ``report.describe`` prints a plan per device with its predicted cost and imbalance.

Ground truth and studies (docs/planner.md): ``measure.measure_plan`` measures a plan on this
device (``step``: each device's fused step, shapes bucketed so that compiled programs are
reused); ``pretrain`` measures random device loads and trains the cost model
(``scripts/pretrain_cost_model.py``); ``bench`` plans generated tasks with every method and
measures the plans (``scripts/bench_planner.py``).

Example::

  from jaxrec import planner
  tables = [planner.features.from_stats('user', 100_000, 64, pooling=1.0), ...]
  p = planner.plan(tables, devices=4, memory_cap_bytes=2**26, method='size_lookup_greedy')
  p.validate([t.config() for t in tables])
"""

from __future__ import annotations

import functools
import pathlib
from typing import Optional, Sequence, Union

from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.planner import baselines, cost_model, features, placement, pretrain, report, search
from jaxrec.planner import torchrec_port
from jaxrec.planner.features import TableFeatures
from jaxrec.planner.placement import Devices, NoFitError, PlannerError
from jaxrec.planner.tasks import DEFAULT_BATCH
from jaxrec.sharding.embedding_plan import EmbeddingPlan

METHODS = ('random', 'size_greedy', 'dim_greedy', 'lookup_greedy', 'size_lookup_greedy',
           'torchrec', 'neuroshard', 'neuroshard_refined')
NEEDS_COST_MODEL = ('neuroshard', 'neuroshard_refined')


@functools.lru_cache(maxsize=4)
def _load(path: str):
  model = cost_model.load(path)
  batch = int(model.meta.get('batch_size', DEFAULT_BATCH))
  model.comm_trainer = pretrain.analytic_comm_trainer(batch)
  return model


def load_cost_model(path: Union[str, pathlib.Path, None] = None):
  """The cost model at ``path`` (default: the one shipped for this device kind), its missing
  communication models trained on first use (``pretrain.analytic_comm_trainer``)."""
  path = pathlib.Path(path) if path else cost_model.default_file()
  if not path.is_file():
    raise PlannerError(
        f'no pre-trained cost model at {path}: run scripts/pretrain_cost_model.py (it measures '
        'this device and writes the file), pass cost_model=, or plan with a method that needs '
        f'none ({", ".join(m for m in METHODS if m not in NEEDS_COST_MODEL)})')
  return _load(str(path))


def as_features(tables: Sequence[Union[TableFeatures, EmbeddingBagConfig]]) -> list[TableFeatures]:
  """``TableFeatures`` as given; ``EmbeddingBagConfig`` s with uniform access."""
  out = []
  for t in tables:
    if isinstance(t, TableFeatures):
      out.append(t)
    elif isinstance(t, EmbeddingBagConfig):
      out.extend(features.uniform_features([t]))
    else:
      raise TypeError(f'tables must be TableFeatures or EmbeddingBagConfig, got {type(t).__name__}')
  names = [t.name for t in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup or not out:
    raise PlannerError(f'tables must be a non-empty list of distinct names; duplicates: {dup}')
  return out


def plan(tables: Sequence[Union[TableFeatures, EmbeddingBagConfig]], devices,
         memory_cap_bytes: Optional[int], method: str = 'neuroshard', *,
         cost_model=None, batch_size: int = DEFAULT_BATCH, seed: int = 0,
         optimizer: str = 'rowwise_adagrad') -> EmbeddingPlan:
  """A validated ``EmbeddingPlan`` for ``tables`` (module docstring).

  Args:
    tables: ``TableFeatures`` or ``EmbeddingBagConfig`` s.
    devices: a device count (one host) or ``(num_hosts, devices_per_host)``.
    memory_cap_bytes: bytes of embedding shards per device (None: no cap).
    method: one of ``METHODS``.
    cost_model: for the neuroshard methods: a cost model, a file, or None (the shipped one).
    batch_size: the global batch the plan serves (torchrec's estimates, the cost model's comm).
    seed: the random baseline's seed.
    optimizer: the sparse optimizer (torchrec's storage estimate of its state).

  Raises:
    PlannerError: unknown method; a table no device holds even row-wise (naming it and the
      sizes); no cost model; ``NoFitError`` when the method finds no placement under the cap.
  """
  if method not in METHODS:
    raise PlannerError(f'unknown planner method {method!r}; one of {METHODS}')
  tables = as_features(tables)
  dev = Devices.of(devices, memory_cap_bytes)
  if method == 'random':
    out = baselines.random_plan(tables, dev, seed)
  elif method in baselines.KEYS:
    out = baselines.greedy(tables, dev, method)
  elif method == 'torchrec':
    placement.split_oversized(tables, dev)  # the same error as every method for such a table
    out = torchrec_port.plan(tables, dev.num_hosts, dev.devices_per_host, memory_cap_bytes,
                             batch_size, optimizer=optimizer).plan
  else:
    model = cost_model if hasattr(cost_model, 'embed') else load_cost_model(cost_model)
    out = search.neuroshard(tables, dev, model, refined=method == 'neuroshard_refined').plan
  out.validate([t.config() for t in tables])
  return out
