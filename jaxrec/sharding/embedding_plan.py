"""Embedding sharding plans: which sharding type each table gets and on which devices.

Devices are numbered ``k = host * devices_per_host + local`` (the flattened ``(host, local)`` mesh
of ``make_hierarchical_mesh``). Per type (TorchRec's names), ``TableSharding`` takes:

  ==================  =========================================  ==============================
  type                placement                                   arguments
  ==================  =========================================  ==============================
  data_parallel       the whole table on every device             --
  table_wise          the whole table on one device               ``devices=(k,)``
  row_wise            rows split evenly over all devices          --
  column_wise         columns split evenly, one shard per device  ``devices=(k1, ..., kn)``
  table_row_wise      rows split over the devices of one host     ``hosts=(h,)``
  table_column_wise   columns split over devices of one host      ``devices=(k1, ..., kn)``
  grid                column shards, each row-wise on one host    ``hosts=(h1, ..., hn)``
  ==================  =========================================  ==============================

Row shards have ``ceil(rows / n)`` rows (the last ones fewer, possibly none: a 7-row table
row-wise on 8 devices leaves the 8th empty), as TorchRec's row-wise blocks.

A plan is written in Python or JSON::

  {"num_hosts": 2, "devices_per_host": 4, "memory_cap_bytes": 1000000,
   "tables": {"user": {"type": "row_wise"},
              "item": {"type": "column_wise", "devices": [0, 5]}}}

``validate`` raises a ValueError naming the table for: a table missing from the plan (or unknown
to it), a type its shape does not allow (columns that do not split evenly, a table_column_wise
table across hosts), devices or hosts out of range, a table whose smallest shard exceeds the
memory cap (it fits nowhere), and a device whose shards exceed the cap (listing its tables).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Sequence

from jaxrec.embeddings.config import EmbeddingBagConfig, validate_configs

SHARDING_TYPES = ('data_parallel', 'table_wise', 'row_wise', 'column_wise', 'table_row_wise',
                  'table_column_wise', 'grid')
BYTES_PER_VALUE = 4  # float32 tables


@dataclasses.dataclass(frozen=True)
class TableSharding:
  """How one table is sharded (see the module docstring for ``devices`` / ``hosts``)."""
  sharding_type: str
  devices: tuple[int, ...] = ()
  hosts: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, 'devices', tuple(int(d) for d in self.devices))
    object.__setattr__(self, 'hosts', tuple(int(h) for h in self.hosts))


@dataclasses.dataclass(frozen=True)
class Shard:
  """Rows ``[row_lo, row_hi)`` x columns ``[col_lo, col_hi)`` of ``table`` on ``device``."""
  table: str
  row_lo: int
  row_hi: int
  col_lo: int
  col_hi: int
  device: int

  @property
  def num_bytes(self) -> int:
    return BYTES_PER_VALUE * (self.row_hi - self.row_lo) * (self.col_hi - self.col_lo)


def row_blocks(rows: int, n: int) -> list[tuple[int, int]]:
  """``n`` blocks of ``ceil(rows / n)`` rows (the last ones shorter or empty)."""
  blk = -(-rows // n)
  return [(min(rows, i * blk), min(rows, (i + 1) * blk)) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class EmbeddingPlan:
  """Table -> ``TableSharding`` on ``num_hosts`` x ``devices_per_host`` devices.

  Attributes:
    tables: ``{table name: TableSharding}``.
    num_hosts: hosts of the ``(host, local)`` mesh.
    devices_per_host: local devices per host.
    memory_cap_bytes: optional per-device cap on the bytes of embedding shards.
  """
  tables: Mapping[str, TableSharding]
  num_hosts: int = 1
  devices_per_host: int = 8
  memory_cap_bytes: Optional[int] = None

  @property
  def num_devices(self) -> int:
    return self.num_hosts * self.devices_per_host

  def host_devices(self, host: int) -> tuple[int, ...]:
    return tuple(range(host * self.devices_per_host, (host + 1) * self.devices_per_host))

  # ---- construction -----------------------------------------------------------------------------
  @classmethod
  def from_dict(cls, d: Mapping) -> 'EmbeddingPlan':
    """From ``{"num_hosts", "devices_per_host", "memory_cap_bytes", "tables": {name: {...}}}``."""
    unknown = set(d) - {'num_hosts', 'devices_per_host', 'memory_cap_bytes', 'tables'}
    if unknown:
      raise ValueError(f'embedding plan: unknown keys {sorted(unknown)}')
    tables = {}
    for name, spec in dict(d.get('tables', {})).items():
      bad = set(spec) - {'type', 'devices', 'hosts'}
      if bad or 'type' not in spec:
        raise ValueError(f'embedding plan, table {name!r}: expected keys type (required), '
                         f'devices, hosts; got {sorted(spec)}')
      tables[name] = TableSharding(spec['type'], tuple(spec.get('devices', ())),
                                   tuple(spec.get('hosts', ())))
    return cls(tables, int(d.get('num_hosts', 1)), int(d.get('devices_per_host', 8)),
               d.get('memory_cap_bytes'))

  @classmethod
  def from_json(cls, text: str) -> 'EmbeddingPlan':
    return cls.from_dict(json.loads(text))

  def to_dict(self) -> dict:
    tables = {}
    for name, s in self.tables.items():
      spec = {'type': s.sharding_type}
      if s.devices:
        spec['devices'] = list(s.devices)
      if s.hosts:
        spec['hosts'] = list(s.hosts)
      tables[name] = spec
    return {'num_hosts': self.num_hosts, 'devices_per_host': self.devices_per_host,
            'memory_cap_bytes': self.memory_cap_bytes, 'tables': tables}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  # ---- shards -----------------------------------------------------------------------------------
  def table_shards(self, cfg: EmbeddingBagConfig) -> list[Shard]:
    """The shards of one table (validated against its shape and the device ranges)."""
    spec = self.tables.get(cfg.name)
    if spec is None:
      raise ValueError(f'table {cfg.name!r} has no entry in the embedding plan')
    kind, r, d, n_dev = spec.sharding_type, cfg.num_embeddings, cfg.embedding_dim, self.num_devices
    where = f'table {cfg.name!r} ({r} x {d}), {kind}'
    if kind not in SHARDING_TYPES:
      raise ValueError(f'table {cfg.name!r}: unknown sharding type {kind!r}; one of '
                       f'{SHARDING_TYPES}')
    needs_devices = kind in ('table_wise', 'column_wise', 'table_column_wise')
    needs_hosts = kind in ('table_row_wise', 'grid')
    if needs_devices != bool(spec.devices) or needs_hosts != bool(spec.hosts):
      what = 'devices' if needs_devices else 'hosts' if needs_hosts else 'neither devices nor hosts'
      raise ValueError(f'{where}: takes {what}; got devices={list(spec.devices)}, '
                       f'hosts={list(spec.hosts)}')
    for k in spec.devices:
      if not 0 <= k < n_dev:
        raise ValueError(f'{where}: device {k} is not in [0, {n_dev})')
    for h in spec.hosts:
      if not 0 <= h < self.num_hosts:
        raise ValueError(f'{where}: host {h} is not in [0, {self.num_hosts})')
    if kind == 'table_wise' and len(spec.devices) != 1:
      raise ValueError(f'{where}: takes exactly one device, got {list(spec.devices)}')
    if kind == 'table_row_wise' and len(spec.hosts) != 1:
      raise ValueError(f'{where}: takes exactly one host, got {list(spec.hosts)}')
    if kind == 'table_column_wise':
      hosts = {k // self.devices_per_host for k in spec.devices}
      if len(hosts) != 1:
        raise ValueError(f'{where}: devices {list(spec.devices)} span hosts {sorted(hosts)}; '
                         'table_column_wise keeps a table inside one host')
    n_cols = len(spec.devices) if kind in ('column_wise', 'table_column_wise') else (
        len(spec.hosts) if kind == 'grid' else 1)
    if d % n_cols:
      raise ValueError(f'{where}: embedding_dim {d} does not split into {n_cols} equal column '
                       'shards')
    w = d // n_cols
    if kind == 'data_parallel':
      return [Shard(cfg.name, 0, r, 0, d, k) for k in range(n_dev)]
    if kind == 'table_wise':
      return [Shard(cfg.name, 0, r, 0, d, spec.devices[0])]
    if kind == 'row_wise':
      return [Shard(cfg.name, lo, hi, 0, d, k) for k, (lo, hi) in enumerate(row_blocks(r, n_dev))]
    if kind in ('column_wise', 'table_column_wise'):
      return [Shard(cfg.name, 0, r, i * w, (i + 1) * w, k) for i, k in enumerate(spec.devices)]
    return [Shard(cfg.name, lo, hi, i * w, (i + 1) * w, dev)
            for i, h in enumerate(spec.hosts)
            for dev, (lo, hi) in zip(self.host_devices(h), row_blocks(r, self.devices_per_host))]

  def shards(self, tables: Sequence[EmbeddingBagConfig]) -> list[Shard]:
    """Every shard of ``tables``, validated (see ``validate``)."""
    self.validate(tables)
    return [s for t in tables for s in self.table_shards(t)]

  def validate(self, tables: Sequence[EmbeddingBagConfig]) -> None:
    """Raises ValueError naming the table (or device and its tables); see the module docstring."""
    tables = validate_configs(tables)
    if self.num_hosts < 1 or self.devices_per_host < 1:
      raise ValueError(f'embedding plan: num_hosts={self.num_hosts} and devices_per_host='
                       f'{self.devices_per_host} must be >= 1')
    extra = sorted(set(self.tables) - {t.name for t in tables})
    if extra:
      raise ValueError(f'embedding plan names tables that do not exist: {extra}')
    per_device = {k: [] for k in range(self.num_devices)}
    for t in tables:
      shards = self.table_shards(t)
      cap = self.memory_cap_bytes
      biggest = max(s.num_bytes for s in shards)
      if cap is not None and biggest > cap:
        kind = self.tables[t.name].sharding_type
        raise ValueError(f'table {t.name!r} fits on no device: its {kind} shard needs {biggest} '
                         f'bytes, the cap is {cap} bytes per device (split it further: row_wise, '
                         'grid, column_wise)')
      for s in shards:
        per_device[s.device].append(s)
    if self.memory_cap_bytes is not None:
      for k, ss in per_device.items():
        total = sum(s.num_bytes for s in ss)
        if total > self.memory_cap_bytes:
          names = sorted({s.table for s in ss})
          raise ValueError(f'device {k} is over its memory cap: {total} bytes > '
                           f'{self.memory_cap_bytes} (tables {names}); move one of them')

  def describe(self, tables: Sequence[EmbeddingBagConfig], batch_size: int,
               bag_sizes: Optional[Mapping[str, float]] = None) -> str:
    """A per-device report: shards (table, type, rows, columns), bytes and expected lookups.

    Expected lookups per step: for each shard, ``batch_size x sum over the table's features of
    the mean bag size (``bag_sizes``, default 1)`` times the fraction of the table's rows the
    shard holds (ids assumed uniform).
    """
    tables = validate_configs(tables)
    bag_sizes = dict(bag_sizes or {})
    shards = self.shards(tables)
    by_name = {t.name: t for t in tables}
    lines = [f'embedding plan: {len(tables)} tables on {self.num_hosts} host(s) x '
             f'{self.devices_per_host} devices'
             + (f', cap {self.memory_cap_bytes} bytes/device' if self.memory_cap_bytes else '')]
    for k in range(self.num_devices):
      mine = [s for s in shards if s.device == k]
      total_bytes = sum(s.num_bytes for s in mine)
      lookups = 0.0
      parts = []
      for s in mine:
        t = by_name[s.table]
        ids = batch_size * sum(bag_sizes.get(f, 1.0) for f in t.feature_names)
        n = ids * (s.row_hi - s.row_lo) / t.num_embeddings
        lookups += n
        parts.append(f'{s.table}[{s.row_lo}:{s.row_hi}, {s.col_lo}:{s.col_hi}] '
                     f'({self.tables[s.table].sharding_type})')
      lines.append(f'  device {k} (host {k // self.devices_per_host}): {len(mine)} shards, '
                   f'{sum(s.row_hi - s.row_lo for s in mine)} rows, {total_bytes} bytes, '
                   f'~{lookups:.0f} lookups/step')
      for p in parts:
        lines.append(f'    {p}')
    return '\n'.join(lines)


UNIFORM_KINDS = SHARDING_TYPES + ('mixed',)


def uniform_plan(tables: Sequence[EmbeddingBagConfig], kind: str, num_hosts: int = 2,
                 devices_per_host: int = 4) -> EmbeddingPlan:
  """Every table sharded with ``kind``, placements round-robin over devices / hosts.

  Table ``i`` goes to device ``i`` (table_wise), devices ``i, i + 1`` (column_wise), host ``i``
  (table_row_wise) or hosts ``i, i + 1`` (grid), modulo their counts; table_column_wise: host
  ``h = i mod H``, devices ``2p, 2p + 1`` of it with ``p = (i // H) mod (per_host / 2)``, so that
  every device gets as many column shards (a static all-to-all pads to the fullest device).
  ``kind='mixed'``: table ``i`` gets ``('table_wise', 'row_wise', 'column_wise')[i % 3]``.
  """
  if kind not in UNIFORM_KINDS:
    raise ValueError(f'plan kind must be one of {UNIFORM_KINDS}, got {kind!r}')
  n, per = num_hosts * devices_per_host, devices_per_host
  specs = {}
  for i, t in enumerate(tables):
    k = ('table_wise', 'row_wise', 'column_wise')[i % 3] if kind == 'mixed' else kind
    if k == 'table_wise':
      specs[t.name] = TableSharding(k, devices=(i % n,))
    elif k == 'column_wise':
      specs[t.name] = TableSharding(k, devices=(i % n, (i + 1) % n))
    elif k == 'table_column_wise':
      h, pair = i % num_hosts, 2 * ((i // num_hosts) % max(1, per // 2))
      specs[t.name] = TableSharding(k, devices=(h * per + pair, h * per + min(pair + 1, per - 1)))
    elif k == 'table_row_wise':
      specs[t.name] = TableSharding(k, hosts=(i % num_hosts,))
    elif k == 'grid':
      specs[t.name] = TableSharding(k, hosts=(i % num_hosts, (i + 1) % num_hosts))
    else:
      specs[t.name] = TableSharding(k)
  return EmbeddingPlan(specs, num_hosts, devices_per_host)
