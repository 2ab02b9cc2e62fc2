"""Id bucketization of the row-split types: every id travels only to the shard that holds it.

Row-wise, table-row-wise and grid tables split their rows over several devices. Each source
device sorts its ids into one bucket per destination device and sends all buckets with one
all-to-all, as TorchRec's ``bucketize_kjt_before_all2all`` + ``KJTAllToAll``; the buckets have a
static capacity ``C`` (ids per source and destination) so that the program has static shapes.

Routing. A *route* is one feature read through one column shard of its table: its rows are split
in blocks over devices (``row_blocks``); an id ``x`` goes to the device whose block holds it, as
buffer row ``offset + x - row_lo`` of that device's slot ``j`` for the feature. Ids of a grid
table travel once per column shard (one route each), as in TorchRec.

Payload. Entry ``e`` of a bucket is ``int32 [P]``: the buffer row (-1: empty entry), the position
``l * (S * b) + j * b + sample`` of the id in the source's ``[S, b, L]`` slots (-1: empty) and,
for groups with a weighted table, the float32 weight bit-cast to int32 (``P = 3``; else
``P = 2`` and the weight of a valid entry is 1). One all-to-all moves ``int32 [N, C, P]``.

Capacity (``id_capacity_factor``). With ``mu_d`` the ids a source sends to destination ``d``
when its ``b x L`` slots are all filled with uniformly drawn ids (the share of each route's rows
that ``d`` holds), and ``T_d`` the most it can send there (every id of the routes ``d`` serves):

  * ``0`` (default, "auto"): ``C = max_d min(T_d, ceil(mu_d + 6 sqrt(mu_d) + 6))``. The count is a
    sum of independent Bernoulli variables of mean ``mu_d``; Bernstein's inequality bounds
    ``P(count >= mu + 6 sqrt(mu) + 6) <= exp(-14)`` for every ``mu >= 0`` (``exp(-18)`` for large
    ``mu``). So uniform ids never overflow in practice, and for large batches ``C`` approaches
    ``mu`` (1.19 mu at mu = 1024), which keeps the id bytes near TorchRec's.
  * ``f > 0``: ``C = max_d min(T_d, ceil(f mu_d))``; ``f >= N`` (or any ``C >= T_d``) can never
    overflow.

Overflow: skewed ids (a Zipf head, or the one id of a missing value or of padding rows, lands in
the first row block) can exceed ``C``. Every device counts its ids per destination before the
cut; a scalar all-reduce (max) tells all devices whether any bucket overflowed, and only then
a **second pass** runs (a ``lax.cond`` on that flag, the same branch on every device): the
entries ranked ``C .. T - 1`` (``T = max_d T_d``, so nothing can be left) go in a second
all-to-all ``int32 [N, T - C, P]`` and join the first ones. The result is exact on every step;
steps without overflow send only the first buckets. The receiving side always has room for
``T`` entries per source (static shapes), so lookups and the sparse update cost what the padded
layout did; only the communication shrinks. ``required_factor`` sizes the factor from sample
batches so that the second pass stays rare; the lookup context reports ``id_overflow``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MARGIN_SIGMAS = 6.0  # auto capacity: mu + 6 sqrt(mu) + 6 (see the module docstring)


@dataclasses.dataclass(frozen=True)
class Route:
  """One feature through one column shard: its row blocks, in row order (non-empty ones).

  Attributes:
    feature: the feature name.
    column: its column in the collection's ``[B, F, L]`` inputs.
    table_rows: rows of its table.
    row_lo, row_hi, devices, slots, offsets: per block, its rows, device, slot on that device
      and first buffer row there.
  """
  feature: str
  column: int
  table_rows: int
  row_lo: tuple[int, ...]
  row_hi: tuple[int, ...]
  devices: tuple[int, ...]
  slots: tuple[int, ...]
  offsets: tuple[int, ...]


def make_routes(slots: Sequence[Sequence], features: Sequence[str],
                table_rows: dict) -> list[Route]:
  """Routes of a group from its ``[N][S]`` slots (``_Slot`` or None)."""
  blocks: dict[tuple[str, int], list] = {}
  for k, row in enumerate(slots):
    for j, s in enumerate(row):
      if s is not None and s.row_hi > s.row_lo:
        blocks.setdefault((s.feature, s.col_lo), []).append((s.row_lo, s.row_hi, k, j, s.offset))
  routes = []
  for (feature, _), bs in sorted(blocks.items()):
    bs.sort()
    lo, hi, dev, slot, off = (tuple(x) for x in zip(*bs))
    routes.append(Route(feature, features.index(feature), table_rows[feature], lo, hi, dev, slot,
                        off))
  return routes


def expected_and_bound(routes: Sequence[Route], num_devices: int, per_device: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """``(mu [N], T [N])``: uniform-id expectation and upper bound of ids per source and destination.

  ``per_device`` is ``b x L``, the id slots of one feature on one source device.
  """
  mu, bound = np.zeros(num_devices), np.zeros(num_devices, np.int64)
  for r in routes:
    for lo, hi, d in zip(r.row_lo, r.row_hi, r.devices):
      mu[d] += per_device * (hi - lo) / r.table_rows
      bound[d] += per_device
  return mu, bound


def capacity(routes: Sequence[Route], num_devices: int, per_device: int, factor: float) -> int:
  """The bucket capacity ``C`` (module docstring; at least 1)."""
  mu, bound = expected_and_bound(routes, num_devices, per_device)
  if factor > 0:
    want = np.ceil(factor * mu - 1e-9)
  else:
    want = np.ceil(mu + MARGIN_SIGMAS * np.sqrt(mu) + MARGIN_SIGMAS)
  return max(1, int(np.max(np.minimum(bound, want))))


def route_ids(routes: Sequence[Route], ids, valid, w, num_slots: int):
  """One source's entries: ``dest, row, pos [E]`` int32, ``weight [E]`` (E = routes x b x L).

  ``ids, valid, w``: ``[b, F, L]``. ``dest == N`` (any value >= N) marks an entry not to send.
  """
  b, _, length = ids.shape
  dests, rows, poss, ws, slot_of = [], [], [], [], []
  sample = jnp.arange(b, dtype=jnp.int32)[:, None]
  level = jnp.arange(length, dtype=jnp.int32)[None, :]
  for r in routes:
    x, v = ids[:, r.column], valid[:, r.column]  # [b, L]
    hi = jnp.asarray(r.row_hi[:-1], jnp.int32)
    blk = jnp.sum(x[..., None] >= hi, axis=-1)  # block index [b, L]
    pick = lambda a: jnp.asarray(a, jnp.int32)[blk]
    dest = jnp.where(v, pick(r.devices), 2**30)
    slot = pick(r.slots)
    dests.append(dest)
    rows.append(pick(r.offsets) + x - pick(r.row_lo))
    poss.append(level * (num_slots * b) + slot * b + sample)
    ws.append(w[:, r.column])
    slot_of.append(slot)
  flat = lambda xs: jnp.stack(xs).reshape(-1)
  return flat(dests), flat(rows), flat(poss), flat(ws), flat(slot_of)


def bound(routes: Sequence[Route], num_devices: int, per_device: int) -> int:
  """``max_d T_d``: the most ids one source can send one destination."""
  return int(np.max(expected_and_bound(routes, num_devices, per_device)[1]))


def rank_and_count(dest, slot, num_devices: int, num_slots: int):
  """``rank [E]``: an entry's place among the entries for its destination (a cumulative sum over
  a one-hot ``[E, N]``, as GShard's capacity dispatch); ``counts [N, S]``: entries per
  destination and slot of the destination."""
  n = num_devices
  onehot = (dest[:, None] == jnp.arange(n, dtype=jnp.int32)[None, :]).astype(jnp.int32)
  rank = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)
  seg = jnp.where(dest < n, dest * num_slots + slot, n * num_slots)
  counts = jax.ops.segment_sum(jnp.ones_like(dest), seg, n * num_slots).reshape(n, num_slots)
  return rank, counts


def pack(dest, row, pos, weight, rank, num_devices: int, first: int, cap: int, weighted: bool):
  """The entries ranked ``[first, first + cap)`` per destination -> ``int32 [N, cap, P]``
  (empty entries: row and place -1, weight 0)."""
  n = num_devices
  send = (dest < n) & (rank >= first) & (rank < first + cap)
  where = jnp.where(send, dest * cap + rank - first, n * cap)  # n * cap: dropped by the scatter
  cols = [row, pos] + ([jax.lax.bitcast_convert_type(weight.astype(jnp.float32), jnp.int32)]
                       if weighted else [])
  empty = jnp.full((n * cap, len(cols)), -1, jnp.int32)
  if weighted:
    empty = empty.at[:, 2].set(0)
  return empty.at[where].set(jnp.stack(cols, -1), mode='drop').reshape(n, cap, len(cols))


def unpack(received, weighted: bool):
  """``int32 [N, C, P]`` -> ``idx, pos`` int32 and ``weights`` float32, each ``[N, C]``."""
  idx, pos = received[..., 0], received[..., 1]
  if weighted:
    w = jax.lax.bitcast_convert_type(received[..., 2], jnp.float32)
  else:
    w = (idx >= 0).astype(jnp.float32)
  return idx, pos, w


def partial_sums(rows, w, pos, num_slots: int, b: int, length: Optional[int] = None):
  """Received entries -> per-source partial outputs.

  ``rows [N, C, W]``, ``w, pos [N, C]`` -> pooled ``[N, S, b, W]`` (weighted sums per bag), or
  with ``length`` the rows in place ``[N, S, b, L, W]`` (sequence lookups).
  """
  n, _, width = rows.shape
  bags = num_slots * b
  src = jnp.arange(n, dtype=jnp.int32)[:, None]
  if length is None:
    seg = jnp.where(pos >= 0, src * bags + pos % bags, n * bags)
    vals = w[..., None].astype(rows.dtype) * rows
    out = jax.ops.segment_sum(vals.reshape(-1, width), seg.reshape(-1), n * bags)
    return out.reshape(n, num_slots, b, width)
  m = bags * length
  # pos = l * bags + bag; rows in [N, S, b, L] order: bag * L + l.
  seg = jnp.where(pos >= 0, src * m + (pos % bags) * length + pos // bags, n * m)
  vals = jnp.where((pos >= 0)[..., None], rows, 0)
  out = jax.ops.segment_sum(vals.reshape(-1, width), seg.reshape(-1), n * m)
  return out.reshape(n, num_slots, b, length, width)


def host_counts(routes: Sequence[Route], ids: np.ndarray, valid: np.ndarray,
                num_devices: int) -> np.ndarray:
  """``[N_src, N_dst]``: ids each device sends each destination, on the host (NumPy).

  ``ids, valid``: the global ``[B, F, L]`` inputs, samples split evenly over the devices.
  """
  ids, valid = np.asarray(ids), np.asarray(valid)
  src = np.repeat(np.arange(num_devices), ids.shape[0] // num_devices)[:, None]
  out = np.zeros((num_devices, num_devices), np.int64)
  for r in routes:
    x, v = ids[:, r.column], valid[:, r.column]  # [B, L]
    blk = np.minimum(np.searchsorted(np.asarray(r.row_hi), x, side='right'), len(r.row_hi) - 1)
    np.add.at(out, (np.broadcast_to(src, x.shape)[v], np.asarray(r.devices)[blk][v]), 1)
  return out


def required_factor(per_pair: np.ndarray, routes: Sequence[Route], num_devices: int,
                    per_device: int) -> float:
  """The smallest ``id_capacity_factor`` whose capacity holds ``per_pair [N_src, N_dst]``."""
  mu, _ = expected_and_bound(routes, num_devices, per_device)
  need = np.asarray(per_pair).max(0)  # [N_dst]
  ratios = [need[d] / mu[d] for d in range(num_devices) if need[d] > 0 and mu[d] > 0]
  return float(max(ratios, default=0.0))
