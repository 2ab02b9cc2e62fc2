"""NeuroShard's search (``neurosharder.py``) under a cost model, and what jaxrec adds to it.

Table-wise, ``greedy_grid``: pieces (tables or column halves, ``placement``) in decreasing
predicted cost of each alone, each onto the device whose predicted compute cost is lowest (ties:
fewer bytes, lower index) among those where it fits the memory cap and keeps the device's dim sum
at most ``s x`` the mean dim sum per device; ``s`` swept over 1.0, 1.05, ..., 1.5 and the
placement of lowest plan cost kept. A plan's cost is its slowest device's predicted compute plus
its all-to-all time (``cost_model``).

Column-wise, ``beam_search``: from the table-wise result, each step halves one piece's columns
(the halves must stay multiples of 4) among the candidates (the ``candidates`` largest and the
``candidates`` costliest pieces, all if fewer), re-runs the table-wise search, and keeps the
``beam`` best piece sets; ``steps`` steps at most; the best plan seen wins. NeuroShard: beam 3,
10 candidates, 10 steps.

Beyond NeuroShard:
  * ``refine``: local search after it: while it lowers the plan's cost, the best single move of
    a piece from the costliest device to another or swap of a piece there with one elsewhere
    (under the memory cap);
  * row-wise splits of tables larger than a device (``placement.split_oversized``);
  * when no balance cap up to 1.5 admits a placement, the greedy runs without one (NeuroShard's
    greedy with ``dim_constraint_scale=None``) instead of failing.
Identical piece sets reached by different split orders are evaluated once.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.planner.features import TableFeatures
from jaxrec.planner.placement import (Base, Devices, NoFitError, Piece, split_oversized, to_plan,
                                      whole_pieces)
from jaxrec.sharding.embedding_plan import EmbeddingPlan

SCALES = tuple(np.linspace(1.0, 1.5, 11))


class Evaluator:
  """Predicted costs of placements: per-piece embeddings summed per device (``embed`` /
  ``head`` of the cost model), plus the all-to-all of the devices' dim sums."""

  def __init__(self, cost_model, base: Base, num_hosts: int = 1):
    self.cost, self.base, self.num_hosts = cost_model, base, num_hosts
    width = cost_model.embed([]).shape[1]
    self.base_sums = np.stack([cost_model.embed(list(s)).sum(0) if s else np.zeros(width)
                               for s in base.shards]).astype(np.float64)
    self._cache: dict[tuple[int, int], np.ndarray] = {}

  def embed(self, pieces: Sequence[Piece]) -> np.ndarray:
    out = []
    for p in pieces:
      key = (p.table, p.width)
      if key not in self._cache:
        self._cache[key] = self.cost.embed([p.features])[0].astype(np.float64)
      out.append(self._cache[key])
    return np.stack(out) if out else np.zeros((0, self.base_sums.shape[1]))

  def totals(self, sums: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Per device compute + communication, ms."""
    return (np.asarray(self.cost.head(sums), np.float64)
            + np.asarray(self.cost.comm_ms(dims, self.num_hosts)))

  def loads(self, pieces: Sequence[Piece], assign: Sequence[int], emb: np.ndarray):
    """``(embedding sums [N, E], bytes [N], dims [N])`` of a placement."""
    sums, nbytes, dims = self.base_sums.copy(), self.base.bytes.copy(), self.base.dims.copy()
    for i, (p, d) in enumerate(zip(pieces, assign)):
      sums[d] += emb[i]
      nbytes[d] += p.num_bytes
      dims[d] += p.width
    return sums, nbytes, dims

  def plan_cost(self, pieces, assign, emb) -> float:
    sums, _, dims = self.loads(pieces, assign, emb)
    return float(self.totals(sums, dims).max())


def greedy(pieces: Sequence[Piece], emb: np.ndarray, ev: Evaluator, cap: float,
           scale: float) -> Optional[list[int]]:
  """One table-wise greedy pass (module docstring); None when a piece fits nowhere."""
  single = np.asarray(ev.cost.head(emb)) if len(pieces) else np.zeros(0)
  order = sorted(range(len(pieces)), key=lambda i: single[i])  # popped from the end
  sums, nbytes, dims = ev.base_sums.copy(), ev.base.bytes.copy(), ev.base.dims.copy()
  cost = np.asarray(ev.cost.head(sums), np.float64)
  limit = scale * (dims.sum() + sum(p.width for p in pieces)) / len(dims)
  assign = [-1] * len(pieces)
  while order:
    i = order.pop()
    p = pieces[i]
    ok = np.flatnonzero((nbytes + p.num_bytes <= cap) & (dims + p.width <= limit + 1e-9))
    if ok.size == 0:
      return None
    d = min(ok, key=lambda r: (cost[r], nbytes[r], r))
    assign[i] = int(d)
    sums[d] += emb[i]
    cost[d] = float(ev.cost.head(sums[d]))
    nbytes[d] += p.num_bytes
    dims[d] += p.width
  return assign


def greedy_grid(pieces: Sequence[Piece], ev: Evaluator, cap: float,
                scales: Sequence[float] = SCALES) -> tuple[Optional[list[int]], float]:
  """The best ``greedy`` over the balance caps ``scales`` (then none): ``(assignment, cost)``."""
  emb = ev.embed(pieces)
  best: tuple[Optional[list[int]], float] = (None, float('inf'))
  for s in tuple(scales) + (float('inf'),):
    if s == float('inf') and best[0] is not None:
      break
    assign = greedy(pieces, emb, ev, cap, s)
    if assign is not None:
      c = ev.plan_cost(pieces, assign, emb)
      if c < best[1]:
        best = (assign, c)
  return best


def _candidates(pieces: Sequence[Piece], single: np.ndarray, n: int) -> list[int]:
  if n > len(pieces):
    return list(range(len(pieces)))
  sizes = np.array([p.num_bytes for p in pieces])
  top_size = np.argsort(-sizes, kind='stable')[:n]
  top_cost = np.argsort(-single, kind='stable')[:n]
  return sorted(set(top_size.tolist()) | set(top_cost.tolist()))


def _key(pieces: Sequence[Piece]) -> tuple:
  return tuple(sorted((p.table, p.col_lo, p.col_hi) for p in pieces))


def beam_search(pieces: Sequence[Piece], ev: Evaluator, cap: float, *, beam: int = 3,
                steps: int = 10, candidates: int = 10,
                scales: Sequence[float] = SCALES) -> tuple[list[Piece], Optional[list[int]], float]:
  """Column-wise splits by beam search (module docstring): ``(pieces, assignment, cost)``."""
  pieces = list(pieces)
  assign, cost = greedy_grid(pieces, ev, cap, scales)
  best = (pieces, assign, cost)
  beams = [(pieces, cost)]
  seen = {_key(pieces)}
  for _ in range(steps):
    grown = []
    for ps, _ in beams:
      single = np.asarray(ev.cost.head(ev.embed(ps)))
      for i in _candidates(ps, single, candidates):
        if (ps[i].width // 2) % 4 or ps[i].width < 8:
          continue
        a, b = ps[i].halves()
        nps = ps[:i] + [a] + ps[i + 1:] + [b]
        key = _key(nps)
        if key in seen:
          continue
        seen.add(key)
        na, nc = greedy_grid(nps, ev, cap, scales)
        grown.append((nps, nc))
        if nc < best[2]:
          best = (nps, na, nc)
    if not grown:
      break
    beams = sorted(grown, key=lambda x: x[1])[:beam]
  return best


def refine(pieces: Sequence[Piece], assign: Sequence[int], ev: Evaluator, cap: float,
           max_iters: int = 200) -> tuple[list[int], float]:
  """Moves and swaps off the costliest device while they lower the plan's cost (module
  docstring): ``(assignment, cost)``."""
  assign = list(assign)
  emb = ev.embed(pieces)
  sums, nbytes, dims = ev.loads(pieces, assign, emb)
  cur = ev.totals(sums, dims)
  for _ in range(max_iters):
    worst = int(np.argmax(cur))
    best = (cur.max() * (1 - 1e-9), None)
    mine = [i for i, d in enumerate(assign) if d == worst]
    for i in mine:
      for d in range(len(dims)):
        if d == worst:
          continue
        moves = [(i, None)] + [(i, j) for j, dj in enumerate(assign) if dj == d]
        for a, b in moves:
          delta_bytes = pieces[a].num_bytes - (pieces[b].num_bytes if b is not None else 0)
          if nbytes[d] + delta_bytes > cap or nbytes[worst] - delta_bytes > cap:
            continue
          s, dm = sums.copy(), dims.copy()
          e = emb[a] - (emb[b] if b is not None else 0)
          w = pieces[a].width - (pieces[b].width if b is not None else 0)
          s[worst] -= e
          s[d] += e
          dm[worst] -= w
          dm[d] += w
          total = ev.totals(s, dm)
          if total.max() < best[0]:
            best = (total.max(), (a, b, d, s, dm, total, delta_bytes))
    if best[1] is None:
      break
    a, b, d, sums, dims, cur, delta_bytes = best[1]
    assign[a] = d
    if b is not None:
      assign[b] = worst
    nbytes[d] += delta_bytes
    nbytes[worst] -= delta_bytes
  return assign, float(cur.max())


@dataclasses.dataclass(frozen=True)
class SearchResult:
  plan: EmbeddingPlan
  predicted_ms: float
  pieces: tuple[Piece, ...]
  assignment: tuple[int, ...]


def neuroshard(tables: Sequence[TableFeatures], devices: Devices, cost_model, *,
               refined: bool = False, beam: int = 3, steps: int = 10,
               candidates: int = 10) -> SearchResult:
  """NeuroShard's plan (beam search over column splits of greedy grid searches), optionally
  refined; ``NoFitError`` when nothing fits."""
  base = split_oversized(tables, devices)
  ev = Evaluator(cost_model, base, devices.num_hosts)
  pieces, assign, cost = beam_search(whole_pieces(tables, base.row_wise), ev, devices.cap,
                                     beam=beam, steps=steps, candidates=candidates)
  if assign is None:
    raise NoFitError(f'neuroshard: no placement of the {len(tables)} tables fits '
                     f'{devices.num_devices} devices of {devices.memory_cap_bytes} bytes')
  if refined:
    assign, cost = refine(pieces, assign, ev, devices.cap)
  return SearchResult(to_plan(tables, base, pieces, assign, devices), cost, tuple(pieces),
                      tuple(assign))
