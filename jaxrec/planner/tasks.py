"""``dlrm-synth``: sharding tasks whose tables follow Meta's public DLRM access statistics.

Source: ``dlrm_datasets/<year>/locality_stats.txt`` (facebookresearch/dlrm_datasets), one record
per trace file (``fbgemm_t856_bs65536.pt``: 856 tables, one batch of 65,536 samples): ids read,
unique ids, mean access count, the 17-bin histogram of access counts over unique ids
(``features`` module) and the share of ids per bin, all aggregated over the tables. The traces
themselves (GBs, per-table) are not available, so the generator draws a *population* of tables
whose aggregate reproduces a record, then *tasks* from the population as NeuroShard's repository
does (``tools/gen_tasks.py``: 10-60 tables drawn with replacement, dims from {4, 8, ..., 128},
redrawn until the task fits the devices' memory).

The population (``population``, deterministic by its seed), per table ``t``:
  * pooling ``L_t``: log-normal (sigma ``POOLING_SIGMA``), rescaled so that the mean over the
    population equals the record's ids per sample per table (ids / batch / tables: 15.8 for the
    2021 trace);
  * trace-scale histogram ``h_t``: the record's histogram tilted by ``2^(tau_t i)`` (``tau_t``
    normal, sigma ``TILT_SIGMA``), then corrected bin by bin (iterative proportional fitting) so
    that the histogram of all tables' unique ids together, each table weighted by its unique ids
    ``B L_t / mean count``, equals the record's. The record prints shares with 3 decimals: bins
    printed below 0.005 take ``ratio_i x mean count / (bin i's mean count)`` from the per-bin
    id ratios instead (more digits where counts are large);
  * counts within a bin are uniform integers in ``(2^(i-1), 2^i]`` (bin 16: up to 2^16).

Scaled to this machine (a CPU measuring every device's step): a task's batch is ``batch_size``
(default 1024) instead of the trace's 65,536. Each id of the trace batch is kept with
probability ``batch_size / 65536`` (binomial thinning), which moves each table's histogram to
the smaller batch (``thin``); the features of a task's tables are these thinned statistics, the
ones ``features.from_ids`` computes on a batch ``sample_ids`` draws. Rows are not in the
statistics: a table gets ``ROWS_FACTOR x`` its unique ids per batch (log-normal, median 2,
sigma 1), at least 100 (NeuroShard's floor). Memory: ``memory_cap_bytes`` per device (default
64 MiB) and, as NeuroShard (4 GB devices, tasks up to 15 of 16 GB), a task is redrawn until its
tables' bytes are at most 15/16 of all devices' caps. Tables larger than a device's cap stay in
the tasks: a planner splits them row-wise.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

from jaxrec.planner.features import NUM_BINS, TableFeatures, count_bins

TRACE_DIMS = (4, 8, 16, 32, 64, 128)  # NeuroShard: max_dim 128 halved while divisible by 4
TABLES_RANGE = (10, 60)  # NeuroShard's T_range "10,60" (randint: 10..59)
POOLING_SIGMA = 1.0
TILT_SIGMA = 0.5
ROWS_MEDIAN, ROWS_SIGMA, MIN_ROWS = 2.0, 1.0, 100
DEFAULT_BATCH = 1024
DEFAULT_CAP = 64 * 2 ** 20
FILL = 15 / 16  # NeuroShard: a task's tables fill at most 15 of the 16 GB of 4 devices
PRINTED_MIN = 0.005  # below this a printed share (3 decimals) is replaced by the ratio's value
THIN_DRAWS = 20_000  # Monte-Carlo draws per bin for the thinning transfer matrix

_BIN_LO = np.array([1] + [2 ** (i - 1) + 1 for i in range(1, NUM_BINS)])
_BIN_HI = np.array([1] + [2 ** i for i in range(1, NUM_BINS - 1)] + [2 ** 16])
BIN_MEAN = (_BIN_LO + _BIN_HI) / 2  # mean count of each bin under uniform counts


class StatsFormatError(ValueError):
  """A locality_stats.txt that does not parse; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class TraceStats:
  """One record of locality_stats.txt.

  Attributes:
    trace: the trace file (``fbgemm_t856_bs65536.pt``).
    num_tables: tables of the trace (from its name, ``t856``).
    batch_size: samples per batch.
    num_ids: ids read per batch (all tables).
    num_unique: unique (table, id) pairs per batch.
    mean_count: the printed mean access count of a unique id.
    hist: printed share of unique ids per bin (17).
    id_ratio: printed share of ids per bin (17).
  """
  trace: str
  num_tables: int
  batch_size: int
  num_ids: int
  num_unique: int
  mean_count: float
  hist: tuple[float, ...]
  id_ratio: tuple[float, ...]

  @property
  def pooling(self) -> float:
    """Mean ids per sample per table."""
    return self.num_ids / self.batch_size / self.num_tables

  def target_hist(self) -> np.ndarray:
    """The histogram the population reproduces (module docstring: printed shares, small bins
    from the id ratios), normalised to 1."""
    hist = np.asarray(self.hist)
    from_ratio = np.asarray(self.id_ratio) * (self.num_ids / self.num_unique) / BIN_MEAN
    out = np.where(hist >= PRINTED_MIN, hist, from_ratio)
    return out / out.sum()


_BIN_LINE = re.compile(r'^\((\d+)(?:, (\d+)\]|\+):\s*([0-9.]+)$')


def _bins(lines, start, path):
  """17 ``(a, b]: v`` lines from ``start``; returns the values."""
  out = []
  for i in range(NUM_BINS):
    n = start + i
    line = lines[n].strip() if n < len(lines) else '<end of file>'
    m = _BIN_LINE.match(line)
    lo = 0 if i == 0 else 2 ** (i - 1)
    if not m or int(m.group(1)) != lo or (i < NUM_BINS - 1) != (m.group(2) is not None):
      raise StatsFormatError(f'{path}:{n + 1}: expected bin {i} as "({lo}, {2 ** i}]: <share>"'
                             + (' ("(32768+: <share>")' if i == NUM_BINS - 1 else '')
                             + f', got {line!r}')
    out.append(float(m.group(3)))
  return tuple(out)


def _field(lines, n, pattern, path, what):
  line = lines[n].strip() if n < len(lines) else '<end of file>'
  m = re.fullmatch(pattern, line)
  if not m:
    raise StatsFormatError(f'{path}:{n + 1}: expected {what}, got {line!r}')
  return m


def parse_locality_stats(path) -> list[TraceStats]:
  """Every record of a locality_stats.txt (``StatsFormatError`` naming file and line)."""
  path = pathlib.Path(path)
  lines = path.read_text(encoding='utf-8').splitlines()
  records, n = [], 0
  while n < len(lines):
    if not lines[n].strip():
      n += 1
      continue
    name = _field(lines, n, r'(\S+\.pt)', path, 'a trace file name "<name>.pt"').group(1)
    tables = re.search(r'_t(\d+)_', name)
    if not tables:
      raise StatsFormatError(f'{path}:{n + 1}: trace name {name!r} has no table count "_t<N>_"')
    batch = int(_field(lines, n + 1, r'Locality stats after processing \d+ batch(?:es)? of size '
                       r'(\d+)', path, '"Locality stats after processing K batches of size B"')
                .group(1))
    ids = float(_field(lines, n + 2, r'Avg # of indices: ([0-9.]+)', path,
                       '"Avg # of indices: <n>"').group(1))
    uniq = float(_field(lines, n + 3, r'Avg # of unique cols: ([0-9.]+)', path,
                        '"Avg # of unique cols: <n>"').group(1))
    mean = float(_field(lines, n + 4, r'Avg col size: ([0-9.]+)', path,
                        '"Avg col size: <x>"').group(1))
    _field(lines, n + 5, r'Histogram of col sizes:', path, '"Histogram of col sizes:"')
    hist = _bins(lines, n + 6, path)
    k = n + 6 + NUM_BINS + 2  # the edge list and the cumulative shares follow each histogram
    _field(lines, k, r'Ratio of index distribution at different column sizes:', path,
           '"Ratio of index distribution at different column sizes:"')
    ratio = _bins(lines, k + 1, path)
    if uniq <= 0 or ids < uniq:
      raise StatsFormatError(f'{path}:{n + 3}: {ids:.0f} ids and {uniq:.0f} unique ids')
    records.append(TraceStats(name, int(tables.group(1)), batch, int(ids), int(uniq), mean, hist,
                              ratio))
    n = k + 1 + NUM_BINS + 2
  if not records:
    raise StatsFormatError(f'{path}: no records')
  return records


# ---- access-count model -------------------------------------------------------------------------

def draw_counts(hist, rng: np.random.Generator, total: int) -> np.ndarray:
  """Access counts of unique ids, bins drawn from ``hist`` and counts uniform in their bin,
  until they add up to ``total`` (the last one cut)."""
  hist = np.asarray(hist, np.float64)
  if total <= 0 or hist.sum() <= 0:
    return np.zeros(0, np.int64)
  mean = float(hist @ BIN_MEAN)
  out, have = [], 0
  while have < total:
    n = int((total - have) / mean * 1.1) + 16
    b = rng.choice(NUM_BINS, size=n, p=hist / hist.sum())
    c = rng.integers(_BIN_LO[b], _BIN_HI[b] + 1)
    out.append(c)
    have += int(c.sum())
  counts = np.concatenate(out)
  cum = np.cumsum(counts)
  k = int(np.searchsorted(cum, total))  # first index where the running sum reaches total
  counts = counts[:k + 1].copy()
  counts[-1] -= int(cum[k] - total)
  return counts[counts > 0]


def sample_ids(table: TableFeatures, batch_size: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """One batch of ``table``'s ids under its statistics: ``(ids int32 [N], sample int32 [N])``,
  ``N = round(batch_size x pooling)``; unique ids are distinct rows drawn uniformly (all rows,
  reused at random, if the table has fewer rows than unique ids)."""
  n = int(round(batch_size * table.pooling))
  counts = draw_counts(table.hist, rng, n)
  if counts.size <= table.rows:
    uniq = rng.choice(table.rows, size=counts.size, replace=False)
  else:
    uniq = rng.integers(0, table.rows, counts.size)
  ids = np.repeat(uniq, counts)
  rng.shuffle(ids)
  return ids.astype(np.int32), rng.integers(0, batch_size, ids.size).astype(np.int32)


def mean_count(hist) -> float:
  """Mean access count of a unique id under ``draw_counts``."""
  return float(np.asarray(hist) @ BIN_MEAN)


def thinning_matrix(p: float, seed: int = 0) -> np.ndarray:
  """``[17, 18]``: row ``i``, the distribution of ``Binomial(count, p)`` over count 0 (column 0)
  and bins 0..16 (columns 1..17), for counts drawn uniformly in bin ``i`` (Monte Carlo,
  ``THIN_DRAWS`` per bin, deterministic)."""
  rng = np.random.default_rng(seed)
  out = np.zeros((NUM_BINS, NUM_BINS + 1))
  for i in range(NUM_BINS):
    c = rng.integers(_BIN_LO[i], _BIN_HI[i] + 1, THIN_DRAWS)
    k = rng.binomial(c, p)
    out[i, 0] = np.mean(k == 0)
    if (k > 0).any():
      out[i, 1:] = np.bincount(count_bins(k[k > 0]), minlength=NUM_BINS) / THIN_DRAWS
  return out


def thin(hist, matrix: np.ndarray) -> np.ndarray:
  """The histogram after thinning (``thinning_matrix``), over the ids still read."""
  moved = np.asarray(hist) @ matrix
  kept = moved[1:]
  return kept / kept.sum() if kept.sum() > 0 else kept


# ---- the population and the tasks ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Population:
  """Synthetic tables of one trace (module docstring): per table its pooling, its trace-scale
  histogram and its rows factor."""
  stats: TraceStats
  pooling: np.ndarray  # [T]
  hist: np.ndarray  # [T, 17], trace scale
  rows_factor: np.ndarray  # [T]

  def aggregate_hist(self) -> np.ndarray:
    """The histogram of all tables' unique ids together (trace scale)."""
    weight = self.pooling / (self.hist @ BIN_MEAN)
    return weight @ self.hist / weight.sum()


def population(stats: TraceStats, seed: int = 0, ipf_iterations: int = 100) -> Population:
  """``stats.num_tables`` tables reproducing ``stats`` (module docstring)."""
  rng = np.random.default_rng(seed)
  t = stats.num_tables
  pooling = rng.lognormal(0.0, POOLING_SIGMA, t)
  pooling *= stats.pooling / pooling.mean()
  target = stats.target_hist()
  tilt = 2.0 ** (rng.normal(0.0, TILT_SIGMA, t)[:, None] * np.arange(NUM_BINS)[None, :])
  hist = target[None, :] * tilt
  hist /= hist.sum(1, keepdims=True)
  for _ in range(ipf_iterations):
    agg = Population(stats, pooling, hist, np.ones(t)).aggregate_hist()
    hist = hist * np.where(agg > 0, target / np.maximum(agg, 1e-300), 0.0)[None, :]
    hist /= hist.sum(1, keepdims=True)
  rows_factor = rng.lognormal(np.log(ROWS_MEDIAN), ROWS_SIGMA, t)
  return Population(stats, pooling, hist, rows_factor)


@dataclasses.dataclass(frozen=True)
class Task:
  """A sharding task: tables (features at ``batch_size``), devices and a per-device cap."""
  index: int
  tables: tuple[TableFeatures, ...]
  num_devices: int
  memory_cap_bytes: int
  batch_size: int
  source: tuple[int, ...]  # population index of each table

  @property
  def num_bytes(self) -> int:
    return sum(t.num_bytes for t in self.tables)


class DlrmSynth:
  """The ``dlrm-synth`` task generator (module docstring).

  Args:
    stats: a record of locality_stats.txt (``parse_locality_stats(path)[0]`` is the 2021 trace
      of 856 tables, 65,536 samples).
    batch_size: the tasks' batch (default 1024: the trace thinned 64x).
    population_seed: seed of the table population (fixed by default; tasks vary by their seed).

  Example::

    gen = DlrmSynth(parse_locality_stats('.../2021/locality_stats.txt')[0])
    tasks = gen.tasks(10, seed=0, num_devices=4)
  """

  def __init__(self, stats: TraceStats, batch_size: int = DEFAULT_BATCH,
               population_seed: int = 0):
    if batch_size < 1 or batch_size > stats.batch_size:
      raise ValueError(f'batch_size must be in [1, {stats.batch_size}] (the trace batch), got '
                       f'{batch_size}')
    self.stats, self.batch_size = stats, batch_size
    self.population = population(stats, population_seed)
    self.matrix = thinning_matrix(batch_size / stats.batch_size, population_seed)

  def table(self, index: int, dim: int, name: Optional[str] = None) -> TableFeatures:
    """Population table ``index`` at this batch with embedding ``dim``."""
    p = self.population
    hist = thin(p.hist[index], self.matrix)
    pooling = float(p.pooling[index])
    unique = self.batch_size * pooling / max(mean_count(hist), 1.0)
    rows = max(MIN_ROWS, int(np.ceil(unique * p.rows_factor[index])))
    return TableFeatures(name or f'table_{index}', rows, dim, pooling, tuple(hist))

  def tasks(self, n: int, seed: int, num_devices: int = 4,
            memory_cap_bytes: int = DEFAULT_CAP, tables_range: Sequence[int] = TABLES_RANGE,
            dims: Sequence[int] = TRACE_DIMS, max_redraws: int = 10_000) -> list[Task]:
    """``n`` tasks, deterministic by ``seed`` (module docstring)."""
    rng = np.random.default_rng(seed)
    limit = FILL * num_devices * memory_cap_bytes
    out = []
    for i in range(n):
      count = int(rng.integers(tables_range[0], tables_range[1]))
      for _ in range(max_redraws):
        idx = rng.integers(0, self.stats.num_tables, count)
        dim = rng.choice(np.asarray(dims), count)
        tables = tuple(self.table(int(j), int(d), f't{k}_{j}')
                       for k, (j, d) in enumerate(zip(idx, dim)))
        if sum(t.num_bytes for t in tables) <= limit:
          break
      else:
        raise ValueError(f'no task of {count} tables fits {num_devices} devices x '
                         f'{memory_cap_bytes} bytes in {max_redraws} draws; raise the cap')
      out.append(Task(i, tables, num_devices, memory_cap_bytes, self.batch_size,
                      tuple(int(j) for j in idx)))
    return out
