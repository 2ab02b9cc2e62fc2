"""Multi-process start-up: ``jax.distributed.initialize`` from arguments or environment variables.

Each process of a multi-host run calls :func:`initialize` before touching any device. The
coordinator address, process count and process id come from the arguments, else from
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (``JAX_LOCAL_DEVICE_IDS``
is read by JAX itself), else JAX's cluster auto-detection (SLURM, Open MPI, ...) is left to fill
them. CPU processes use gloo collectives; ``cpu_devices`` emulates that many CPU devices per
process (tests and laptops).

Example (two processes on one machine, four CPU devices each)::

  python scripts/train.py ... --coordinator_address=127.0.0.1:12345 --num_processes=2 \\
      --process_id=0 --cpu_devices=4 &
  python scripts/train.py ... --coordinator_address=127.0.0.1:12345 --num_processes=2 \\
      --process_id=1 --cpu_devices=4
"""

from __future__ import annotations

import os
from typing import Optional

import jax

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} is not an integer') from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_devices: int = 0,
               auto_detect: bool = False) -> bool:
  """Configures CPU devices and starts ``jax.distributed`` if a multi-process run is described.

  Args:
    coordinator_address: ``host:port`` of process 0 (default: ``$JAX_COORDINATOR_ADDRESS``).
    num_processes: number of processes (default: ``$JAX_NUM_PROCESSES``).
    process_id: this process (default: ``$JAX_PROCESS_ID``).
    cpu_devices: if > 0, emulate this many CPU devices in this process.
    auto_detect: call ``jax.distributed.initialize()`` with JAX's cluster detection even when
      nothing above describes a run.

  Returns:
    Whether ``jax.distributed`` was initialised.

  Raises:
    ValueError: a partial description (e.g. a process count without an address).
  """
  if cpu_devices:
    jax.config.update('jax_num_cpu_devices', int(cpu_devices))
  address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  described = [v is not None for v in (address, count, index)]
  if not any(described) and not auto_detect:
    return False
  if any(described) and not all(described):
    raise ValueError(
        'a multi-process run needs the coordinator address, the process count and the process '
        f'id (flags or ${ENV_COORDINATOR} / ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID}); got '
        f'address={address!r}, num_processes={count!r}, process_id={index!r}')
  if count is not None and count < 1:
    raise ValueError(f'num_processes must be >= 1, got {count}')
  if count == 1:
    return False
  # CPU processes talk through gloo (ignored by accelerator backends).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=address, num_processes=count,
                             process_id=index)
  return True
