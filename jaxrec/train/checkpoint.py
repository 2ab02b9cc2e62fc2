"""orbax checkpoints of a run: ``latest`` (for resume) and ``best`` (by the validation monitor).

Layout under ``workdir/checkpoints/{latest,best}/<step>/`` with two items: ``state`` (the
TrainState pytree) and ``meta`` (JSON: loop position, best metric, history). Saves are synchronous
and atomic (orbax writes to a temporary folder and renames), so a run killed at any point finds the
previous complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
  """The latest and best checkpoints of one run directory."""

  def __init__(self, workdir: str, read_only: bool = False):
    """``read_only``: for restoring only; creates no folder (a missing kind restores None)."""
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                        create=not read_only)
    kinds = [k for k in ('latest', 'best')
             if not read_only or os.path.isdir(os.path.join(root, k))]
    self._managers = {
        kind: ocp.CheckpointManager(os.path.join(root, kind), options=opts,
                                    item_names=('state', 'meta'))
        for kind in kinds
    }

  def latest_step(self, kind: str = 'latest') -> Optional[int]:
    return self._managers[kind].latest_step() if kind in self._managers else None

  def save(self, kind: str, step: int, state: Any, meta: dict) -> None:
    mngr = self._managers[kind]
    if step in mngr.all_steps():
      mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()

  def restore(self, kind: str, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """Returns (state, meta) of the newest ``kind`` checkpoint, or None if there is none."""
    step = self.latest_step(kind)
    mngr = self._managers.get(kind)
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'])

  def close(self) -> None:
    for m in self._managers.values():
      m.close()
