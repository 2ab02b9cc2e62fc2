"""Ground truth: a plan's cost measured on the JAX device at hand.

Compute, per device of a plan (``measure_plan``): the device's step over its shards as
``step.measure_device`` runs and times it (fbgemm's fused table-batched embedding bag: gather,
pool per sample over the jagged ids, backpropagate NeuroShard's fixed random gradient, apply the
fused sparse optimizer to the touched rows; shards of one width fused in one buffer and one
compiled program, shapes bucketed so that programs are reused across devices and plans). The
devices of a plan are measured one after the other on this one device.

What a device's shard reads, from one batch of the table's ids (``tasks.sample_ids``, seeded per
table): table_wise and column shards all ids of the global batch; row blocks (row_wise,
table_row_wise, grid) the ids that fall in their rows; data_parallel the ids of the device's
``B / N`` samples.

Communication (``comm_ms``): the CPU devices of an emulated mesh exchange memory copies, which
say nothing about a cluster's links, so the all-to-all is TorchRec's analytic form (its planner's
estimator): a device's pooled outputs forward plus their gradients backward, ``2 x bytes / bw``,
with the bytes of ``device_comm_bytes`` (each device's share of
``jaxrec.sharding.embedding_comms.torchrec_bytes``: ``B x (sum of its shards' dims) x 4`` for
table- and column-wise shards) and TorchRec's bandwidths (600 GB/s inside a host, 12.5 GB/s
across) scaled by ``CPU_SCALE`` = TorchRec's DDR / HBM bandwidths (51 / 897), so that the links
keep their GPU-cluster weight against compute measured on this CPU. Id bytes (the input
all-to-all) are not charged, as TorchRec's ``Perf.total`` leaves them out.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.planner import torchrec_port as trp
from jaxrec.planner.features import TableFeatures
from jaxrec.planner.step import (  # pylint: disable=unused-import (re-exported)
    Buckets, ShardWork, StepCache, Timing, measure_device)
from jaxrec.planner.tasks import sample_ids
from jaxrec.sharding.embedding_comms import ID_BYTES, OUT_BYTES
from jaxrec.sharding.embedding_plan import EmbeddingPlan

CPU_SCALE = trp.DDR_MEM_BW / trp.HBM_MEM_BW


# ---- what each device reads ---------------------------------------------------------------------

def _by_name(tables: Sequence[TableFeatures]) -> dict[str, TableFeatures]:
  return {t.name: t for t in tables}


def device_work(plan: EmbeddingPlan, tables: Sequence[TableFeatures], batch_size: int,
                seed: int = 0) -> list[list[ShardWork]]:
  """Per device, its ``ShardWork`` s (module docstring), ids drawn per table from ``seed``."""
  configs = [t.config() for t in tables]
  by_name = _by_name(tables)
  n = plan.num_devices
  drawn = {}
  for i, t in enumerate(tables):
    drawn[t.name] = sample_ids(t, batch_size, np.random.default_rng([seed, i]))
  out = [[] for _ in range(n)]
  for s in plan.shards(configs):
    t = by_name[s.table]
    ids, samples = drawn[s.table]
    kind = plan.tables[s.table].sharding_type
    batch = batch_size
    if kind == 'data_parallel':
      b = batch_size // n
      keep = (samples >= s.device * b) & (samples < (s.device + 1) * b)
      ids, samples, batch = ids[keep], samples[keep] - s.device * b, b
    else:
      keep = (ids >= s.row_lo) & (ids < s.row_hi)
      ids, samples = ids[keep] - s.row_lo, samples[keep]
    rows, width = s.row_hi - s.row_lo, s.col_hi - s.col_lo
    feats = shard_features(t, plan, rows, width)
    out[s.device].append(ShardWork(rows, width, ids, samples, batch, feats))
  return out


def shard_features(table: TableFeatures, plan: EmbeddingPlan, rows: int,
                   width: int) -> TableFeatures:
  """A shard as the cost model sees it: its rows and width; the ids it reads per sample of the
  global batch (``pooling x`` its share of the rows, ``/ N`` for data_parallel's local batch);
  the table's histogram."""
  kind = plan.tables[table.name].sharding_type
  pooling = table.pooling * (1 / plan.num_devices if kind == 'data_parallel'
                             else rows / table.rows)
  return dataclasses.replace(table, rows=max(rows, 1), dim=width, pooling=pooling)


def device_shards(plan: EmbeddingPlan,
                  tables: Sequence[TableFeatures]) -> list[list[TableFeatures]]:
  """Per device, its shards' features (``shard_features``); empty row blocks left out."""
  by_name = _by_name(tables)
  out = [[] for _ in range(plan.num_devices)]
  for s in plan.shards([t.config() for t in tables]):
    if s.row_hi > s.row_lo:
      out[s.device].append(shard_features(by_name[s.table], plan, s.row_hi - s.row_lo,
                                          s.col_hi - s.col_lo))
  return out


# ---- communication ------------------------------------------------------------------------------

def device_comm_bytes(plan: EmbeddingPlan, tables: Sequence[EmbeddingBagConfig], batch_size: int,
                      bag_sizes: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
  """``(id bytes [N], output bytes [N])``: each device's share of
  ``embedding_comms.torchrec_bytes`` (the sums over devices equal it): the ids its shards
  receive and the pooled outputs they send (data_parallel: ``R d 4 / N`` of the gradient)."""
  bag_sizes = dict(bag_sizes or {})
  w, w_l = plan.num_devices, plan.devices_per_host
  ids, out = np.zeros(w), np.zeros(w)
  for t in tables:
    spec = plan.tables[t.name]
    kind = spec.sharding_type
    f = len(t.feature_names)
    table_ids = batch_size * sum(bag_sizes.get(x, 1.0) for x in t.feature_names) * ID_BYTES
    for s in plan.table_shards(t):
      width = s.col_hi - s.col_lo
      pooled = batch_size * width * f * OUT_BYTES
      if kind == 'data_parallel':
        out[s.device] += t.num_embeddings * t.embedding_dim * OUT_BYTES / w
      elif kind in ('table_wise', 'column_wise', 'table_column_wise'):
        ids[s.device] += table_ids
        out[s.device] += pooled
      elif kind == 'row_wise':
        ids[s.device] += table_ids / w
        out[s.device] += pooled
      else:  # table_row_wise, grid: one host per column shard
        ids[s.device] += table_ids / w_l
        out[s.device] += pooled * (1 + w_l / w)
  return ids, out


def device_comm_dims(plan: EmbeddingPlan, tables: Sequence[TableFeatures],
                     batch_size: int) -> np.ndarray:
  """``[N]`` output floats per sample each device sends (the comm model's input)."""
  _, out = device_comm_bytes(plan, [t.config() for t in tables], batch_size)
  return out / (batch_size * OUT_BYTES)


def comm_bandwidth(plan: EmbeddingPlan) -> float:
  """Bytes per ms of the all-to-all (module docstring)."""
  bw = trp.INTRA_NODE_BANDWIDTH if plan.num_hosts == 1 else trp.CROSS_NODE_BANDWIDTH
  return bw * CPU_SCALE


def comm_ms_of_dims(dims, batch_size: int, num_hosts: int) -> np.ndarray:
  """``2 x B x dims x 4 / bw`` per device (forward outputs + backward gradients)."""
  bw = (trp.INTRA_NODE_BANDWIDTH if num_hosts == 1 else trp.CROSS_NODE_BANDWIDTH) * CPU_SCALE
  return 2.0 * batch_size * np.asarray(dims, np.float64) * OUT_BYTES / bw


def comm_ms(plan: EmbeddingPlan, tables: Sequence[TableFeatures], batch_size: int) -> np.ndarray:
  """Per device all-to-all ms of ``plan`` (module docstring)."""
  return comm_ms_of_dims(device_comm_dims(plan, tables, batch_size), batch_size, plan.num_hosts)


# ---- a plan -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PlanMeasurement:
  """Per device: measured compute, analytic all-to-all, their sum; the plan's cost is the max."""
  compute: tuple[Timing, ...]
  comm_ms: tuple[float, ...]

  @property
  def total_ms(self) -> np.ndarray:
    return np.array([c.median_ms for c in self.compute]) + np.array(self.comm_ms)

  @property
  def max_ms(self) -> float:
    return float(self.total_ms.max())


def measure_plan(plan: EmbeddingPlan, tables: Sequence[TableFeatures], batch_size: int, *,
                 seed: int = 0, optimizer: str = 'rowwise_adagrad', warmup: int = 1,
                 runs: int = 5, buckets: Optional[Buckets] = None,
                 cache: Optional[StepCache] = None,
                 known: Optional[dict] = None) -> PlanMeasurement:
  """Measures every device of ``plan`` one after the other on this device (module docstring).

  ``buckets`` defaults to ``Buckets(buffer_bytes=plan.memory_cap_bytes)`` (one fused buffer per
  width serves every device). ``known`` (``device_key -> Timing``, updated) reuses the timing of
  a device whose shards and ids were measured before, by this plan or another of the same
  tables and seed (methods often agree on some devices)."""
  buckets = buckets or Buckets(buffer_bytes=plan.memory_cap_bytes or 0)
  works = device_work(plan, tables, batch_size, seed)
  known = {} if known is None else known
  timings = []
  for d, w in enumerate(works):
    key = device_key(plan, tables, d)
    if key not in known:
      known[key] = measure_device(w, optimizer=optimizer, warmup=warmup, runs=runs,
                                  buckets=buckets, cache=cache)
    timings.append(known[key])
  return PlanMeasurement(tuple(timings),
                         tuple(float(x) for x in comm_ms(plan, tables, batch_size)))


def device_key(plan: EmbeddingPlan, tables: Sequence[TableFeatures], device: int) -> tuple:
  """What device ``device`` of ``plan`` reads: its shards (table, rows, columns, kind) and the
  global batch of a data-parallel shard's slice; equal keys under one seed are the same work."""
  out = []
  for s in plan.shards([t.config() for t in tables]):
    if s.device == device:
      kind = plan.tables[s.table].sharding_type
      part = (device, plan.num_devices) if kind == 'data_parallel' else ()
      out.append((s.table, s.row_lo, s.row_hi, s.col_hi - s.col_lo, kind == 'data_parallel')
                 + part)
  return tuple(sorted(out))
