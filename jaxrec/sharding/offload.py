"""Offload of parameters or optimizer state to host memory, where the backend has memory kinds.

Offloaded arrays are stored with ``memory_kind='pinned_host'``; the train step moves them to
``'device'`` memory at its start (``to_device_memory``) and its ``out_shardings`` move the updated
arrays back, so between steps they occupy host RAM instead of accelerator memory (torch FSDP's
``CPUOffload``). Backends whose devices lack these memory kinds get a ValueError from
``check_offload_supported`` when the plan is built, never a silent fallback.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax

HOST_MEMORY = 'pinned_host'
DEVICE_MEMORY = 'device'


def memory_kinds(device: Any) -> frozenset[str]:
  """The memory kinds a device can address (empty if the backend has no memories API)."""
  try:
    return frozenset(m.kind for m in device.addressable_memories())
  except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
    return frozenset()


def check_offload_supported(devices: Iterable[Any]) -> None:
  """Raises ValueError unless every local device has 'pinned_host' and 'device' memories."""
  for d in devices:
    if d.process_index != jax.process_index():
      continue
    kinds = memory_kinds(d)
    if not {HOST_MEMORY, DEVICE_MEMORY} <= kinds:
      raise ValueError(
          f'offload to host memory needs the {HOST_MEMORY!r} and {DEVICE_MEMORY!r} memory kinds, '
          f'but device {d} ({d.platform}) has {sorted(kinds) or "no memory kinds"}; set '
          'config.sharding.offload_params and offload_opt_state to False on this backend')


def to_device_memory(tree: Any, shardings: Any) -> Any:
  """Moves every leaf whose sharding is in host memory to device memory (inside jit)."""
  def one(x, s):
    if getattr(s, 'memory_kind', None) == HOST_MEMORY:
      return jax.device_put(x, s.with_memory_kind(DEVICE_MEMORY))
    return x
  return jax.tree.map(one, tree, shardings)
