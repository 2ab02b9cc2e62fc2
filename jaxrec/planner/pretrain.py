"""Pre-training NeuroShard's cost models on this device (``scripts/pretrain_cost_model.py``).

Compute data (NeuroShard's ``collect_compute_cost_data.py``): random device loads of 1 to
``max_tables`` tables drawn from the ``dlrm-synth`` population, each table with a dim drawn from
{4, ..., 128} (the dim augmentation: every table is seen at many widths), redrawn until the load
fits ``max_bytes``; each load measured by ``measure.measure_device`` (median of ``runs``).

Communication data: random per-device output widths (10-60 tables of random dims spread over
the devices, as NeuroShard's ``collect_comm_cost_data.py``) with their all-to-all times from
``measure.comm_ms_of_dims`` (analytic on this machine, see ``measure``). Cheap, so a comm model
for a device count the file lacks is trained when first needed (``analytic_comm_trainer``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from jaxrec.planner import cost_model as cm
from jaxrec.planner import measure
from jaxrec.planner.features import TableFeatures
from jaxrec.planner.tasks import DEFAULT_CAP, TABLES_RANGE, TRACE_DIMS, DlrmSynth, sample_ids


def random_loads(gen: DlrmSynth, n: int, seed: int, max_tables: int = 15,
                 max_bytes: int = DEFAULT_CAP,
                 dims: Sequence[int] = TRACE_DIMS) -> list[list[TableFeatures]]:
  """``n`` random device loads (module docstring), deterministic by ``seed``."""
  rng = np.random.default_rng(seed)
  out = []
  for k in range(n):
    size = int(rng.integers(1, max_tables + 1))
    while True:
      idx = rng.integers(0, gen.stats.num_tables, size)
      dim = rng.choice(np.asarray(dims), size)
      load = [gen.table(int(i), int(d), f'l{k}_{j}') for j, (i, d) in enumerate(zip(idx, dim))]
      if sum(t.num_bytes for t in load) <= max_bytes:
        break
    out.append(load)
  return out


def measure_load(load: Sequence[TableFeatures], batch_size: int, seed: int, **kw) -> measure.Timing:
  """One device holding ``load`` whole: every id of the batch."""
  works = []
  for j, t in enumerate(load):
    ids, samples = sample_ids(t, batch_size, np.random.default_rng([seed, j]))
    works.append(measure.ShardWork(t.rows, t.dim, ids, samples, batch_size, t))
  return measure.measure_device(works, seed=seed, **kw)


def comm_samples(num_devices: int, n: int, seed: int, batch_size: int, num_hosts: int = 1,
                 dims: Sequence[int] = TRACE_DIMS) -> tuple[np.ndarray, np.ndarray]:
  """``(widths [n, D], ms [n, D])`` (module docstring)."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, num_devices))
  for i in range(n):
    t = int(rng.integers(*TABLES_RANGE))
    np.add.at(x[i], rng.integers(0, num_devices, t), rng.choice(np.asarray(dims), t))
  return x, measure.comm_ms_of_dims(x, batch_size, num_hosts)


def analytic_comm_trainer(batch_size: int, samples: int = 2000, epochs: int = 100,
                          seed: int = 0) -> Callable[[int, int], cm.CommModel]:
  """Trains a ``CommModel`` for ``hosts x per_host`` devices on ``comm_samples`` (seconds)."""

  def train(num_hosts: int, per_host: int) -> cm.CommModel:
    x, y = comm_samples(num_hosts * per_host, samples, seed, batch_size, num_hosts)
    model, _ = cm.train_comm(x, y, num_hosts, epochs=epochs, seed=seed)
    return model

  return train


@dataclasses.dataclass
class Collected:
  loads: list[list[TableFeatures]]
  costs_ms: list[float]
  spreads: list[tuple[float, float]]  # (p25, p75)
  seconds: float


def collect_compute(gen: DlrmSynth, n: int, seed: int, *, max_tables: int = 15,
                    max_bytes: int = DEFAULT_CAP, warmup: int = 2, runs: int = 10,
                    optimizer: str = 'rowwise_adagrad',
                    log: Optional[Callable[[str], None]] = None) -> Collected:
  """Measures ``n`` random loads (module docstring)."""
  t0 = time.perf_counter()
  loads = random_loads(gen, n, seed, max_tables, max_bytes)
  costs, spreads = [], []
  for i, load in enumerate(loads):
    t = measure_load(load, gen.batch_size, seed + i, warmup=warmup, runs=runs,
                     optimizer=optimizer)
    costs.append(t.median_ms)
    spreads.append((t.p25_ms, t.p75_ms))
    if log:
      log(f'load {i + 1}/{n}: {len(load)} tables, {sum(x.num_bytes for x in load)} bytes: '
          f'{t.median_ms:.2f} ms [{t.p25_ms:.2f}, {t.p75_ms:.2f}]')
  return Collected(loads, costs, spreads, time.perf_counter() - t0)


def pretrain(data: Collected, batch_size: int,
             comm_meshes: Sequence[tuple[int, int]] = ((1, 2), (1, 4), (1, 8), (2, 4)), *,
             epochs: int = 200, comm_epochs: int = 100, seed: int = 0,
             optimizer: str = 'rowwise_adagrad') -> cm.NeuroShardCostModel:
  """Trains the compute model on ``data`` and comm models for ``comm_meshes`` (hosts, per
  host)."""
  result = cm.train_compute(data.loads, data.costs_ms, epochs=epochs, seed=seed)
  trainer = analytic_comm_trainer(batch_size, epochs=comm_epochs, seed=seed)
  comm = {(h, p): trainer(h, p) for h, p in comm_meshes}
  dev = jax.devices()[0]
  meta = {'device_kind': dev.device_kind, 'platform': dev.platform, 'batch_size': batch_size,
          'optimizer': optimizer, 'samples': len(data.costs_ms),
          'collect_seconds': round(data.seconds, 1)}
  return cm.from_training(result, comm, meta, trainer)
