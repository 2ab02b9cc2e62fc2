"""Metric writers: one JSON object per line (``metrics.jsonl``) and TensorBoard event files.

Each record is ``{"step": s, "split": "train"|"valid"|..., "<metric>": value, ...}``, so a person
can plot any metric with a few lines of pandas or ``scripts/plot_metrics.py``. Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and to TensorBoard events in ``workdir/tb``."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._tb = None
    self._file = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self._active:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: float(v) for k, v in metrics.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """Reads a ``metrics.jsonl`` file back into a list of records."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
