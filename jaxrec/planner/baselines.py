"""NeuroShard's baselines (``sharders.py``): random and four greedy table-wise placements.

The greedy ones sort whole tables by a cost key, largest first (ties: size, then index, as
NeuroShard's ``TableInfo`` order), and put each on the device with the smallest sum of keys so
far (ties: fewer bytes, lower index) among those it fits:

  ==================  =====================================
  method              key
  ==================  =====================================
  size_greedy         bytes
  dim_greedy          dim
  lookup_greedy       dim x pooling
  size_lookup_greedy  dim x pooling x log10(rows)
  ==================  =====================================

``random`` puts each table on a device drawn uniformly among those it still fits (seeded).
NeuroShard's draws among all devices and lets the plan fail the memory check; drawing among the
devices with room keeps the baseline from failing on tight caps for no reason.

Tables larger than a device are split row-wise first (``placement.split_oversized``), as for
every method; a table that fits no device left raises ``NoFitError``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from jaxrec.planner.features import TableFeatures
from jaxrec.planner.placement import Devices, NoFitError, split_oversized, to_plan, whole_pieces
from jaxrec.sharding.embedding_plan import EmbeddingPlan

KEYS: dict[str, Callable[[TableFeatures], float]] = {
    'size_greedy': lambda t: float(t.num_bytes),
    'dim_greedy': lambda t: float(t.dim),
    'lookup_greedy': lambda t: t.dim * t.pooling,
    'size_lookup_greedy': lambda t: t.dim * t.pooling * math.log10(t.rows),
}
METHODS = ('random',) + tuple(KEYS)


def greedy(tables: Sequence[TableFeatures], devices: Devices, method: str) -> EmbeddingPlan:
  """A greedy baseline (module docstring)."""
  key = KEYS[method]
  base = split_oversized(tables, devices)
  pieces = whole_pieces(tables, base.row_wise)
  order = sorted(range(len(pieces)),
                 key=lambda i: (key(pieces[i].features), pieces[i].num_bytes, i))
  sums = np.zeros(devices.num_devices)
  nbytes = base.bytes.copy()
  assign = [-1] * len(pieces)
  while order:
    i = order.pop()
    p = pieces[i]
    ok = [d for d in range(devices.num_devices) if nbytes[d] + p.num_bytes <= devices.cap]
    if not ok:
      raise NoFitError(f'{method}: table {p.features.name!r} ({p.num_bytes} bytes) fits on no '
                       f'device (cap {devices.memory_cap_bytes} bytes, the largest room left is '
                       f'{int(devices.cap - nbytes.min())} bytes)')
    d = min(ok, key=lambda r: (sums[r], nbytes[r], r))
    assign[i] = d
    sums[d] += key(p.features)
    nbytes[d] += p.num_bytes
  return to_plan(tables, base, pieces, assign, devices)


def random_plan(tables: Sequence[TableFeatures], devices: Devices, seed: int = 0) -> EmbeddingPlan:
  """Each table on a device drawn among those it fits (module docstring)."""
  rng = np.random.default_rng(seed)
  base = split_oversized(tables, devices)
  pieces = whole_pieces(tables, base.row_wise)
  nbytes = base.bytes.copy()
  assign = []
  for p in pieces:
    ok = np.flatnonzero(nbytes + p.num_bytes <= devices.cap)
    if ok.size == 0:
      raise NoFitError(f'random: table {p.features.name!r} ({p.num_bytes} bytes) fits on no '
                       f'device (cap {devices.memory_cap_bytes} bytes)')
    d = int(rng.choice(ok))
    assign.append(d)
    nbytes[d] += p.num_bytes
  return to_plan(tables, base, pieces, assign, devices)
