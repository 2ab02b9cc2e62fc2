"""One device's embedding step as the ground truth times it: fused, bucketed, compiled once.

What runs (``measure_device``), as fbgemm's table-batched embedding bag (TBE) runs a device's
tables: the device's shards are grouped by width, and the shards of one width share one fused
buffer ``[rows, w]`` (each shard a block of rows at its offset, as TBE's ``weights`` with
``weights_offsets``) and one program, which

  1. gathers the row of every id (``collection.gather_rows``), ``[N, w]``;
  2. pools them per (shard, sample) by a segment sum over the jagged ids (no padding per bag),
     ``[S, w]`` with ``S`` the summed batches of the shards;
  3. backpropagates NeuroShard's fixed random gradient ``grads_tensor`` of the pooled outputs
     (plus ``0 x pooled``: a dense top's gradient depends on the pooled outputs, and without that
     dependency XLA on CPU copies the whole fused buffer each step to keep the lookup's read
     apart from the in-place update);
  4. applies the fused sparse optimizer (``SparseOptimizer.apply``, row-wise Adagrad by default:
     one sort-based ``unique`` over the ids of all the group's shards, as TBE's backward sorts
     them together) to the touched rows, in place (tables and state donated).

The groups of a device run one after the other, each waited for (TorchRec runs one TBE per
group of tables alike); a step's time is the sum. The time is the median over ``runs`` steps
after ``warmup`` (``Timing``: quartiles, extremes).

Shapes are bucketed so that a compiled program serves many measurements (``Buckets``): a group is
compiled for ``(w, rows, ids, segments)`` rounded up on a geometric grid, and a ``StepCache``
keeps its programs, its buffers (per width and rows, reused from one measurement to the next:
values do not change the work) and its gradients. The padding:

  * rows: the fused buffer holds at least ``buffer_bytes`` (by default a device's memory cap, so
    that one buffer per width serves every load) and a power of two of rows; rows past the last
    shard are never read or written, and no step touches a row it does not look up, so the rows
    cost nothing (``tests/planner/test_step.py`` checks that no table-sized copy is compiled);
  * ids: rounded up to ``ids_per_octave`` steps per power of two (8: at most +12.5 %, +4.7 % on
    the pre-training loads' mean); a padding id reads the buffer's last row, pools into no
    output, and is not an update (it sorts to the end of ``unique``). It is the one padding
    that costs work: ``docs/planner.md`` gives its measured effect against exact shapes;
  * segments: ``segments_per_octave`` steps (2: 1, 1.5, 2, 3, 4, ... batches); a padded segment
    is a zero output row and a term of the loss (``[S, w]`` work, no lookups).

``Buckets.exact()`` compiles every shape as it is (the first version of this measurement, one
program per load: 7-8 s per pre-training load on a 2-core CPU, mostly compilation).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.embeddings.collection import gather_rows
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.planner.features import BYTES_PER_VALUE, TableFeatures


@dataclasses.dataclass(frozen=True)
class Timing:
  """Milliseconds of ``runs`` timed calls."""
  median_ms: float
  p25_ms: float
  p75_ms: float
  min_ms: float
  max_ms: float
  runs: int

  @classmethod
  def of(cls, times_ms: Sequence[float]) -> 'Timing':
    t = np.asarray(times_ms, np.float64)
    if t.size == 0:
      return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    p25, p50, p75 = np.percentile(t, [25, 50, 75])
    return cls(float(p50), float(p25), float(p75), float(t.min()), float(t.max()), int(t.size))


@dataclasses.dataclass(frozen=True)
class ShardWork:
  """What one shard of a device reads in a step.

  Attributes:
    rows, width: the shard's shape.
    ids: ``int32 [N]`` rows read (in ``[0, rows)``).
    samples: ``int32 [N]`` sample of each id (in ``[0, batch)``).
    batch: samples the shard pools for.
    features: the shard as the cost model sees it.
  """
  rows: int
  width: int
  ids: np.ndarray
  samples: np.ndarray
  batch: int
  features: TableFeatures


def round_up(n: int, per_octave: int) -> int:
  """The smallest ``v >= n`` on the grid ``2^k (1 + j / per_octave)`` (``per_octave`` 0: ``n``;
  below ``per_octave`` every integer is on the grid)."""
  if per_octave <= 0 or n <= per_octave:
    return int(n)
  top = 1 << (int(n).bit_length() - 1)  # 2^k <= n
  step = top // per_octave
  return -(-int(n) // step) * step


@dataclasses.dataclass(frozen=True)
class Buckets:
  """How a group's shapes are rounded up (module docstring); 0 steps per octave: exact.
  ``min_ids``: fewer ids are padded to it (tiny groups share one program: tests, doc runs)."""
  ids_per_octave: int = 8
  segments_per_octave: int = 2
  rows_per_octave: int = 1
  buffer_bytes: int = 0
  min_ids: int = 0

  @classmethod
  def exact(cls) -> 'Buckets':
    return cls(0, 0, 0, 0)

  def ids(self, n: int) -> int:
    return round_up(max(n, self.min_ids), self.ids_per_octave)

  def rows(self, rows: int, width: int) -> int:
    floor = -(-self.buffer_bytes // (BYTES_PER_VALUE * width))
    return round_up(max(rows, floor, 1), self.rows_per_octave)


@dataclasses.dataclass(frozen=True)
class GroupKey:
  """The compiled shape of a group: width, buffer rows, ids, output segments, optimizer."""
  width: int
  rows: int
  ids: int
  segments: int
  optimizer: str


@dataclasses.dataclass
class Group:
  """One width's shards of a device, laid out in a fused buffer (module docstring)."""
  key: GroupKey
  ids: np.ndarray  # int32 [key.ids]: row in the buffer; padding: key.rows (not an update)
  segments: np.ndarray  # int32 [key.ids]: output row; padding: key.segments (dropped)
  real_ids: int


def group_works(works: Sequence[ShardWork], buckets: Buckets, optimizer: str) -> list[Group]:
  """The device's shards grouped by width, in first-seen order (module docstring)."""
  by_width: dict[int, list[ShardWork]] = {}
  for w in works:
    if w.ids.size and w.rows:
      by_width.setdefault(w.width, []).append(w)
  out = []
  for width, ws in by_width.items():
    row_off = np.cumsum([0] + [w.rows for w in ws])
    seg_off = np.cumsum([0] + [w.batch for w in ws])
    n = sum(w.ids.size for w in ws)
    key = GroupKey(width, buckets.rows(int(row_off[-1]), width),
                   buckets.ids(n),
                   round_up(int(seg_off[-1]), buckets.segments_per_octave), optimizer)
    ids = np.full(key.ids, key.rows, np.int32)
    segs = np.full(key.ids, key.segments, np.int32)
    ids[:n] = np.concatenate([w.ids.astype(np.int64) + o for w, o in zip(ws, row_off)])
    segs[:n] = np.concatenate([w.samples.astype(np.int64) + o for w, o in zip(ws, seg_off)])
    out.append(Group(key, ids, segs, n))
  return out


def _step_fn(optimizer: SparseOptimizer, segments: int):
  """``(table [R, w], state, ids [N], segments [N], grads_tensor [S, w]) -> (table, state,
  loss)`` (module docstring)."""

  def step(table, state, ids, segs, cot):
    rows = gather_rows(table, ids)  # [N, w]; padding ids read row R - 1
    pool = lambda r: jax.ops.segment_sum(r, segs, num_segments=segments)  # padding dropped
    pooled, pool_vjp = jax.vjp(pool, rows)  # [S, w]
    (grads,) = pool_vjp(cot + 0.0 * pooled)  # [N, w]
    touched = ids < table.shape[0]
    table, state = optimizer.apply(table, state, ids, grads, touched)
    return table, state, jnp.vdot(pooled, cot)

  return step


class StepCache:
  """Compiled group programs, fused buffers and gradients, reused across measurements.

  Args:
    max_buffer_bytes: buffers kept (least recently used dropped beyond it).
    max_programs: compiled programs kept (least recently used dropped beyond it). Each CPU
      executable holds memory mappings; a campaign that kept every one of its programs ran out of
      the process's mappings (LLVM "Cannot allocate memory") after about 570 of them.
  """

  def __init__(self, max_buffer_bytes: int = 2 ** 31, max_programs: int = 192):
    self.programs: OrderedDict = OrderedDict()
    self.max_programs = max_programs
    self.buffers: OrderedDict = OrderedDict()
    self.grads: dict[tuple[int, int], jax.Array] = {}
    self.max_buffer_bytes = max_buffer_bytes
    self.compiles, self.compile_seconds = 0, 0.0

  def program(self, key: GroupKey):
    if key not in self.programs:
      t0 = time.perf_counter()
      opt = SparseOptimizer(key.optimizer, 0.01)
      table = jax.ShapeDtypeStruct((key.rows, key.width), jnp.float32)
      state = jax.eval_shape(opt.init, table)
      vec = jax.ShapeDtypeStruct((key.ids,), jnp.int32)
      cot = jax.ShapeDtypeStruct((key.segments, key.width), jnp.float32)
      fn = jax.jit(_step_fn(opt, key.segments), donate_argnums=(0, 1))
      self.programs[key] = fn.lower(table, state, vec, vec, cot).compile()
      self.compiles += 1
      self.compile_seconds += time.perf_counter() - t0
      while len(self.programs) > self.max_programs:
        self.programs.popitem(last=False)
    self.programs.move_to_end(key)
    return self.programs[key]

  def buffers_for(self, key: GroupKey) -> list:
    """``[table, state]`` of ``key``'s width and rows (a list: the caller stores the step's
    donated outputs back into it)."""
    bkey = (key.width, key.rows, key.optimizer)
    if bkey not in self.buffers:
      size = lambda b: sum(x.nbytes for x in jax.tree.leaves(b))
      # numpy fills: no program compiled per buffer shape (values do not change the work; the
      # optimizer's accumulators start at 0, as fbgemm's row-wise Adagrad).
      shape = (key.rows, key.width)
      state = jax.eval_shape(SparseOptimizer(key.optimizer, 0.01).init,
                             jax.ShapeDtypeStruct(shape, jnp.float32))
      self.buffers[bkey] = [jax.device_put(np.full(shape, 0.01, np.float32)),
                            jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype)),
                                         state)]
      while len(self.buffers) > 1 and sum(map(size, self.buffers.values())) > self.max_buffer_bytes:
        self.buffers.popitem(last=False)
    self.buffers.move_to_end(bkey)
    return self.buffers[bkey]

  def grads_tensor(self, key: GroupKey) -> jax.Array:
    gkey = (key.segments, key.width)
    if gkey not in self.grads:
      rng = np.random.default_rng(list(gkey))
      self.grads[gkey] = jax.device_put(rng.normal(0, 1, gkey).astype(np.float32))
    return self.grads[gkey]


_DEFAULT_CACHE: Optional[StepCache] = None


def default_cache() -> StepCache:
  """The process's ``StepCache`` (measurements without one share it)."""
  global _DEFAULT_CACHE  # pylint: disable=global-statement
  if _DEFAULT_CACHE is None:
    _DEFAULT_CACHE = StepCache()
  return _DEFAULT_CACHE


def measure_device(works: Sequence[ShardWork], *, optimizer: str = 'rowwise_adagrad',
                   warmup: int = 1, runs: int = 5, buckets: Optional[Buckets] = None,
                   cache: Optional[StepCache] = None) -> Timing:
  """Times one device's step over ``works`` (module docstring); no work costs 0.

  Args:
    works: the device's shards.
    optimizer: the sparse optimizer (``SparseOptimizer.kind``).
    warmup, runs: untimed, then timed steps (compilation is never timed).
    buckets: shape rounding (default ``Buckets()``: the fused buffer holds the device's rows).
    cache: programs and buffers to reuse (default: the process's).
  """
  cache = cache or default_cache()
  groups = group_works(works, buckets or Buckets(), optimizer)
  if not groups:
    return Timing.of([])
  inputs = [(cache.buffers_for(g.key), cache.program(g.key), jnp.asarray(g.ids),
             jnp.asarray(g.segments), cache.grads_tensor(g.key)) for g in groups]
  times = []
  for i in range(warmup + runs):
    t0 = time.perf_counter()
    for buf, prog, ids, segs, cot in inputs:
      buf[0], buf[1], loss = prog(buf[0], buf[1], ids, segs, cot)
      jax.block_until_ready((buf[0], buf[1], loss))
    if i >= warmup:
      times.append(1e3 * (time.perf_counter() - t0))
  return Timing.of(times)


def padded_fraction(works: Sequence[ShardWork], buckets: Buckets) -> float:
  """Padding ids over real ids of the device's groups (0: exact)."""
  groups = group_works(works, buckets, 'sgd')
  real = sum(g.real_ids for g in groups)
  return sum(g.key.ids for g in groups) / real - 1 if real else 0.0


def use_compile_cache(path: str) -> None:
  """Keeps compiled programs in ``path`` across processes (JAX's persistent cache), so that a
  resumed campaign or another script measuring the same buckets does not compile them again."""
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
