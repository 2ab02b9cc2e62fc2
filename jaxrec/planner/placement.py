"""What the searches share: column pieces of tables, row-wise splits, and plans made of them.

A search places *pieces*: whole tables (``table_wise``) or column ranges of a table split into
halves (NeuroShard's column-wise sharding), each on one device. A table too large for any device
is first split row-wise over all devices (``split_oversized``, beyond NeuroShard: its tasks never
had one); its row blocks are a fixed load on every device before the search starts. ``to_plan``
turns the pieces into an ``EmbeddingPlan``: one piece -> ``table_wise``; several -> ``column_wise``
in units of the narrowest piece, a wider piece being consecutive units on the same device (the
plan splits columns evenly; the lookups and bytes are the same).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.errors import UserError
from jaxrec.planner.features import BYTES_PER_VALUE, TableFeatures
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding, row_blocks


class PlannerError(UserError, ValueError):
  """A planning request that cannot be met (a table no device holds, an unknown method, ...)."""


class NoFitError(PlannerError):
  """A method found no placement under the memory cap (others may)."""


@dataclasses.dataclass(frozen=True)
class Devices:
  """``num_hosts`` x ``devices_per_host`` devices of ``memory_cap_bytes`` each (None: no cap)."""
  num_hosts: int
  devices_per_host: int
  memory_cap_bytes: Optional[int]

  @property
  def num_devices(self) -> int:
    return self.num_hosts * self.devices_per_host

  @property
  def cap(self) -> float:
    return float(self.memory_cap_bytes) if self.memory_cap_bytes else float('inf')

  @classmethod
  def of(cls, devices, memory_cap_bytes: Optional[int]) -> 'Devices':
    """``devices``: a count (one host) or ``(num_hosts, devices_per_host)``."""
    if isinstance(devices, (tuple, list)):
      hosts, per = (int(x) for x in devices)
    else:
      hosts, per = 1, int(devices)
    if hosts < 1 or per < 1:
      raise PlannerError(f'devices must be >= 1 (hosts x devices per host), got {devices!r}')
    if memory_cap_bytes is not None and memory_cap_bytes <= 0:
      raise PlannerError(f'memory_cap_bytes must be > 0 (or None), got {memory_cap_bytes}')
    return cls(hosts, per, memory_cap_bytes)


@dataclasses.dataclass(frozen=True)
class Piece:
  """Columns ``[col_lo, col_hi)`` of table ``table`` (an index into the task's tables)."""
  table: int
  col_lo: int
  col_hi: int
  features: TableFeatures

  @property
  def width(self) -> int:
    return self.col_hi - self.col_lo

  @property
  def num_bytes(self) -> int:
    return self.features.num_bytes

  def halves(self) -> tuple['Piece', 'Piece']:
    mid = self.col_lo + self.width // 2
    f = self.features.with_dim(self.width // 2)
    return Piece(self.table, self.col_lo, mid, f), Piece(self.table, mid, self.col_hi, f)


def whole_pieces(tables: Sequence[TableFeatures], skip: Sequence[str] = ()) -> list[Piece]:
  return [Piece(i, 0, t.dim, t) for i, t in enumerate(tables) if t.name not in set(skip)]


@dataclasses.dataclass(frozen=True)
class Base:
  """Per device, the load of the row-wise tables: bytes, output dims and shard features."""
  row_wise: tuple[str, ...]
  bytes: np.ndarray  # [N]
  dims: np.ndarray  # [N]
  shards: tuple[tuple[TableFeatures, ...], ...]  # [N][...]


def split_oversized(tables: Sequence[TableFeatures], devices: Devices) -> Base:
  """Row-wise for every table larger than a device; ``PlannerError`` naming the table when even
  its row block (``ceil(rows / N)`` rows) exceeds the cap."""
  n = devices.num_devices
  names, nbytes, dims = [], np.zeros(n), np.zeros(n)
  shards = [[] for _ in range(n)]
  for t in tables:
    if t.num_bytes <= devices.cap:
      continue
    blocks = row_blocks(t.rows, n)
    block = (blocks[0][1] - blocks[0][0]) * t.dim * BYTES_PER_VALUE
    if block > devices.cap:
      raise PlannerError(
          f'table {t.name!r} ({t.rows} rows x {t.dim} dims, {t.num_bytes} bytes) fits no device '
          f'even row-wise: its row block on each of the {n} devices needs {block} bytes, the cap '
          f'is {devices.memory_cap_bytes} bytes per device')
    names.append(t.name)
    for k, (lo, hi) in enumerate(blocks):
      nbytes[k] += (hi - lo) * t.dim * BYTES_PER_VALUE
      dims[k] += t.dim
      if hi > lo:
        shards[k].append(t.row_shard(hi - lo, n))
  return Base(tuple(names), nbytes, dims, tuple(tuple(s) for s in shards))


def to_plan(tables: Sequence[TableFeatures], base: Base, pieces: Sequence[Piece],
            assignment: Sequence[int], devices: Devices) -> EmbeddingPlan:
  """The ``EmbeddingPlan`` of pieces on devices (module docstring) plus the row-wise tables."""
  by_table: dict[int, list[tuple[Piece, int]]] = {}
  for p, d in zip(pieces, assignment):
    by_table.setdefault(p.table, []).append((p, int(d)))
  specs = {}
  for i, t in enumerate(tables):
    if t.name in base.row_wise:
      specs[t.name] = TableSharding('row_wise')
      continue
    placed = sorted(by_table.get(i, []), key=lambda x: x[0].col_lo)
    if not placed:
      raise ValueError(f'table {t.name!r} was not placed')
    if len(placed) == 1:
      specs[t.name] = TableSharding('table_wise', devices=(placed[0][1],))
      continue
    unit = min(p.width for p, _ in placed)
    units = tuple(d for p, d in placed for _ in range(p.width // unit))
    specs[t.name] = TableSharding('column_wise', devices=units)
  return EmbeddingPlan(specs, devices.num_hosts, devices.devices_per_host,
                       devices.memory_cap_bytes)
