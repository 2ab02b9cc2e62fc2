"""The unsharded-parameter check: which parameters a plan leaves replicated over the FSDP axes.

A user-facing guardrail (MaxText fails a run when too few parameters are sharded): when the
fraction of parameter elements whose gradient / optimizer layout is not split over the strategy's
sharding axes exceeds ``ShardingConfig.max_unsharded_fraction``, building the trainer fails with
a list of the largest offenders. Not applied to NO_SHARD (replication is the point) or when the
sharding axes have a single device.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from jaxrec.sharding.fsdp import StatePlan, Strategy, axes_size, shard_axes


@dataclasses.dataclass(frozen=True)
class UnshardedReport:
  """Parameters replicated over ``axes``.

  Attributes:
    axes: the mesh axes the state should be sharded over.
    total: parameter elements in the model.
    unsharded: ``(path, shape, elements)`` of each replicated parameter, largest first.
    fraction: replicated elements / total.
  """
  axes: tuple[str, ...]
  total: int
  unsharded: tuple[tuple[str, tuple[int, ...], int], ...]
  fraction: float

  def format(self, limit: int = 10) -> str:
    lines = [f'{self.fraction:.1%} of {self.total:,} parameter elements are not sharded over '
             f'{self.axes}:']
    for path, shape, n in self.unsharded[:limit]:
      lines.append(f'  {path} {shape}: {n:,}')
    if len(self.unsharded) > limit:
      lines.append(f'  ... and {len(self.unsharded) - limit} more')
    return '\n'.join(lines)


def unsharded_report(plan: StatePlan) -> UnshardedReport:
  """Which parameters the plan's gradient layout leaves whole over the strategy's axes."""
  axes = tuple(a for a in shard_axes(plan.config.strategy, 'grads', plan.mesh)
               if plan.mesh.shape[a] > 1)
  rows, total = [], 0
  flat = jax.tree_util.tree_flatten_with_path(plan.logical.params)[0]  # padding not counted
  dims = jax.tree.leaves(plan.grad_dims)
  for (path, leaf), d in zip(flat, dims):
    n = math.prod(leaf.shape)
    total += n
    used = {a for t in d for a in t}
    if not used & set(axes):
      rows.append(('/'.join(str(getattr(k, 'key', k)) for k in path), tuple(leaf.shape), n))
  rows.sort(key=lambda r: -r[2])
  replicated = sum(r[2] for r in rows)
  return UnshardedReport(axes, total, tuple(rows), replicated / total if total else 0.0)


def check_unsharded(plan: StatePlan) -> UnshardedReport:
  """The report; raises ValueError when it exceeds ``max_unsharded_fraction`` (see module doc)."""
  report = unsharded_report(plan)
  cfg = plan.config
  applies = (cfg.strategy is not Strategy.NO_SHARD
             and axes_size(plan.mesh, shard_axes(cfg.strategy, 'grads', plan.mesh)) > 1)
  if applies and report.fraction > cfg.max_unsharded_fraction:
    raise ValueError(f'{cfg.strategy.value}: too many parameters left unsharded (allowed '
                     f'max_unsharded_fraction={cfg.max_unsharded_fraction}). '
                     + report.format() + '\nAdjust the sizes so the dimensions divide the mesh '
                     "axes, set config.sharding.indivisible='pad' to shard indivisible dimensions "
                     'zero-padded, or raise config.sharding.max_unsharded_fraction.')
  return report
