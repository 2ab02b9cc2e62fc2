"""Collectives counted from compiled HLO text: kind, dtype, result bytes, replica-group size.

``collectives(compiled.as_text())`` lists every all-gather, reduce-scatter, all-reduce, all-to-all
and collective-permute (including the ``-start`` halves of async pairs) with the bytes of its
result per device and the size of its replica groups. ``traffic_bytes`` estimates what one device
sends per step with ring algorithms: all-gather ``(n-1)/n`` of its (gathered) result,
reduce-scatter ``n-1`` times its (scattered) result, all-reduce ``2 (n-1)/n`` of its result.

XLA:CPU has no pass that turns an all-reduce followed by a dynamic-slice into a reduce-scatter
(GPU and TPU do), so a GSPMD FULL_SHARD step compiled for CPU reduces gradients with all-reduce;
the explicit shard_map implementation issues reduce-scatter on every backend. XLA:CPU also runs
bfloat16 collectives in float32 (float normalization); ``lowered_collectives`` reads the dtypes
the program asks for from the lowered StableHLO (explicit collectives of shard_map) instead.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

KINDS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_OP = re.compile(r'=\s*(?P<type>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+'
                 r'(?P<kind>' + '|'.join(KINDS) + r')(?:-start)?\(')
_COMMENT = re.compile(r'/\*.*?\*/')
_SHAPE = re.compile(r'([a-z][a-z0-9]*)\[([0-9,]*)\]')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective op of a compiled program (per device).

  Attributes:
    kind: one of ``KINDS``.
    dtypes: element types of its result(s).
    result_bytes: bytes of its result(s) on one device.
    group_size: devices in each of its replica groups (0 if unknown).
    replica_groups: the groups of device ids (``()`` if not written in the op).
    conditional: whether it sits in a branch of a ``conditional`` (runs only when taken).
  """
  kind: str
  dtypes: tuple[str, ...]
  result_bytes: int
  group_size: int
  replica_groups: tuple[tuple[int, ...], ...] = ()
  conditional: bool = False

  @property
  def traffic_bytes(self) -> float:
    """Bytes one device sends for this op (ring algorithms; see the module docstring)."""
    n = self.group_size
    if n <= 1:
      return 0.0
    if self.kind == 'all-gather':
      return self.result_bytes * (n - 1) / n
    if self.kind == 'reduce-scatter':
      return float(self.result_bytes * (n - 1))
    if self.kind == 'all-reduce':
      return 2.0 * self.result_bytes * (n - 1) / n
    return float(self.result_bytes)


def _group_size(line: str) -> int:
  """Replica-group size from ``{{0,1},{2,3}}``, iota ``[G,S]<=[N]`` or ``mesh[...] {axes}``."""
  m = re.search(r'replica_groups=\{\{([0-9,]*)\}', line)
  if m:
    return len(m.group(1).split(','))
  m = re.search(r'replica_groups=\[([0-9,]+)\]<=', line)
  if m:
    return int(m.group(1).split(',')[-1])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(\S*\))?\s*\{([^}]*)\}",
                line)
  if m:
    sizes = dict((k.strip("'"), int(v)) for k, v in re.findall(r"('?[\w]+'?)=(\d+)", m.group(1)))
    axes = [a.strip().strip("'") for a in m.group(2).split(',') if a.strip()]
    return math.prod(sizes.get(a, 1) for a in axes)
  m = re.search(r'source_target_pairs=\{([^}]*)\}', line)
  if m:
    return 2
  return 0


def replica_groups(line: str) -> tuple[tuple[int, ...], ...]:
  """Replica groups of an op: ``{{0,1},{2,3}}``, iota ``[G,S]<=[dims]T(perm)`` or
  ``mesh['a'=2,'b'=4] {'b'}`` (groups along the named axes); ``()`` if absent or empty."""
  m = re.search(r'replica_groups=\{(\{[0-9,{}]*\})\}', line)
  if m:
    return tuple(tuple(int(x) for x in g.split(',') if x)
                 for g in re.findall(r'\{([0-9,]*)\}', m.group(1)))
  m = re.search(r'replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?', line)
  if m:
    shape = [int(x) for x in m.group(1).split(',')]
    dims = [int(x) for x in m.group(2).split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(',')])
    return tuple(tuple(int(x) for x in g) for g in ids.reshape(shape[0], -1))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([0-9,]*)\))?\s*\{([^}]*)\}",
                line)
  if m:
    axes = [(k.strip("'"), int(v)) for k, v in re.findall(r"('?[\w]+'?)=(\d+)", m.group(1))]
    chosen = [a.strip().strip("'") for a in m.group(3).split(',') if a.strip()]
    ids = np.arange(math.prod(v for _, v in axes)).reshape([v for _, v in axes])
    if m.group(2):
      ids = np.asarray([int(x) for x in m.group(2).split(',')]).reshape(ids.shape)
    names = [k for k, _ in axes]
    order = [i for i, k in enumerate(names) if k not in chosen] + [names.index(a) for a in chosen]
    size = math.prod(dict(axes)[a] for a in chosen)
    return tuple(tuple(int(x) for x in g) for g in ids.transpose(order).reshape(-1, size))
  return ()


_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$')
_CALLEE = re.compile(r'(?:calls|to_apply|body|condition|true_computation|false_computation)='
                     r'%?([\w.\-]+)')


def _branch_computations(lines: list[str]) -> set[str]:
  """Names of the computations run only inside a branch of a ``conditional`` (transitively)."""
  callees: dict[str, set[str]] = collections.defaultdict(set)
  roots, current = set(), None
  for line in lines:
    head = _HEADER.match(line)
    if head:
      current = head.group(1)
      continue
    names = set(_CALLEE.findall(line))
    branches = re.search(r'branch_computations=\{([^}]*)\}', line)
    if branches:
      names |= {b.strip().lstrip('%') for b in branches.group(1).split(',')}
    if ' conditional(' in line:
      roots |= names
    callees[current] |= names
  seen, todo = set(), list(roots)
  while todo:
    name = todo.pop()
    if name not in seen:
      seen.add(name)
      todo.extend(callees.get(name, ()))
  return seen


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective of an HLO module's text (``compiled.as_text()``)."""
  out = []
  lines = hlo_text.splitlines()
  in_branch, current = _branch_computations(lines), None
  for line in lines:
    head = _HEADER.match(line)
    if head:
      current = head.group(1)
    line = _COMMENT.sub('', line)  # tuple types carry /*index=5*/ markers
    m = _OP.search(line)
    if not m:
      continue
    shapes = _SHAPE.findall(m.group('type'))
    dtypes = tuple(d for d, _ in shapes)
    nbytes = sum(_DTYPE_BYTES.get(d, 4) * int(np.prod([int(x) for x in dims.split(',') if x]))
                 for d, dims in shapes)
    out.append(Collective(m.group('kind'), dtypes, nbytes, _group_size(line),
                          replica_groups(line), current in in_branch))
  return out


_LOWERED = re.compile(r'"?stablehlo\.(?P<kind>all_gather|reduce_scatter|all_reduce|all_to_all|'
                      r'collective_permute)"?\(.*?->\s*\(?tensor<(?:[0-9]+x)*(?P<dtype>[a-z][a-z0-9]*)>',
                      re.S)


def lowered_collectives(stablehlo_text: str) -> list[tuple[str, str]]:
  """(kind, result dtype) of each explicit collective of a lowered module (``lowered.as_text()``).

  Kinds are spelled as in compiled HLO ('all-gather', ...). Only collectives written in the
  program (shard_map) appear; GSPMD's are created later, by the partitioner.
  """
  return [(m.group('kind').replace('_', '-'), m.group('dtype'))
          for m in _LOWERED.finditer(stablehlo_text)]


def summarize(ops: list[Collective]) -> dict[str, dict[str, float]]:
  """Per kind: count, result bytes and traffic bytes."""
  table = collections.defaultdict(lambda: {'count': 0, 'result_bytes': 0, 'traffic_bytes': 0.0})
  for op in ops:
    row = table[op.kind]
    row['count'] += 1
    row['result_bytes'] += op.result_bytes
    row['traffic_bytes'] += op.traffic_bytes
  return dict(table)
