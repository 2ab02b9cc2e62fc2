"""Explaining a plan: per device its tables, shards, bytes and predicted cost; the imbalance.

``predict`` rates any ``EmbeddingPlan`` with a cost model (the NeuroShard model or
``AnalyticCostModel``): per device the predicted compute of its shards (``measure.device_shards``)
plus its all-to-all (``measure.device_comm_dims``). The plan's cost is the slowest device's; its
imbalance is that cost over the mean device's (1.0: perfectly even).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxrec.planner import measure
from jaxrec.planner.features import TableFeatures
from jaxrec.sharding.embedding_plan import EmbeddingPlan


@dataclasses.dataclass(frozen=True)
class Prediction:
  compute_ms: np.ndarray  # [N]
  comm_ms: np.ndarray  # [N]

  @property
  def total_ms(self) -> np.ndarray:
    return self.compute_ms + self.comm_ms

  @property
  def max_ms(self) -> float:
    return float(self.total_ms.max())

  @property
  def imbalance(self) -> float:
    mean = float(self.total_ms.mean())
    return self.max_ms / mean if mean > 0 else 1.0


def predict(plan: EmbeddingPlan, tables: Sequence[TableFeatures], cost_model,
            batch_size: int) -> Prediction:
  """Per device predicted compute and all-to-all ms of ``plan`` (module docstring)."""
  shards = measure.device_shards(plan, tables)
  compute = np.array([cost_model.compute_ms(s) for s in shards], np.float64)
  dims = measure.device_comm_dims(plan, tables, batch_size)
  return Prediction(compute, np.asarray(cost_model.comm_ms(dims, plan.num_hosts), np.float64))


def describe(plan: EmbeddingPlan, tables: Sequence[TableFeatures], cost_model,
             batch_size: int, method: str = '') -> str:
  """The printed plan (module docstring)."""
  pred = predict(plan, tables, cost_model, batch_size)
  shards = plan.shards([t.config() for t in tables])
  head = (f'embedding plan{f" ({method})" if method else ""}: {len(tables)} tables on '
          f'{plan.num_hosts} host(s) x {plan.devices_per_host} devices'
          + (f', cap {plan.memory_cap_bytes} bytes/device' if plan.memory_cap_bytes else '')
          + f'; predicted cost {pred.max_ms:.3f} ms (slowest device), imbalance '
          f'{pred.imbalance:.3f} (slowest / mean)')
  lines = [head]
  for k in range(plan.num_devices):
    mine = [s for s in shards if s.device == k and s.row_hi > s.row_lo]
    names = sorted({s.table for s in mine})
    lines.append(f'  device {k}: {len(names)} tables, {len(mine)} shards, '
                 f'{sum(s.num_bytes for s in mine)} bytes, predicted {pred.total_ms[k]:.3f} ms '
                 f'(compute {pred.compute_ms[k]:.3f} + all-to-all {pred.comm_ms[k]:.3f})')
    for s in mine:
      lines.append(f'    {s.table}[{s.row_lo}:{s.row_hi}, {s.col_lo}:{s.col_hi}] '
                   f'({plan.tables[s.table].sharding_type}, {s.num_bytes} bytes)')
  return '\n'.join(lines)
