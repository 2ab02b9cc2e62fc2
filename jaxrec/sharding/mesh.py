"""Device meshes from a config: named axes, ``-1`` for "the rest", and the (host, local) form.

A flat mesh has the axes of ``axis_sizes`` in order, e.g. ``{'data': -1, 'fsdp': 4, 'tensor': 1}``
on 8 devices is ``data=2, fsdp=4, tensor=1``; ``{'data': 1, 'fsdp': 1, 'expert': 8}`` splits a
MoE model's experts (and the batch) over 8 devices (``jaxrec.sharding.expert_parallel``). The
hierarchical mesh prepends a ``'host'`` axis: the devices are split into ``num_hosts`` equal
groups (one per process on a multi-host run, or virtual hosts of consecutive devices on one
process) and ``axis_sizes`` then describe one group, so ``-1`` means "the rest of the host's
devices". HYBRID_SHARD shards within a host (the local ``fsdp`` axis) and replicates across
``host``; DMT will put its towers on the same split.

Devices are always taken from the global device list (``jax.devices()``: every process's devices
on a multi-process run) in host-major order, sorted by ``(process_index, id)``, so each host's
devices are consecutive along the leading mesh axes and a process's batch rows are contiguous.

Example::

  mesh = make_mesh({'data': -1, 'fsdp': 4, 'tensor': 1})         # 8 devices: (2, 4, 1)
  mesh = make_hierarchical_mesh({'data': 1, 'fsdp': -1}, num_hosts=2)  # (host=2, data=1, fsdp=4)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

# The standard mesh axes, in mesh order; HOST_AXIS leads a hierarchical mesh. 'expert' splits the
# experts of a MoE model (and, like 'data' and 'fsdp', the batch): jaxrec.sharding.expert_parallel.
MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')
EXPERT_AXIS = 'expert'
HOST_AXIS = 'host'


def host_major_devices(devices: Optional[Sequence[Any]] = None) -> list:
  """``devices`` (default: all of ``jax.devices()``) sorted by ``(process_index, id)``."""
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError('no devices to build a mesh from')
  return sorted(devs, key=lambda d: (d.process_index, d.id))


def resolve_axis_sizes(axis_sizes: Mapping[str, int], num_devices: int,
                       where: str = 'mesh') -> dict[str, int]:
  """Fills in the one ``-1`` entry so that the sizes multiply to ``num_devices``.

  Raises:
    ValueError: naming ``where`` and the axis, for a size that is not a positive int or -1, more
      than one -1, or sizes whose product does not equal (or, with -1, divide) ``num_devices``.
  """
  sizes = {}
  for name, size in axis_sizes.items():
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (size < 1 and
                                                                              size != -1):
      raise ValueError(f'{where}: axis {name!r} has size {size!r}; sizes must be positive ints '
                       'or -1 (the rest of the devices)')
    sizes[str(name)] = int(size)
  if HOST_AXIS in sizes:
    raise ValueError(f'{where}: {HOST_AXIS!r} is reserved for the hierarchical mesh; set the '
                     'number of hosts instead')
  rest = [n for n, s in sizes.items() if s == -1]
  if len(rest) > 1:
    raise ValueError(f'{where}: only one axis may be -1, got {rest}')
  known = math.prod(s for s in sizes.values() if s != -1)
  if rest:
    if num_devices % known:
      raise ValueError(f'{where}: the fixed axes {sizes} use {known} devices, which does not '
                       f'divide the {num_devices} devices')
    sizes[rest[0]] = num_devices // known
  elif known != num_devices:
    raise ValueError(f'{where}: axis sizes {sizes} multiply to {known}, but there are '
                     f'{num_devices} devices (use -1 for "the rest")')
  return sizes


def make_mesh(axis_sizes: Mapping[str, int], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A flat mesh with the axes of ``axis_sizes`` in order over ``devices`` (default: all)."""
  devs = host_major_devices(devices)
  sizes = resolve_axis_sizes(axis_sizes, len(devs))
  return Mesh(np.array(devs, dtype=object).reshape(tuple(sizes.values())), tuple(sizes))


def make_hierarchical_mesh(local_axis_sizes: Mapping[str, int], num_hosts: int = -1,
                           devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ``('host',) + local axes`` mesh: ``num_hosts`` groups of consecutive host-major devices.

  Args:
    local_axis_sizes: the axes of one host group (``-1``: the rest of the group's devices).
    num_hosts: number of groups; -1 means one per process (``jax.process_count()`` over the
      devices given).
    devices: the devices (default: all of ``jax.devices()``).

  Raises:
    ValueError: ``num_hosts`` does not divide the device count, or a group would span two
      processes (a host group must sit on one machine).
  """
  devs = host_major_devices(devices)
  processes = sorted({d.process_index for d in devs})
  if num_hosts == -1:
    num_hosts = len(processes)
  if isinstance(num_hosts, bool) or not isinstance(num_hosts, int) or num_hosts < 1:
    raise ValueError(f'hierarchical mesh: num_hosts must be a positive int or -1, got '
                     f'{num_hosts!r}')
  if len(devs) % num_hosts:
    raise ValueError(f'hierarchical mesh: {len(devs)} devices do not split into {num_hosts} '
                     'equal host groups')
  per_host = len(devs) // num_hosts
  for h in range(num_hosts):
    owners = {d.process_index for d in devs[h * per_host:(h + 1) * per_host]}
    if len(owners) > 1:
      raise ValueError(f'hierarchical mesh: host group {h} of {num_hosts} would span processes '
                       f'{sorted(owners)}; use num_hosts=-1 (one group per process) or a '
                       'multiple of the process count')
  local = resolve_axis_sizes(local_axis_sizes, per_host, where='hierarchical mesh (per host)')
  shape = (num_hosts,) + tuple(local.values())
  return Mesh(np.array(devs, dtype=object).reshape(shape), (HOST_AXIS,) + tuple(local))


def axis_sizes_from_config(mesh_cfg: Mapping[str, int]) -> dict[str, int]:
  """The config's ``mesh`` entries in mesh order: ``MESH_AXES`` first, then any others as given."""
  items = dict(mesh_cfg)
  ordered = {a: items.pop(a) for a in MESH_AXES if a in items}
  ordered.update(items)
  return ordered


def mesh_from_config(sharding_cfg: Any, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The mesh a config's ``sharding`` section describes.

  ``sharding_cfg.mesh`` maps axis names to sizes (``-1``: the rest); ``sharding_cfg.hosts`` is 0
  for a flat mesh, or the number of host groups of a hierarchical mesh (-1: one per process), in
  which case the sizes are per host. An ``expert`` axis of size 1 (the default: no expert
  parallelism) is left out of the mesh, which is then the one the config describes without it.
  """
  sizes = axis_sizes_from_config(sharding_cfg.mesh)
  if sizes.get(EXPERT_AXIS) == 1:
    del sizes[EXPERT_AXIS]
  hosts = int(sharding_cfg.get('hosts', 0))
  if hosts == 0:
    return make_mesh(sizes, devices)
  return make_hierarchical_mesh(sizes, hosts, devices)
