"""Sharded embedding-bag collections: every TorchRec sharding type with shard_map.

The batch (``KeyedJagged``, ``[B, F, L]``) is split over all devices of the ``(host, local)``
mesh, ``b = B / N`` samples each; pooled outputs come back split the same way. The plan's shards
are grouped by communication pattern (and width ``W``); each device keeps the shards of a group
stacked in one buffer ``[R_max, W]`` (global ``[N * R_max, W]``, split over the devices). Every
(shard, feature) pair on device ``k`` is a *slot* ``j`` of that device.

Forward, per group (``S`` = most slots on a device):
  * input distribution (all kernels but data_parallel), one **all-to-all** of int32 over all
    devices:
      - table_wise / column_wise / table_column_wise: every destination gets the ids of its slots
        and their weights (bit-cast), ``int32 [N, S, b, L, 2]`` (-1 where the destination's slot
        does not read the feature);
      - row_wise / table_row_wise / grid: each id goes only to the device whose row block holds
        it, in per-destination buckets of a static capacity ``C``: ``int32 [N, C, P]`` (buffer
        row, place in the source's slots and, for weighted tables, the weight;
        ``jaxrec.sharding.id_buckets``: capacity rule, exact second pass on overflow). So every
        id travels once, as TorchRec's bucketised id all-to-all;
  * lookup: ``rows = buffer[ids]`` (``[N, S, b, L, W]``, row-split ``[N, T, W]``), pooled per
    slot and source ``[N, S, b, W]`` (row-split: a segment sum over the places);
  * output distribution:
      - table_wise / column_wise / table_column_wise ('a2a'): **all-to-all** of the pooled
        outputs back to the samples' devices; column shards are concatenated there;
      - row_wise ('rs'): the slots line up on every device, so the partial sums are added and
        handed out in one **reduce-scatter** (``psum_scatter`` over all devices);
      - table_row_wise / grid ('twrw'): **reduce-scatter inside the host** (over ``local``), then
        **all-to-all across hosts** (over ``host``);
      - data_parallel: the table is replicated; no collective forward, gradients are all-reduced
        (dense) or all-gathered rows (sparse) backward.
'mean' pooling divides by the bag length at the end, on the samples' own device.
``sequence_lookup`` (unpooled, ``[B, L, d]``) sends the masked rows back the same way.

Sparse optimizers split the lookup in two (``gather`` -> rows, ``pool`` -> outputs): the
gradient of the rows (``[N, S, b, L, W]``, row-split ``[N, T, W]``) is applied per device to its
own buffer by ``SparseOptimizer.apply`` (segment-sum per unique row, scatter). Row-wise Adagrad
keeps one accumulator per row *of each shard*, so column-split tables (column_wise,
table_column_wise, grid) get one per column shard, as in fbgemm / TorchRec (not the unsharded
value).

Ids outside a table behave as in ``jaxrec.embeddings.collection`` (zero rows, or an error with
``id_check='error'``).

Example::

  mesh = embedding_mesh(plan)
  ebc = ShardedEmbeddingBagCollection(tables, plan, mesh)
  buffers = ebc.shard(params)                     # {group: [N * R_max, W]} on the mesh
  pooled = jax.jit(ebc.lookup)(buffers, kjt)      # {feature: [B, d]}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.embeddings.collection import ID_CHECKS, check_ids, effective_weights, valid_slots
from jaxrec.embeddings.config import EmbeddingBagConfig, validate_configs
from jaxrec.embeddings.jagged import KeyedJagged
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.sharding import id_buckets
from jaxrec.sharding.embedding_plan import EmbeddingPlan, Shard
from jaxrec.sharding.mesh import HOST_AXIS, make_hierarchical_mesh

LOCAL_AXIS = 'local'
AXES = (HOST_AXIS, LOCAL_AXIS)
BUCKETED = ('rs', 'twrw')  # kernels whose ids are bucketized per destination (id_buckets)
KERNELS = {'data_parallel': 'dp', 'table_wise': 'a2a', 'column_wise': 'a2a',
           'table_column_wise': 'a2a', 'row_wise': 'rs', 'table_row_wise': 'twrw',
           'grid': 'twrw'}


def embedding_mesh(plan: EmbeddingPlan, devices=None) -> Mesh:
  """The ``(host, local)`` mesh of ``plan`` (one process: virtual hosts of consecutive devices)."""
  return make_hierarchical_mesh({LOCAL_AXIS: plan.devices_per_host}, plan.num_hosts, devices)


@dataclasses.dataclass(frozen=True)
class _Slot:
  feature: str
  row_lo: int
  row_hi: int
  offset: int  # first buffer row of the shard
  col_lo: int
  col_hi: int


@dataclasses.dataclass
class _Group:
  """Shards of one kernel and width, stacked per device."""
  key: str
  kernel: str
  width: int
  shards: list[tuple[Shard, int]]  # (shard, buffer offset)
  slots: list[list[Optional[_Slot]]]  # [N][S]
  rows: int  # R_max


class ShardedEmbeddingBagCollection:
  """Pooled lookups of ``tables`` sharded by ``plan`` on ``mesh`` (see the module docstring).

  Args:
    tables: the ``EmbeddingBagConfig`` s.
    plan: an ``EmbeddingPlan`` for them (validated here).
    mesh: a ``(host, local)`` mesh of ``plan.num_hosts`` x ``plan.devices_per_host`` devices.
    id_check: 'none' or 'error' (as ``EmbeddingBagCollection``).
    id_capacity_factor: bucket capacity of the row-split types (``jaxrec.sharding.id_buckets``):
      0 (default) sizes it from the batch for uniform ids with a 6-sigma margin; ``f > 0`` gives
      ``f`` times the expected ids per destination. An overflow is handled exactly by a second
      all-to-all that runs only on the steps that need it.
  """

  def __init__(self, tables: Sequence[EmbeddingBagConfig], plan: EmbeddingPlan, mesh: Mesh,
               id_check: str = 'none', id_capacity_factor: float = 0.0):
    self.tables = validate_configs(tables)
    self.plan = plan
    self.mesh = mesh
    self.id_check = id_check
    if id_check not in ID_CHECKS:
      raise ValueError(f'id_check must be one of {ID_CHECKS}, got {id_check!r}')
    if not id_capacity_factor >= 0:
      raise ValueError(f'id_capacity_factor must be >= 0 (0: auto), got {id_capacity_factor}')
    self.id_capacity_factor = float(id_capacity_factor)
    if tuple(mesh.axis_names) != AXES or mesh.devices.shape != (plan.num_hosts,
                                                                 plan.devices_per_host):
      raise ValueError(f'mesh {dict(mesh.shape)} does not match the plan: expected axes {AXES} of '
                       f'sizes ({plan.num_hosts}, {plan.devices_per_host}); use embedding_mesh')
    self.features = tuple(f for t in self.tables for f in t.feature_names)
    self._by_name = {t.name: t for t in self.tables}
    self.groups = self._make_groups(plan.shards(self.tables))
    rows_of = {f: t.num_embeddings for t in self.tables for f in t.feature_names}
    self.routes = {k: id_buckets.make_routes(g.slots, self.features, rows_of)
                   for k, g in self.groups.items() if g.kernel in BUCKETED}
    self._weighted = {k: any(self._by_name[s.table].weighted for s, _ in g.shards)
                      for k, g in self.groups.items()}

  # ---- layout -----------------------------------------------------------------------------------
  def _make_groups(self, shards: list[Shard]) -> dict[str, _Group]:
    n = self.plan.num_devices
    by_key: dict[str, list[Shard]] = {}
    kernel_of = {}
    for s in shards:
      kernel = KERNELS[self.plan.tables[s.table].sharding_type]
      key = f'dp/{s.table}' if kernel == 'dp' else f'{kernel}/w{s.col_hi - s.col_lo}'
      kernel_of[key] = kernel
      by_key.setdefault(key, []).append(s)
    groups = {}
    for key, ss in by_key.items():
      kernel = kernel_of[key]
      offsets, placed, slots = [0] * n, [], [[] for _ in range(n)]
      for s in ss:
        off = 0 if kernel == 'dp' else offsets[s.device]
        offsets[s.device] = off + (s.row_hi - s.row_lo)
        placed.append((s, off))
        for f in self._by_name[s.table].feature_names:
          slots[s.device].append(_Slot(f, s.row_lo, s.row_hi, off, s.col_lo, s.col_hi))
      width = ss[0].col_hi - ss[0].col_lo
      n_slots = max(len(x) for x in slots)
      slots = [x + [None] * (n_slots - len(x)) for x in slots]
      groups[key] = _Group(key, kernel, width, placed, slots, max(1, max(offsets)))
    return groups

  def _spec(self, group: _Group, ndim: int) -> P:
    if group.kernel == 'dp' or ndim == 0:
      return P()
    return P(AXES, *([None] * (ndim - 1)))

  def shardings(self) -> dict[str, NamedSharding]:
    """``{group: NamedSharding}`` of the buffers."""
    return {k: NamedSharding(self.mesh, self._spec(g, 2)) for k, g in self.groups.items()}

  def _shard_leaf(self, group: _Group, arrays: dict) -> jnp.ndarray:
    """Stacks each device's shards of ``arrays`` (``{table: [R, d] or [R]}``)."""
    if group.kernel == 'dp':
      return arrays[group.shards[0][0].table]
    n = self.plan.num_devices
    per_dev = [[] for _ in range(n)]
    tail = None
    for s, _ in group.shards:  # in offset order per device
      a = arrays[s.table]
      piece = a[s.row_lo:s.row_hi, s.col_lo:s.col_hi] if a.ndim == 2 else a[s.row_lo:s.row_hi]
      tail = piece.shape[1:]
      per_dev[s.device].append(piece)
    blocks = []
    for pieces in per_dev:
      used = sum(p.shape[0] for p in pieces)
      pad = jnp.zeros((group.rows - used,) + tail, pieces[0].dtype if pieces else jnp.float32)
      blocks.append(jnp.concatenate(pieces + [pad], axis=0))
    return jnp.concatenate(blocks, axis=0)  # [N * R_max, ...]

  def _unshard_leaf(self, group: _Group, buf: jnp.ndarray, out: dict) -> None:
    if group.kernel == 'dp':
      out[group.shards[0][0].table] = buf
      return
    blocks = buf.reshape((self.plan.num_devices, group.rows) + buf.shape[1:])
    for s, off in group.shards:
      t = self._by_name[s.table]
      piece = blocks[s.device, off:off + s.row_hi - s.row_lo]
      if s.table not in out:
        shape = (t.num_embeddings, t.embedding_dim) if buf.ndim == 2 else (t.num_embeddings,)
        out[s.table] = jnp.zeros(shape, buf.dtype)
      if buf.ndim == 2:
        out[s.table] = out[s.table].at[s.row_lo:s.row_hi, s.col_lo:s.col_hi].set(piece)
      else:
        out[s.table] = out[s.table].at[s.row_lo:s.row_hi].set(piece)

  def shard(self, params: dict) -> dict[str, jnp.ndarray]:
    """``{table: [R, d]}`` -> ``{group: buffer}`` placed on the mesh."""
    missing = [t.name for t in self.tables if t.name not in params]
    if missing:
      raise KeyError(f'params lack tables {missing}')
    shardings = self.shardings()
    return {k: jax.device_put(self._shard_leaf(g, params), shardings[k])
            for k, g in self.groups.items()}

  def unshard(self, buffers: dict) -> dict[str, jnp.ndarray]:
    """``{group: buffer}`` -> ``{table: [R, d]}`` (also for gradients of the buffers)."""
    out = {}
    for k, g in self.groups.items():
      self._unshard_leaf(g, buffers[k], out)
    return out

  def unshard_states(self, states: dict) -> dict[str, dict]:
    """Sparse-optimizer states per group -> ``{table: state}`` (row leaves reassembled)."""
    out = {}
    for k, g in self.groups.items():
      per_key = {}
      for name, leaf in states[k].items():
        if leaf.ndim == 0:
          continue
        tmp = {}
        self._unshard_leaf(g, leaf, tmp)
        per_key[name] = tmp
      for s, _ in g.shards:
        st = {name: per_key[name][s.table] for name in per_key}
        if 'count' in states[k]:
          st['count'] = states[k]['count']
        out[s.table] = st
    return out

  def init_states(self, opt: SparseOptimizer, buffers: dict) -> dict[str, dict]:
    """``{group: opt.init(buffer)}`` placed like the buffers."""
    out = {}
    for k, g in self.groups.items():
      st = opt.init(buffers[k])
      out[k] = {n: jax.device_put(v, NamedSharding(self.mesh, self._spec(g, v.ndim)))
                for n, v in st.items()}
    return out

  # ---- forward ----------------------------------------------------------------------------------
  def _inputs(self, kjt: KeyedJagged):
    """Collection-ordered ids / valid / weights ``[B, F, L]`` and lengths ``[B, F]``."""
    if self.id_check == 'error':
      check_ids(kjt, self.tables)
    cols = [kjt.index(f) for f in self.features]
    cfg = {f: t for t in self.tables for f in t.feature_names}
    valid = jnp.stack([valid_slots(kjt, kjt.index(f), cfg[f].num_embeddings)
                       for f in self.features], 1)
    w = jnp.stack([effective_weights(kjt, kjt.index(f), cfg[f]) for f in self.features], 1)
    return kjt.ids[:, cols], valid, w, kjt.lengths[:, cols]

  def _slot_arrays(self, g: _Group):
    """Static ``[N, S]`` arrays: feature column, row range, offset, real."""
    col = np.zeros((len(g.slots), len(g.slots[0])), np.int32)
    lo, hi, off = np.zeros_like(col), np.zeros_like(col), np.zeros_like(col)
    for k, row in enumerate(g.slots):
      for j, s in enumerate(row):
        if s is not None:
          col[k, j] = self.features.index(s.feature)
          lo[k, j], hi[k, j], off[k, j] = s.row_lo, s.row_hi, s.offset
    return col, lo, hi, off  # empty slots: hi == lo == 0, so nothing is in range

  def id_capacity(self, group: str, batch_size: int, max_length: int) -> int:
    """Bucket capacity ``C`` of a row-split group for a global batch ``[batch_size, F, L]``."""
    per_device = (batch_size // self.plan.num_devices) * max_length
    return id_buckets.capacity(self.routes[group], self.plan.num_devices, per_device,
                               self.id_capacity_factor)

  def required_capacity_factor(self, kjt: KeyedJagged) -> float:
    """The smallest ``id_capacity_factor`` whose buckets hold ``kjt`` (a global batch), computed
    on the host; 0 without row-split tables. Size the factor from sample batches with it."""
    ids, valid, _, _ = self._inputs(kjt)
    n = self.plan.num_devices
    per_device = (ids.shape[0] // n) * ids.shape[2]
    return max([id_buckets.required_factor(id_buckets.host_counts(r, ids, valid, n), r, n,
                                           per_device) for r in self.routes.values()],
               default=0.0)

  def _bucketed_stage1(self, g: _Group, cap: int, per_device: int, buf, ids, valid, w):
    """Row-split input distribution: buckets of ``cap``, then the overflow's second pass."""
    n, s = len(g.slots), len(g.slots[0])
    weighted = self._weighted[g.key]
    dest, row, pos, weight, slot = id_buckets.route_ids(self.routes[g.key], ids, valid, w, s)
    rank, counts = id_buckets.rank_and_count(dest, slot, n, s)
    entries = (dest, row, pos, weight, rank, n)
    received = jax.lax.all_to_all(id_buckets.pack(*entries, 0, cap, weighted), AXES, 0, 0)
    local = (jnp.sum(counts, -1).max() > cap).astype(jnp.int32)
    over = jax.lax.pmax(local, AXES) > 0  # the same on every device
    extra = id_buckets.bound(self.routes[g.key], n, per_device) - cap
    if extra > 0:  # second pass, only when some bucket overflowed
      second = jax.lax.cond(over, lambda p: jax.lax.all_to_all(p, AXES, 0, 0), lambda p: p,
                            id_buckets.pack(*entries, cap, extra, weighted))
      received = jnp.concatenate([received, second], axis=1)  # [N (source), T, P]
    idx, pos, ww = id_buckets.unpack(received, weighted)
    return jnp.take(buf, jnp.clip(idx, 0), axis=0), idx, ww, pos, counts, over[None]

  def _stage1_body(self, g: _Group, cap: int, per_device: int, buf, ids, valid, w):
    """Input distribution and row gather (per device): ``rows, idx, weights, pos, counts``.

    data_parallel: ``rows [b, S, L, d]``, no input distribution. Table / column-wise: ids and
    weights of every slot ``[N, S, b, L, 2]`` (weights bit-cast to int32) in one all-to-all;
    rows ``[N, S, b, L, W]``. Row-split: the ids bucketized per destination (``id_buckets``),
    ``int32 [N, C, P]`` in one all-to-all, plus the second pass (``id_buckets``); rows
    ``[N (source), T, W]`` (``T = C`` when ``C`` is the bound), ``pos [N, T]`` and
    ``counts [N (destination), S]`` (the ids this device sends). ``over [1]``: whether some
    bucket overflowed (the second pass ran). Unused outputs are zeros of shape ``[1]``.
    """
    col, lo, hi, off = self._slot_arrays(g)
    none = jnp.zeros((1,), jnp.int32)
    if g.kernel == 'dp':
      c = col[0]  # [S]
      x, v, ww = ids[:, c], valid[:, c], w[:, c]  # [b, S, L]
      idx = jnp.where(v, x, -1)
      return (jnp.take(buf, jnp.clip(idx, 0), axis=0), idx, jnp.where(v, ww, 0.0), none, none,
              none > 0)
    n, s = col.shape
    if g.kernel in BUCKETED:
      return self._bucketed_stage1(g, cap, per_device, buf, ids, valid, w)
    b, _, length = ids.shape
    flat = col.reshape(-1)
    x = ids[:, flat].reshape(b, n, s, length).transpose(1, 2, 0, 3)  # [N, S, b, L]
    v = valid[:, flat].reshape(b, n, s, length).transpose(1, 2, 0, 3)
    ww = w[:, flat].reshape(b, n, s, length).transpose(1, 2, 0, 3)
    lo_, hi_, off_ = (jnp.asarray(a)[:, :, None, None] for a in (lo, hi, off))
    ok = v & (x >= lo_) & (x < hi_)
    idx = jnp.where(ok, off_ + x - lo_, -1)
    ww = jax.lax.bitcast_convert_type(jnp.where(ok, ww, 0.0).astype(jnp.float32), jnp.int32)
    received = jax.lax.all_to_all(jnp.stack([idx, ww], -1), AXES, 0, 0)  # [N (source), ...]
    idx = received[..., 0]
    ww = jax.lax.bitcast_convert_type(received[..., 1], jnp.float32)
    rows = jnp.take(buf, jnp.clip(idx, 0), axis=0)  # [N, S, b, L, W]
    return rows, idx, ww, none, none, none > 0

  def _stage2_body(self, g: _Group, b: int, length: Optional[int], rows, ww, idx, pos):
    """Pooling and output distribution (per device). Returns ``{feature: [b, d]}`` (sums).

    With ``length`` (sequence lookups) nothing is pooled: each slot's rows, zero where ``idx``
    is -1, travel the same way and ``{feature: [b, L, d]}`` comes back.
    """
    if g.kernel == 'dp':
      if length is None:
        pooled = jnp.einsum('bsl,bsld->bsd', ww.astype(rows.dtype), rows)
      else:
        pooled = jnp.where((idx >= 0)[..., None], rows, 0)  # [b, S, L, d]
      return {s.feature: pooled[:, j] for j, s in enumerate(g.slots[0]) if s is not None}
    if g.kernel in BUCKETED:  # [N (source), S, b, W] or [N, S, b, L, W]
      pooled = id_buckets.partial_sums(rows, ww, pos, len(g.slots[0]), b, length)
    elif length is None:
      pooled = jnp.einsum('nsbl,nsblw->nsbw', ww.astype(rows.dtype), rows)  # [N, S, b, W]
    else:
      pooled = jnp.where((idx >= 0)[..., None], rows, 0)  # [N, S, b, L, W]
    if g.kernel == 'a2a':
      back = jax.lax.all_to_all(pooled, AXES, 0, 0)  # [N (owner), S, b, W]
      pieces = [(s, back[k, j]) for k, row in enumerate(g.slots) for j, s in enumerate(row)
                if s is not None]
    elif g.kernel == 'rs':
      red = jax.lax.psum_scatter(pooled, AXES, scatter_dimension=0)  # [S, b, W]
      pieces = [(s, red[j]) for j, s in enumerate(g.slots[0]) if s is not None]
    else:  # twrw
      h, lc = self.plan.num_hosts, self.plan.devices_per_host
      pooled = pooled.reshape((h, lc) + pooled.shape[1:])  # [H, Lc, S, b, W]
      red = jax.lax.psum_scatter(pooled, LOCAL_AXIS, scatter_dimension=1)  # [H, S, b, W]
      back = jax.lax.all_to_all(red, HOST_AXIS, 0, 0)  # [H (owner), S, b, W]
      pieces = [(s, back[hh, j]) for hh in range(h) for j, s in enumerate(g.slots[hh * lc])
                if s is not None]
    out = {}
    for s, p in pieces:  # p: [b, W] or [b, L, W]
      if s.feature not in out:
        out[s.feature] = jnp.zeros(p.shape[:-1] + (self._feature_dim(s.feature),), p.dtype)
      out[s.feature] = out[s.feature].at[..., s.col_lo:s.col_hi].add(p)
    return out

  def _feature_dim(self, feature: str) -> int:
    return next(t.embedding_dim for t in self.tables if feature in t.feature_names)

  def _shard_map(self, fn, in_specs, out_specs, check_vma: bool = True):
    return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=check_vma)

  def gather(self, buffers: dict, kjt: KeyedJagged) -> dict:
    """Stage 1: input distribution and row gather.

    Returns:
      the context ``pool`` and ``apply_row_grads`` take, per group: the gathered ``rows``,
      their buffer rows ``idx`` (-1: no lookup) and ``weights`` (global: data_parallel
      ``[B, S, L, d]``; table / column-wise ``[N * N, S, b, L, W]``; row-split
      ``[N * N, T, W]`` with the ids' places ``pos [N * N, T]``), the ids each device sends each
      destination ``id_counts [N * N, S]`` (row-split); ``id_overflow`` (bool scalar: some bucket
      overflowed and the exact second pass ran; worth logging, nothing to check) and
      ``lengths [B, F]``.
    """
    ids, valid, w, lengths = self._inputs(kjt)
    batch = P(AXES)
    per_device = (ids.shape[0] // self.plan.num_devices) * ids.shape[2]
    ctx = {'rows': {}, 'idx': {}, 'weights': {}, 'pos': {}, 'id_counts': {}, 'lengths': lengths,
           'id_overflow': jnp.zeros((), bool)}
    for k, g in self.groups.items():
      cap = self.id_capacity(k, ids.shape[0], ids.shape[2]) if g.kernel in BUCKETED else 0
      fn = self._shard_map(functools.partial(self._stage1_body, g, cap, per_device),
                           (self._spec(g, 2), batch, batch, batch), (batch,) * 6)
      ctx['rows'][k], ctx['idx'][k], ctx['weights'][k], ctx['pos'][k], counts, over = fn(
          buffers[k], ids, valid, w)
      if g.kernel in BUCKETED:
        ctx['id_counts'][k] = counts
        ctx['id_overflow'] = ctx['id_overflow'] | jnp.any(over)
    return ctx

  def _stage2(self, rows: dict, ctx: dict, length: Optional[int]) -> dict:
    batch = P(AXES)
    b = ctx['lengths'].shape[0] // self.plan.num_devices
    out = {}
    for k, g in self.groups.items():
      feats = sorted({s.feature for row in g.slots for s in row if s is not None})
      fn = self._shard_map(functools.partial(self._stage2_body, g, b, length), (batch,) * 4,
                           {f: batch for f in feats})
      out.update(fn(rows[k], ctx['weights'][k], ctx['idx'][k], ctx['pos'][k]))
    return out

  def pool(self, rows: dict, ctx: dict) -> dict[str, jnp.ndarray]:
    """Stage 2 (pooling + output distribution): ``{feature: [B, d]}``; differentiable in rows."""
    out = self._stage2(rows, ctx, None)
    lengths = ctx['lengths']
    for t in self.tables:
      if t.pooling == 'mean':
        for f in t.feature_names:
          i = self.features.index(f)
          out[f] = out[f] / jnp.maximum(lengths[:, i], 1)[:, None].astype(out[f].dtype)
    return out

  def sequence_lookup(self, buffers: dict, kjt: KeyedJagged) -> dict[str, jnp.ndarray]:
    """Unpooled: ``{feature: [B, L, d]}``, equal to the unsharded ``sequence_lookup``.

    The rows travel like pooled outputs (one more axis ``L``); row-split types add up the one
    shard that holds each id with zeros from the others.
    """
    ctx = self.gather(buffers, kjt)
    return self._stage2(ctx['rows'], ctx, kjt.ids.shape[2])

  def lookup(self, buffers: dict, kjt: KeyedJagged) -> dict[str, jnp.ndarray]:
    """``{feature: [B, d]}``, equal to ``pooled_lookup`` of the unsharded tables."""
    ctx = self.gather(buffers, kjt)
    return self.pool(ctx['rows'], ctx)

  # ---- sparse optimizer -------------------------------------------------------------------------
  def apply_row_grads(self, opt: SparseOptimizer, buffers: dict, states: dict, ctx: dict,
                      row_grads: dict) -> tuple[dict, dict]:
    """Applies the gradients of ``ctx['rows']`` to the touched rows of each device's buffer."""
    batch = P(AXES)
    new_b, new_s = {}, {}
    for k, g in self.groups.items():
      st_specs = {n: self._spec(g, v.ndim) for n, v in states[k].items()}

      def body(buf, st, idx, grads, g=g):
        idx, grads = idx.reshape(-1), grads.reshape(-1, g.width if g.kernel != 'dp'
                                                     else buf.shape[1])
        if g.kernel == 'dp':  # replicas apply every device's rows, in the same order
          idx = jax.lax.all_gather(idx, AXES, tiled=True)
          grads = jax.lax.all_gather(grads, AXES, tiled=True)
        return opt.apply(buf, st, idx, grads, idx >= 0)

      # data_parallel: every replica applies the same all-gathered rows, so the result is
      # replicated although computed from device-varying inputs (hence no vma check).
      fn = self._shard_map(body, (self._spec(g, 2), st_specs, batch, batch),
                           (self._spec(g, 2), st_specs), check_vma=g.kernel != 'dp')
      new_b[k], new_s[k] = fn(buffers[k], states[k], ctx['idx'][k], row_grads[k])
    return new_b, new_s
