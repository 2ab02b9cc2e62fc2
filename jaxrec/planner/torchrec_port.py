"""TorchRec's embedding sharding planner, ported (``torchrec/distributed/planner``, 1.9).

The pipeline, one small piece each as TorchRec has them:

  * ``enumerate_options`` (``EmbeddingEnumerator``): every table x sharding type (data_parallel,
    table_wise, column_wise, table_column_wise, row_wise, table_row_wise, grid: the CUDA list)
    with TorchRec's shard sizes (``calculate_shard_sizes_and_offsets``: row blocks of
    ``ceil(rows / n)``, column blocks of the first multiple of 4 >= 128 dividing the dim);
  * ``shard_storage`` (``EmbeddingStorageEstimator``): per shard, tensor + optimizer state
    (``_get_optimizer_multipler``: SGD 0, Adam 2, row-wise Adagrad ``1 / dim``, else 1) + the
    input and output buffers (8-byte ids, float32 outputs);
  * ``shard_perf`` (``EmbeddingPerfEstimator`` with its default config): per shard, forward
    compute ``(ids read + rows read x dim + outputs written) / device bandwidth`` (table-wise
    kinds read ``max(dim, 32)`` and pay the block penalty 1.15 below dim 128, 1.75 below 64),
    backward ``2 x forward``, all-to-all / reduce-scatter / all-gather bytes over TorchRec's
    link bandwidths, data_parallel's all-reduce and optimizer kernels;
  * proposers (``GridSearchProposer`` up to 10,000 proposals, ``GreedyProposer`` by depth and by
    sum, ``UniformProposer``) and ``GreedyPerfPartitioner`` (uniform kinds first, then the rest
    by storage, largest first: device kinds onto the device with the least perf so far that fits,
    host kinds onto the least loaded host that holds them, grid over hosts);
  * the plan rated by its slowest rank (``NoopPerfModel``), the best kept.

tests/compat/test_torchrec_planner_port.py checks the shard sizes, I/O bytes, optimizer
multipliers and every kind's perf estimate against TorchRec's functions, and that the port picks
the plans TorchRec's ``EmbeddingShardingPlanner`` picks when told the same (fused / dense
kernels, pooling factors, no reservation, no optimizer state).

Where the port departs from TorchRec, and why:
  * compute kernels: only ``fused`` (``dense`` for data_parallel): jaxrec keeps every table in
    device memory, so UVM / caching / key-value kernels have no counterpart;
  * storage reservation: none (TorchRec reserves 15 % of HBM plus the dense model and inputs):
    ``memory_cap_bytes`` is already the budget for embedding shards, as ``EmbeddingPlan`` takes it;
  * tables are unweighted with one feature each and their pooling factor as ``input_lengths``
    (TorchRec's default is 1.0 without constraints): the planner is told the statistics the other
    methods see;
  * the device is 'cuda' with TorchRec's constants (HBM 897 GB/s, links 600 / 12.5 GB/s): the
    planner's own model of the machine, its estimates only rank options; plans are measured on
    the device at hand;
  * no ``post_process_perfs`` (uneven row shards are charged like the others), no stats
    reporting, no plan cache / loader;
  * errors: when no proposal can be partitioned a ``NoFitError`` names the table whose
    smallest option is largest against the cap.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional, Sequence

import numpy as np

from jaxrec.planner.features import TableFeatures
from jaxrec.planner.placement import NoFitError
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding

# torchrec/distributed/planner/constants.py (bytes per ms).
INTRA_NODE_BANDWIDTH = 600 * 1024 ** 3 / 1000
CROSS_NODE_BANDWIDTH = 12.5 * 1024 ** 3 / 1000
HBM_MEM_BW = 897 * 1024 ** 3 / 1000
DDR_MEM_BW = 51 * 1024 ** 3 / 1000
MIN_CW_DIM = 128
BIGINT_DTYPE = 8
FULL_BLOCK_EMB_DIM, HALF_BLOCK_PENALTY, QUARTER_BLOCK_PENALTY = 128, 1.15, 1.75
BWD_COMPUTE_MULTIPLIER = 2.0
BATCHED_COPY_PERF_FACTOR = 2.455
DP_ELEMENTWISE_KERNELS_PERF_FACTOR = 9.22
MAX_PROPOSALS = 10_000

KINDS = ('data_parallel', 'table_wise', 'column_wise', 'table_column_wise', 'row_wise',
         'table_row_wise', 'grid')
PARTITION_BY = {'table_wise': 'device', 'column_wise': 'device', 'table_row_wise': 'host',
                'table_column_wise': 'host', 'row_wise': 'uniform', 'data_parallel': 'uniform',
                'grid': 'multi_host'}
OPTIMIZER_MULTIPLIER = {'sgd': lambda d: 0.0, 'adam': lambda d: 2.0,
                        'rowwise_adagrad': lambda d: 1.0 / d, 'adagrad': lambda d: 1.0}


@dataclasses.dataclass(frozen=True)
class Topology:
  """``world_size`` devices, ``local_world_size`` per host, ``hbm_cap`` bytes each; ``batch_size``
  is TorchRec's per-rank batch."""
  world_size: int
  local_world_size: int
  hbm_cap: int
  batch_size: int
  device_bw: float = HBM_MEM_BW
  intra_host_bw: float = INTRA_NODE_BANDWIDTH
  inter_host_bw: float = CROSS_NODE_BANDWIDTH

  def comm_bw(self, world: int, local: int, all_reduce: bool = False) -> float:
    """``BasicCommsBandwidths.get_bw``."""
    if all_reduce:
      return self.inter_host_bw * local
    return self.intra_host_bw if world <= local else self.inter_host_bw


@dataclasses.dataclass(frozen=True)
class Perf:
  fwd_compute: float
  fwd_comms: float
  bwd_compute: float
  bwd_comms: float
  input_dist_comms: float = 0.0

  @property
  def total(self) -> float:
    """TorchRec's ``Perf.total``: input distribution left out."""
    return self.fwd_compute + self.bwd_compute + self.fwd_comms + self.bwd_comms


@dataclasses.dataclass
class Option:
  """A ``ShardingOption``: one table, one kind; shards as ``(rows, cols, row_off, col_off)``."""
  table: TableFeatures
  kind: str
  shards: list[tuple[int, int, int, int]]
  storage: list[int] = dataclasses.field(default_factory=list)
  perf: list[Perf] = dataclasses.field(default_factory=list)

  @property
  def partition_by(self) -> str:
    return PARTITION_BY[self.kind]

  @property
  def total_storage(self) -> int:
    return sum(self.storage)

  @property
  def total_perf(self) -> float:
    return sum(p.total for p in self.perf)

  def score(self, use_depth: bool = True) -> float:
    """``_sharding_option_score``."""
    totals = [p.total for p in self.perf]
    return max(totals) if use_depth else sum(totals)


# ---- enumerator ---------------------------------------------------------------------------------

def _row_blocks(rows: int, n: int) -> list[tuple[int, int]]:
  """``_calculate_rw_shard_sizes_and_offsets``: ``(size, offset)``."""
  block = math.ceil(rows / n)
  out, off = [], 0
  for _ in range(n):
    size = max(0, min(block, rows - off))
    out.append((size, off))
    off += size
  return out


def cw_block(cols: int) -> int:
  """``_get_block_size_for_cw_shard(cols, None)``."""
  base = next((i for i in range(MIN_CW_DIM, cols) if cols % i == 0 and i % 4 == 0), cols)
  block = min(base, cols)
  return block if cols % block == 0 else cols


def shard_sizes(kind: str, rows: int, cols: int, world: int,
                local: int) -> list[tuple[int, int, int, int]]:
  """``calculate_shard_sizes_and_offsets``: ``(rows, cols, row_offset, col_offset)``."""
  if kind == 'data_parallel':
    return [(rows, cols, 0, 0)] * world
  if kind == 'table_wise':
    return [(rows, cols, 0, 0)]
  if kind in ('row_wise', 'table_row_wise'):
    return [(s, cols, o, 0) for s, o in _row_blocks(rows, world if kind == 'row_wise' else local)]
  block = cw_block(cols)
  if kind in ('column_wise', 'table_column_wise'):
    return [(rows, block, 0, block * i) for i in range(cols // block)]
  if kind == 'grid':
    return [(s, block, o, block * i) for i in range(cols // block)
            for s, o in _row_blocks(rows, local)]
  raise ValueError(f'unknown sharding type {kind!r}')


def enumerate_options(tables: Sequence[TableFeatures], topo: Topology,
                      optimizer: str = 'rowwise_adagrad',
                      kinds: Sequence[str] = KINDS) -> list[Option]:
  """Every table x kind, storage and perf estimated (``populate_estimates``)."""
  out = []
  for t in tables:
    for kind in kinds:
      opt = Option(t, kind, shard_sizes(kind, t.rows, t.dim, topo.world_size,
                                        topo.local_world_size))
      opt.storage = [shard_storage(opt, s, topo, optimizer) for s in opt.shards]
      opt.perf = [shard_perf(kind, s[0], s[1], t.pooling, topo) for s in opt.shards]
      out.append(opt)
  return out


# ---- estimators ---------------------------------------------------------------------------------

def io_sizes(kind: str, shard_cols: int, empty: bool, pooling: float,
             topo: Topology) -> tuple[int, int]:
  """``_calculate_shard_io_sizes``: (input bytes, output bytes) of one shard."""
  b, n, l = topo.batch_size, topo.world_size, topo.local_world_size
  inputs, outputs = pooling * b, min(1.0, pooling) * b
  if kind == 'data_parallel':
    return math.ceil(inputs * BIGINT_DTYPE), math.ceil(outputs * shard_cols * 4)
  if kind in ('table_wise', 'column_wise', 'table_column_wise'):
    return math.ceil(inputs * n * BIGINT_DTYPE), math.ceil(outputs * n * shard_cols * 4)
  per = inputs / (n if kind == 'row_wise' else l)
  if empty:
    return 0, 0
  return math.ceil(per * n * BIGINT_DTYPE), math.ceil(outputs * n * shard_cols * 4)


def shard_storage(opt: Option, shard: tuple[int, int, int, int], topo: Topology,
                  optimizer: str) -> int:
  """HBM bytes of one shard (``calculate_shard_storages``, cuda, no pipeline): tensor +
  optimizer state + inputs + outputs."""
  t = opt.table
  rows, cols = shard[0], shard[1]
  full = t.rows * t.dim * 4
  tensor = full if opt.kind == 'data_parallel' else math.ceil(full * rows * cols / (t.rows * t.dim))
  state = math.ceil(tensor * OPTIMIZER_MULTIPLIER[optimizer](t.dim))
  inp, out = io_sizes(opt.kind, cols, rows * cols == 0, t.pooling, topo)
  return tensor + state + inp + out


def block_penalty(dim: int) -> float:
  if dim >= FULL_BLOCK_EMB_DIM:
    return 1.0
  return HALF_BLOCK_PENALTY if dim >= 64 else QUARTER_BLOCK_PENALTY


def shard_perf(kind: str, rows: int, dim: int, pooling: float, topo: Topology) -> Perf:
  """``EmbeddingPerfEstimator`` (default config, training) for one shard, in ms."""
  b, n, l = topo.batch_size, topo.world_size, topo.local_world_size
  inputs, outputs = pooling * b, min(1.0, pooling) * b
  dense = kind == 'data_parallel'
  device_bw = topo.device_bw * (0.5 if dense else 1.0)  # kernel_bw_lookup: dense 0.5 x HBM
  a2a = topo.comm_bw(n, l)
  if dense:
    read = math.ceil(inputs * BIGINT_DTYPE)
    fwd = (read + inputs * dim * 4 + outputs * dim * 4) / device_bw
    table = rows * dim * 4
    nodes = min(n / l, 2)
    all_reduce = table * (2 * nodes - 1) / nodes / topo.comm_bw(n, l, all_reduce=True)
    if n > 2 * l:
      all_reduce *= 2
    bwd_comms = all_reduce + table * DP_ELEMENTWISE_KERNELS_PERF_FACTOR / device_bw
    return Perf(fwd, 0.0, BWD_COMPUTE_MULTIPLIER * fwd, bwd_comms, 0.0)
  out = outputs * n * dim * 4
  input_dist = math.ceil(inputs * n * BIGINT_DTYPE) / a2a
  if kind in ('table_wise', 'column_wise', 'table_column_wise'):
    read = math.ceil(inputs * n * BIGINT_DTYPE)
    fwd = (read + inputs * n * max(dim, 32) * 4 + out) * block_penalty(dim) / device_bw
    return Perf(fwd, out / a2a, BWD_COMPUTE_MULTIPLIER * fwd, out / a2a, input_dist)
  per = inputs / (n if kind == 'row_wise' else l)
  read = math.ceil(per * n * BIGINT_DTYPE)
  fwd = (read + per * n * dim * 4 + out) / device_bw
  copy = out * BATCHED_COPY_PERF_FACTOR / device_bw
  if kind == 'row_wise':
    fwd_comms = out / topo.comm_bw(n, l)  # reduce-scatter
    bwd_comms = out / topo.comm_bw(n, l) + copy  # all-gather + batched copy
  else:  # table_row_wise, grid: inside the host, then across groups
    groups = max(1, n // l)
    inter = (outputs * groups * dim * 4 / topo.comm_bw(groups, 1)) if groups > 1 else 0.0
    fwd_comms = out / topo.comm_bw(l, l) + inter
    bwd_comms = inter + out / topo.comm_bw(l, l) + copy
  return Perf(fwd, fwd_comms, BWD_COMPUTE_MULTIPLIER * fwd, bwd_comms, input_dist)


def table_wise_compute_ms(t: TableFeatures, batch_size: int, device_bw: float) -> float:
  """Forward + backward compute of a whole table on one device (TorchRec's table-wise formula
  with the global batch; the ``AnalyticCostModel``)."""
  inputs = t.pooling * batch_size
  fwd = (inputs * BIGINT_DTYPE + inputs * max(t.dim, 32) * 4
         + min(1.0, t.pooling) * batch_size * t.dim * 4) * block_penalty(t.dim) / device_bw
  return (1 + BWD_COMPUTE_MULTIPLIER) * fwd


# ---- proposers ----------------------------------------------------------------------------------

def _by_table(options: Sequence[Option], use_depth: bool = True) -> dict[str, list[Option]]:
  out: dict[str, list[Option]] = {}
  for o in options:
    out.setdefault(o.table.name, []).append(o)
  for opts in out.values():
    opts.sort(key=lambda o: o.score(use_depth))  # stable: enumeration order breaks ties
  return out


def grid_search_proposals(options: Sequence[Option], max_proposals: int = MAX_PROPOSALS):
  """``GridSearchProposer``: every combination, skipped above ``max_proposals``."""
  by = _by_table(options)
  if math.prod(len(v) for v in by.values()) > max_proposals:
    return
  for combo in itertools.product(*by.values()):
    yield list(combo)


def greedy_proposals(options: Sequence[Option], use_depth: bool = True):
  """``GreedyProposer``: best option per table, then the table with the largest current storage
  (max, sum) moves to its next option, until none has one left."""
  by = _by_table(options, use_depth)
  index = {k: 0 for k in by}
  while True:
    yield [by[k][i] for k, i in index.items()]
    largest, best = None, (0, 0)
    for k, opts in by.items():
      i = index[k]
      if i + 1 < len(opts):
        cur = (max(opts[i].storage), sum(opts[i].storage))
        if cur > best:
          largest, best = k, cur
    if largest is None:
      return
    index[largest] += 1


def uniform_proposals(options: Sequence[Option]):
  """``UniformProposer``: per kind offered to every table, each table's best option of it."""
  names = {o.table.name for o in options}
  by_kind: dict[str, dict[str, list[Option]]] = {}
  for o in options:
    by_kind.setdefault(o.kind, {}).setdefault(o.table.name, []).append(o)
  for per_table in by_kind.values():
    if set(per_table) == names:
      yield [min(v, key=lambda o: o.score()) for v in per_table.values()]


# ---- partitioner --------------------------------------------------------------------------------

class _Devices:
  """Free storage and accumulated perf per rank."""

  def __init__(self, topo: Topology):
    self.topo = topo
    self.free = [topo.hbm_cap] * topo.world_size
    self.perf = [0.0] * topo.world_size

  def hosts(self) -> list[list[int]]:
    l = self.topo.local_world_size
    return [list(range(h * l, (h + 1) * l)) for h in range(self.topo.world_size // l)]

  def place(self, rank: int, storage: int, perf: Perf) -> None:
    self.free[rank] -= storage
    self.perf[rank] += perf.total


class _NoFit(Exception):
  pass


def _uniform(opt: Option, ranks: Sequence[int], dev: _Devices) -> list[int]:
  if len(opt.shards) != len(ranks):
    raise _NoFit(f'{len(opt.shards)} shards for {len(ranks)} devices')
  for s, r in zip(opt.storage, ranks):
    if s > dev.free[r]:
      raise _NoFit(f'{opt.table.name}: a shard of {s} bytes does not fit device {r}')
  for s, p, r in zip(opt.storage, opt.perf, ranks):
    dev.place(r, s, p)
  return list(ranks)


def _device_partition(opt: Option, ranks: Sequence[int], dev: _Devices) -> list[int]:
  """Each shard onto the rank with the least perf (ties: local rank, rank) where it fits."""
  out = []
  l = dev.topo.local_world_size
  for s, p in zip(opt.storage, opt.perf):
    order = sorted(ranks, key=lambda r: (dev.perf[r], r % l, r))
    r = next((r for r in order if s <= dev.free[r]), None)
    if r is None:
      raise _NoFit(f'{opt.table.name}: no device holds a shard of {s} bytes')
    dev.place(r, s, p)
    out.append(r)
  return out


def _host_order(dev: _Devices) -> list[list[int]]:
  return sorted(dev.hosts(), key=lambda h: sum(dev.perf[r] for r in h))


def _cohost_partition(opt: Option, dev: _Devices) -> list[int]:
  for host in _host_order(dev):
    if opt.total_storage > sum(dev.free[r] for r in host):
      continue
    trial = _Devices(dev.topo)
    trial.free, trial.perf = list(dev.free), list(dev.perf)
    try:
      ranks = (_uniform(opt, host, trial) if opt.kind == 'table_row_wise'
               else _device_partition(opt, host, trial))
    except _NoFit:
      continue
    dev.free, dev.perf = trial.free, trial.perf
    return ranks
  raise _NoFit(f'{opt.table.name}: no host holds its {opt.kind} shards')


def _multi_host_partition(opt: Option, dev: _Devices) -> list[int]:
  l = dev.topo.local_world_size
  need, rem = divmod(len(opt.shards), l)
  if rem:
    raise _NoFit(f'{opt.table.name}: grid shards do not split over hosts')
  hosts = _host_order(dev)
  starts = [0] if need >= len(hosts) else range(len(hosts) - need + 1)
  for start in starts:
    chosen = [hosts[(start + i) % len(hosts)] for i in range(need)]
    ranks = [r for h in chosen for r in h]
    trial = _Devices(dev.topo)
    trial.free, trial.perf = list(dev.free), list(dev.perf)
    try:
      _uniform(opt, ranks, trial)
    except _NoFit:
      continue
    dev.free, dev.perf = trial.free, trial.perf
    return ranks
  raise _NoFit(f'{opt.table.name}: no hosts hold its grid shards')


def partition(proposal: Sequence[Option], topo: Topology) -> tuple[list[list[int]], list[float]]:
  """``GreedyPerfPartitioner`` (sort by storage): ranks per option's shards and perf per rank;
  raises ``_NoFit``."""
  dev = _Devices(topo)
  ranks: dict[int, list[int]] = {}
  for i, o in enumerate(proposal):
    if o.partition_by == 'uniform':
      ranks[i] = _uniform(o, range(topo.world_size), dev)
  rest = sorted((i for i, o in enumerate(proposal) if o.partition_by != 'uniform'),
                key=lambda i: proposal[i].total_storage, reverse=True)  # stable
  for i in rest:
    o = proposal[i]
    if o.partition_by == 'multi_host':
      ranks[i] = _multi_host_partition(o, dev)
    elif o.partition_by == 'host':
      ranks[i] = _cohost_partition(o, dev)
    else:
      ranks[i] = _device_partition(o, range(topo.world_size), dev)
  return [ranks[i] for i in range(len(proposal))], dev.perf


# ---- planner ------------------------------------------------------------------------------------

def to_embedding_plan(proposal: Sequence[Option], ranks: Sequence[Sequence[int]], topo: Topology,
                      memory_cap_bytes: Optional[int]) -> EmbeddingPlan:
  """A partitioned proposal as a jaxrec ``EmbeddingPlan``."""
  l = topo.local_world_size
  specs = {}
  for o, r in zip(proposal, ranks):
    if o.kind in ('data_parallel', 'row_wise'):
      specs[o.table.name] = TableSharding(o.kind)
    elif o.kind in ('table_wise', 'column_wise', 'table_column_wise'):
      specs[o.table.name] = TableSharding(o.kind, devices=tuple(r))
    elif o.kind == 'table_row_wise':
      specs[o.table.name] = TableSharding(o.kind, hosts=(r[0] // l,))
    else:  # grid: one host per column block, in block order
      specs[o.table.name] = TableSharding(o.kind, hosts=tuple(r[i] // l
                                                             for i in range(0, len(r), l)))
  return EmbeddingPlan(specs, topo.world_size // l, l, memory_cap_bytes)


@dataclasses.dataclass
class Result:
  plan: EmbeddingPlan
  rating: float  # TorchRec's estimate of the slowest rank, ms
  proposals: int


def plan(tables: Sequence[TableFeatures], num_hosts: int, devices_per_host: int,
         memory_cap_bytes: Optional[int], batch_size: int, *,
         optimizer: str = 'rowwise_adagrad', kinds: Sequence[str] = KINDS,
         max_proposals: int = MAX_PROPOSALS) -> Result:
  """TorchRec's ``EmbeddingShardingPlanner.plan`` on ``tables`` (module docstring).

  ``batch_size`` is the global batch (TorchRec's per-rank batch is ``batch_size / devices``).
  """
  n = num_hosts * devices_per_host
  cap = memory_cap_bytes if memory_cap_bytes else np.iinfo(np.int64).max // 4
  topo = Topology(n, devices_per_host, cap, max(1, batch_size // n))
  options = enumerate_options(tables, topo, optimizer, kinds)
  proposers = [grid_search_proposals(options, max_proposals), greedy_proposals(options, True),
               greedy_proposals(options, False), uniform_proposals(options)]
  best, seen, count = None, set(), 0
  for proposal in itertools.chain(*proposers):
    key = tuple(sorted(map(id, proposal)))
    if key in seen:
      continue
    seen.add(key)
    count += 1
    try:
      ranks, perf = partition(proposal, topo)
    except _NoFit:
      continue
    rating = max(perf)
    if best is None or rating < best[0]:
      best = (rating, proposal, ranks)
  if best is None:
    raise NoFitError(_no_plan_message(options, topo))
  return Result(to_embedding_plan(best[1], best[2], topo, memory_cap_bytes), best[0], count)


def _no_plan_message(options: Sequence[Option], topo: Topology) -> str:
  by = _by_table(options)
  worst = max(by.values(), key=lambda opts: min(max(o.storage) for o in opts))
  need = min(max(o.storage) for o in worst)
  t = worst[0].table
  if need > topo.hbm_cap:
    return (f'torchrec planner: table {t.name!r} ({t.rows} x {t.dim}, {t.num_bytes} bytes) fits '
            f'no device: its smallest shard needs {need} bytes with optimizer state and buffers '
            f'(TorchRec\'s storage estimate), the cap is {topo.hbm_cap} bytes per device')
  total = sum({o.table.name: o.table.num_bytes for o in options}.values())
  return (f'torchrec planner: no proposal could be partitioned onto {topo.world_size} devices of '
          f'{topo.hbm_cap} bytes (the tables hold {total} bytes before optimizer state and '
          'buffers)')
