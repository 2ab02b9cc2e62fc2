"""orbax checkpoints of a run: ``latest`` (for resume) and ``best`` (by the validation monitor).

Layout under ``workdir/checkpoints/{latest,best}/<step>/`` with two items: ``state`` (the
TrainState pytree) and ``meta`` (JSON: loop position, best metric, history). Saves are synchronous
and atomic (orbax writes to a temporary folder and renames), so a run killed at any point finds the
previous complete checkpoint.

A state whose arrays are laid out by the run's mesh (sharded embedding tables in per-plan buffers)
records that layout with every checkpoint (``layout``, kept in ``meta`` under :data:`LAYOUT_KEY`),
so a later run on another mesh or plan knows how to read it (``jaxrec.train.reshard``); and
``restore_host`` reads a checkpoint as host numpy arrays of the shapes it was saved with, whatever
devices restore it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

LAYOUT_KEY = 'layout'  # in a checkpoint's meta: how its state's arrays are laid out (JSON)


class RunCheckpoints:
  """The latest and best checkpoints of one run directory.

  Args:
    workdir: the run directory.
    read_only: for restoring only; creates no folder (a missing kind restores None).
    layout: JSON describing the layout of the states saved here (e.g. ``{'embedding_plan':
      plan}``), stored with each checkpoint; ``saved_layout`` reads it back.
  """

  def __init__(self, workdir: str, read_only: bool = False, layout: Optional[dict] = None):
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                        create=not read_only)
    kinds = [k for k in ('latest', 'best')
             if not read_only or os.path.isdir(os.path.join(root, k))]
    self._layout = layout
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
    if self._layout is not None:
      meta = dict(meta, **{LAYOUT_KEY: self._layout})
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()

  def _restore(self, kind: str, state_args) -> Optional[tuple[Any, dict]]:
    step = self.latest_step(kind)
    if step is None:
      return None
    out = self._managers[kind].restore(step, args=ocp.args.Composite(
        state=state_args, meta=ocp.args.JsonRestore()))
    meta = dict(out['meta'])
    meta.pop(LAYOUT_KEY, None)
    return out['state'], meta

  def restore(self, kind: str, abstract_state: Any) -> Optional[tuple[Any, dict]]:
    """Returns (state, meta) of the newest ``kind`` checkpoint, or None if there is none.

    The arrays are placed as ``abstract_state``'s (arrays or ``jax.ShapeDtypeStruct`` s, with
    the shapes the checkpoint holds).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self._restore(kind, ocp.args.StandardRestore(abstract))

  def restore_host(self, kind: str, structure: Any) -> Optional[tuple[Any, dict]]:
    """Like ``restore``, but every array comes back as a host ``np.ndarray`` of the shape it was
    saved with (any device count can read it); ``structure`` gives only the tree and dtypes."""
    placeholders = jax.tree.map(lambda x: np.zeros((0,), np.dtype(x.dtype)), structure)
    return self._restore(kind, ocp.args.StandardRestore(placeholders))

  def saved_layout(self, kind: str) -> Optional[dict]:
    """The ``layout`` stored with the newest ``kind`` checkpoint (None: none, or none stored)."""
    step = self.latest_step(kind)
    if step is None:
      return None
    out = self._managers[kind].restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out['meta']).get(LAYOUT_KEY)

  def close(self) -> None:
    for m in self._managers.values():
      m.close()
