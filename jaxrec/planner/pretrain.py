"""Pre-training NeuroShard's cost models on this device (``scripts/pretrain_cost_model.py``).

Compute data (NeuroShard's ``collect_compute_cost_data.py``): random device loads of 1 to
``max_tables`` tables drawn from the ``dlrm-synth`` population, each table with a dim drawn from
{4, ..., 128} (the dim augmentation: every table is seen at many widths), redrawn until the load
fits ``max_bytes``; each load measured by ``step.measure_device`` (median of ``runs``, bucketed
shapes: one compiled program serves many loads). Load ``k`` and its ids depend only on
``(seed, k)``, so a campaign measured in pieces (``CostData``: one JSON line per load, appended as
it is measured) is the campaign measured at once.

Held out: ``pretrain`` trains on NeuroShard's shuffled 80/10/10 split and rates the test tenth
(``held_out``): Kendall's tau between predicted and measured costs (the ranking a search relies
on) and the relative error ``|predicted - measured| / measured``.

Communication data: random per-device output widths (10-60 tables of random dims spread over
the devices, as NeuroShard's ``collect_comm_cost_data.py``) with their all-to-all times from
``measure.comm_ms_of_dims`` (analytic on this machine, see ``measure``). Cheap, so a comm model
for a device count the file lacks is trained when first needed (``analytic_comm_trainer``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from jaxrec.errors import UserError
from jaxrec.planner import cost_model as cm
from jaxrec.planner import measure
from jaxrec.planner.features import TableFeatures
from jaxrec.planner.step import (Buckets, ShardWork, StepCache, Timing, measure_device,
                                 padded_fraction)
from jaxrec.planner.tasks import DEFAULT_CAP, TABLES_RANGE, TRACE_DIMS, DlrmSynth, sample_ids


def random_load(gen: DlrmSynth, seed: int, index: int, max_tables: int = 15,
                max_bytes: int = DEFAULT_CAP,
                dims: Sequence[int] = TRACE_DIMS) -> list[TableFeatures]:
  """Device load ``index`` of the campaign ``seed`` (module docstring)."""
  rng = np.random.default_rng([seed, index])
  size = int(rng.integers(1, max_tables + 1))
  while True:
    idx = rng.integers(0, gen.stats.num_tables, size)
    dim = rng.choice(np.asarray(dims), size)
    load = [gen.table(int(i), int(d), f'l{index}_{j}') for j, (i, d) in enumerate(zip(idx, dim))]
    if sum(t.num_bytes for t in load) <= max_bytes:
      return load


def random_loads(gen: DlrmSynth, n: int, seed: int, max_tables: int = 15,
                 max_bytes: int = DEFAULT_CAP,
                 dims: Sequence[int] = TRACE_DIMS) -> list[list[TableFeatures]]:
  """Loads ``0 .. n - 1`` (``random_load``)."""
  return [random_load(gen, seed, k, max_tables, max_bytes, dims) for k in range(n)]


def load_works(load: Sequence[TableFeatures], batch_size: int, seed: int,
               index: int = 0) -> list[ShardWork]:
  """One device holding ``load`` whole: every id of the batch, drawn from ``(seed, index)``."""
  works = []
  for j, t in enumerate(load):
    ids, samples = sample_ids(t, batch_size, np.random.default_rng([seed, index, j]))
    works.append(ShardWork(t.rows, t.dim, ids, samples, batch_size, t))
  return works


def measure_load(load: Sequence[TableFeatures], batch_size: int, seed: int, index: int = 0,
                 **kw) -> Timing:
  """``step.measure_device`` of ``load_works`` (keywords passed on)."""
  return measure_device(load_works(load, batch_size, seed, index), **kw)


# ---- the data file ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sample:
  """One measured load: its index in the campaign, its tables, its timing, the wall seconds it
  took (compilation included)."""
  index: int
  load: tuple[TableFeatures, ...]
  timing: Timing
  seconds: float

  def to_json(self) -> dict:
    return {'index': self.index, 'seconds': round(self.seconds, 3),
            'timing': dataclasses.asdict(self.timing),
            'tables': [{'name': t.name, 'rows': t.rows, 'dim': t.dim, 'pooling': t.pooling,
                        'hist': list(t.hist)} for t in self.load]}

  @classmethod
  def from_json(cls, d: dict) -> 'Sample':
    load = tuple(TableFeatures(t['name'], t['rows'], t['dim'], t['pooling'], tuple(t['hist']))
                 for t in d['tables'])
    return cls(int(d['index']), load, Timing(**d['timing']), float(d['seconds']))


class CostDataError(UserError, ValueError):
  """A data file of another campaign (other settings or device) than the one asked for."""


class CostData:
  """Measured loads in a JSON-lines file: a header line (the campaign's settings), then one line
  per load, appended and flushed as each is measured; a cut last line is ignored.

  Args:
    path: the file ('' keeps the samples in memory only).
    header: the settings; an existing file must have been written with the same ones.
  """

  def __init__(self, path, header: dict):
    self.path = pathlib.Path(path) if path else None
    self.header = dict(header)
    self.samples: dict[int, Sample] = {}
    if self.path and self.path.is_file() and self.path.stat().st_size:
      lines = self.path.read_text(encoding='utf-8').splitlines()
      try:
        old = json.loads(lines[0])
      except json.JSONDecodeError:
        raise CostDataError(f'{self.path} is not a cost-data file') from None
      diff = {k: (old.get(k), v) for k, v in self.header.items() if old.get(k) != v}
      if diff:
        raise CostDataError(
            f'{self.path} holds another campaign: ' + ', '.join(
                f'{k} {a!r} there, {b!r} asked' for k, (a, b) in sorted(diff.items()))
            + '; pass the same settings or another --data file')
      for line in lines[1:]:
        try:
          s = Sample.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError):
          continue  # a line cut by an interrupted write
        self.samples[s.index] = s
      self.path.write_text('\n'.join([lines[0]] + [json.dumps(s.to_json())
                                                    for s in self.sorted()]) + '\n',
                           encoding='utf-8')
    elif self.path:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self.path.write_text(json.dumps(self.header, sort_keys=True) + '\n', encoding='utf-8')

  def sorted(self) -> list[Sample]:
    return [self.samples[k] for k in sorted(self.samples)]

  def add(self, sample: Sample) -> None:
    self.samples[sample.index] = sample
    if self.path:
      with self.path.open('a', encoding='utf-8') as f:
        f.write(json.dumps(sample.to_json()) + '\n')

  def missing(self, n: int) -> list[int]:
    """Indices below ``n`` not measured yet."""
    return [k for k in range(n) if k not in self.samples]


# ---- collecting ---------------------------------------------------------------------------------

def collect(gen: DlrmSynth, data: CostData, n: int, seed: int, *, max_tables: int = 15,
            max_bytes: int = DEFAULT_CAP, dims: Sequence[int] = TRACE_DIMS, warmup: int = 1,
            runs: int = 5,
            optimizer: str = 'rowwise_adagrad', buckets: Optional[Buckets] = None,
            cache: Optional[StepCache] = None,
            log: Optional[Callable[[str], None]] = None) -> CostData:
  """Measures the loads ``< n`` that ``data`` lacks, adding each as it is measured."""
  cache = cache or StepCache()
  buckets = buckets or Buckets(buffer_bytes=max_bytes)
  todo = data.missing(n)
  t_start = time.perf_counter()
  for done, k in enumerate(todo, 1):
    t0 = time.perf_counter()
    load = random_load(gen, seed, k, max_tables, max_bytes, dims)
    t = measure_load(load, gen.batch_size, seed, k, warmup=warmup, runs=runs,
                     optimizer=optimizer, buckets=buckets, cache=cache)
    data.add(Sample(k, tuple(load), t, time.perf_counter() - t0))
    if log:
      per = (time.perf_counter() - t_start) / done
      left = (len(todo) - done) * per / 60
      log(f'[{len(data.samples)}/{n}] load {k}: {len(load)} tables, '
          f'{sum(x.num_bytes for x in load) / 2 ** 20:.1f} MiB: {t.median_ms:.2f} ms '
          f'[{t.p25_ms:.2f}, {t.p75_ms:.2f}]; {per:.2f} s/load, {left:.1f} min left; '
          f'{cache.compiles} programs compiled ({cache.compile_seconds:.0f} s)')
  return data


@dataclasses.dataclass
class Collected:
  """Training input: loads, their median costs, their (p25, p75), the seconds measuring took."""
  loads: list[list[TableFeatures]]
  costs_ms: list[float]
  spreads: list[tuple[float, float]]
  seconds: float

  @classmethod
  def of(cls, samples: Sequence[Sample]) -> 'Collected':
    return cls([list(s.load) for s in samples], [s.timing.median_ms for s in samples],
               [(s.timing.p25_ms, s.timing.p75_ms) for s in samples],
               float(sum(s.seconds for s in samples)))


def collect_compute(gen: DlrmSynth, n: int, seed: int, **kw) -> Collected:
  """``collect`` of loads ``0 .. n - 1`` kept in memory."""
  return Collected.of(collect(gen, CostData('', {}), n, seed, **kw).sorted())


def padding_check(gen: DlrmSynth, n: int, seed: int, *, max_tables: int = 15,
                  max_bytes: int = DEFAULT_CAP, dims: Sequence[int] = TRACE_DIMS, runs: int = 5,
                  buckets: Optional[Buckets] = None,
                  log: Optional[Callable[[str], None]] = None) -> np.ndarray:
  """``[n, 3]``: per load, the bucketed time, the exact-shape time (``Buckets.exact()``, compiled
  for that load alone) and the ids' padding fraction; the two measurements alternate (bucketed,
  exact, bucketed: the bucketed time is the mean of its two) so that drift hits both alike."""
  buckets = buckets or Buckets(buffer_bytes=max_bytes)
  cache = StepCache()
  out = []
  for k in range(n):
    works = load_works(random_load(gen, seed, k, max_tables, max_bytes, dims), gen.batch_size,
                       seed, k)
    a = measure_device(works, runs=runs, buckets=buckets, cache=cache).median_ms
    e = measure_device(works, runs=runs, buckets=Buckets.exact(), cache=StepCache()).median_ms
    b = measure_device(works, runs=runs, buckets=buckets, cache=cache).median_ms
    pad = padded_fraction(works, buckets)
    out.append(((a + b) / 2, e, pad))
    if log:
      log(f'padding check {k + 1}/{n}: bucketed {(a + b) / 2:.2f} ms, exact {e:.2f} ms '
          f'(ids +{100 * pad:.1f} %)')
  return np.asarray(out, np.float64).reshape(-1, 3)


# ---- held-out quality ---------------------------------------------------------------------------

def kendall_tau(a, b) -> float:
  """Kendall's tau-b of two equal-length sequences (ties in either count as neither)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2:
    return float('nan')
  da = np.sign(a[:, None] - a[None, :])
  db = np.sign(b[:, None] - b[None, :])
  iu = np.triu_indices(a.size, 1)
  da, db = da[iu], db[iu]
  denom = np.sqrt(np.sum(da != 0) * np.sum(db != 0))
  return float(np.sum(da * db) / denom) if denom else float('nan')


def held_out(model: cm.NeuroShardCostModel, loads: Sequence[Sequence[TableFeatures]],
             costs_ms: Sequence[float]) -> dict:
  """Kendall's tau and relative errors of ``model`` on measured loads (module docstring)."""
  y = np.asarray(costs_ms, np.float64)
  pred = np.array([model.compute_ms(list(s)) for s in loads], np.float64)
  rel = np.abs(pred - y) / np.maximum(y, 1e-9)
  return {'loads': int(y.size), 'kendall_tau': round(kendall_tau(pred, y), 4),
          'mean_rel_error': round(float(rel.mean()), 4) if y.size else float('nan'),
          'median_rel_error': round(float(np.median(rel)), 4) if y.size else float('nan')}


# ---- training -----------------------------------------------------------------------------------

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


def pretrain(data: Collected, batch_size: int,
             comm_meshes: Sequence[tuple[int, int]] = ((1, 2), (1, 4), (1, 8), (2, 4)), *,
             epochs: int = 200, comm_epochs: int = 100, seed: int = 0,
             optimizer: str = 'rowwise_adagrad', meta: Optional[dict] = None
             ) -> cm.NeuroShardCostModel:
  """Trains the compute model on ``data`` and comm models for ``comm_meshes`` (hosts, per
  host); ``meta['held_out']`` rates it on the test split (``held_out``)."""
  result = cm.train_compute(data.loads, data.costs_ms, epochs=epochs, seed=seed)
  trainer = analytic_comm_trainer(batch_size, epochs=comm_epochs, seed=seed)
  comm = {(h, p): trainer(h, p) for h, p in comm_meshes}
  dev = jax.devices()[0]
  meta = dict(meta or {}, device_kind=dev.device_kind, platform=dev.platform,
              batch_size=batch_size, optimizer=optimizer, samples=len(data.costs_ms),
              collect_seconds=round(data.seconds, 1))
  model = cm.from_training(result, comm, meta, trainer)
  test = result.test_index
  model.meta['held_out'] = held_out(model, [data.loads[i] for i in test],
                                    [data.costs_ms[i] for i in test])
  return model
