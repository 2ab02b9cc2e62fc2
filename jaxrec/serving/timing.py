"""Timing of serving paths side by side: alternating runs, medians, wall-clock and CPU time."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def alternating_times(fns: Sequence[Callable[[], object]],
                      repeats: int) -> tuple[np.ndarray, np.ndarray]:
  """Medians over ``repeats`` rounds, each calling every ``fn()`` once in order, after one
  warm-up call of each (which compiles).

  Alternating lets all of them see the same machine load. Each ``fn`` must wait for its result
  (e.g. read it back to numpy). Returns ``(wall seconds [len(fns)], cpu seconds [len(fns)])``;
  ``cpu`` is this process's CPU time (every thread, XLA's pool included): the compute a call used,
  which other jobs on a shared machine disturb far less than its wall-clock time.
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  for fn in fns:
    fn()
  wall = np.zeros((repeats, len(fns)))
  cpu = np.zeros((repeats, len(fns)))
  for r in range(repeats):
    for i, fn in enumerate(fns):
      t, c = time.perf_counter(), time.process_time()
      fn()
      wall[r, i], cpu[r, i] = time.perf_counter() - t, time.process_time() - c
  return np.median(wall, axis=0), np.median(cpu, axis=0)
