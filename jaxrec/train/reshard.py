"""Reading a checkpoint into a trainer laid out differently from the run that saved it.

A checkpoint holds the state as its run laid it out:

* sharded embedding tables (``TableShardedTrainer``): the tables in per-plan buffers
  ``{group: [N * R_max, W]}`` (and ``data_parallel`` tables whole under the dense optimizer),
  Adam's slots of the dense optimizer over the same tree, the fused sparse optimizer's state per
  buffer. The plan and the table optimizer are stored with every checkpoint
  (:func:`layout_record`; older checkpoints: the run directory's ``embedding_plan.json``).
* FSDP with ``indivisible='pad'``: parameters and Adam slots zero-padded to multiples of the
  saving mesh's axes.

When the layout of the run that restores differs (another device count, another plan, tables
sharded or not), the checkpoint is read as host arrays (any device count can), brought to the
**unsharded form** -- the state of an unsharded run: the model's own parameter tree, Adam's slots
over that tree, the sparse optimizer's state per table -- and placed in the new layout. Reading a
plan's buffers needs only the plan: its collection is built on a placeholder mesh and only its
buffer layout is used. A run restored on its own layout takes the direct (sharded) orbax restore.

Sparse optimizer state per table: Adagrad's and Adam's slots are ``[R, d]`` like the table; the
row-wise Adagrad accumulator (one per row of each column shard, as fbgemm) is kept as ``[R, d]``,
each column holding its shard's value, and a shard of the new plan takes the mean over its
columns. That is exact when the column split is unchanged and when column shards are merged (the
accumulated mean squared gradient over the wider row); a shard split in two starts both halves
from the whole row's value. Adam's step count is the same for every table.

Example (what ``jaxrec.train.loop`` does on resume)::

  run = RunModel(model, schema, tx, example_batch, seed)
  state, meta = restore_state(RunCheckpoints(source, read_only=True), 'latest', trainer, state,
                              run, source)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.errors import RunDirError
from jaxrec.sharding import padding as padding_lib
from jaxrec.sharding.embedding_plan import EmbeddingPlan
from jaxrec.sharding.embedding_shard import AXES, ShardedEmbeddingBagCollection
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.recipes import Recipe
from jaxrec.train.sharded_trainer import ShardedTrainer
from jaxrec.train.table_trainer import TableShardedTrainer, model_tables

PLAN_FILE = 'embedding_plan.json'  # the resolved plan of a run with sharded tables
PLAN_KEY = 'embedding_plan'
OPTIMIZER_KEY = 'embedding_optimizer'
_SPLIT_KEYS = frozenset({'model', 'tables', 'replicated'})


def layout_record(trainer: Any) -> dict:
  """What a checkpoint of ``trainer`` stores of its layout (``RunCheckpoints(layout=...)``):
  the plan and table optimizer, or ``{'embedding_plan': None}`` when the tables are not sharded
  by a plan."""
  if isinstance(trainer, TableShardedTrainer):
    return {PLAN_KEY: trainer.plan.to_dict(), OPTIMIZER_KEY: trainer.optimizer}
  return {PLAN_KEY: None}


@dataclasses.dataclass(frozen=True)
class RunModel:
  """The model of a run, as reading its checkpoints in the unsharded form needs it.

  ``recipe``: the run's training recipe (its held state is part of the checkpoint, shaped by the
  run's ``batch_size``; 0 = the example batch's rows).
  """
  model: nn.Module
  schema: Any  # FeatureSchema or ImageSchema
  tx: optax.GradientTransformation
  example_batch: dict
  seed: int
  recipe: Optional[Recipe] = None
  batch_size: int = 0

  @functools.cached_property
  def boxed(self) -> state_lib.TrainState:
    """The initial state, abstract (``jax.ShapeDtypeStruct`` s), parameters boxed."""
    def rows(v):
      shape = np.shape(v)
      return ((self.batch_size or shape[0]),) + shape[1:]
    feats = {k: jax.ShapeDtypeStruct(rows(v), np.asarray(v).dtype)
             for k, v in state_lib.features(self.example_batch).items()}
    return jax.eval_shape(lambda f: state_lib.init_boxed_state(self.model, f, self.tx, self.seed,
                                                               self.recipe), feats)

  @property
  def unsharded(self) -> state_lib.TrainState:
    """The abstract state of an unsharded run (the model's shapes)."""
    return nn.meta.unbox(self.boxed)

  def tables(self) -> list[EmbeddingBagConfig]:
    return [t.config for t in model_tables(self.boxed.params, self.schema)]


def _is_split(x) -> bool:
  return isinstance(x, dict) and set(x) == _SPLIT_KEYS


def _map_subtrees(tree, is_node, fn, other=lambda x: x):
  """``fn`` on every subtree of ``tree`` for which ``is_node`` holds, ``other`` on other leaves."""
  return jax.tree.map(lambda x: fn(x) if is_node(x) else other(x), tree, is_leaf=is_node)


def placeholder_mesh(plan: EmbeddingPlan) -> Mesh:
  """A ``(host, local)`` mesh of ``plan``'s shape made of device 0 repeated: enough to build a
  collection's buffer layout (nothing is placed on it)."""
  devices = np.array([jax.devices()[0]] * plan.num_devices, dtype=object)
  return Mesh(devices.reshape(plan.num_hosts, plan.devices_per_host), AXES)


class TableLayout:
  """Where ``plan`` keeps the tables of a ``TableShardedTrainer`` state; host conversions between
  that layout and the unsharded form (module docstring). All arrays are numpy.

  Args:
    tables: the model's tables.
    plan: the plan.
    optimizer: ``'dense'`` or the sparse optimizer's kind.
    mesh: the plan's mesh (default: a placeholder; only the layout is used).
  """

  def __init__(self, tables: Sequence[EmbeddingBagConfig], plan: EmbeddingPlan, optimizer: str,
               mesh: Optional[Mesh] = None):
    self.plan, self.optimizer = plan, optimizer
    self.configs = {t.name: t for t in tables}
    sparse = optimizer != 'dense'
    # As TableShardedTrainer: with the dense optimizer data_parallel tables stay whole.
    self.replicated = [] if sparse else [
        t.name for t in tables if plan.tables[t.name].sharding_type == 'data_parallel']
    sharded = [t for t in tables if t.name not in self.replicated]
    self.ebc = None
    if sharded:
      sub = EmbeddingPlan({t.name: plan.tables[t.name] for t in sharded}, plan.num_hosts,
                          plan.devices_per_host, plan.memory_cap_bytes)
      self.ebc = ShardedEmbeddingBagCollection(sharded, sub, mesh or placeholder_mesh(plan))
    self._sparse_opt = SparseOptimizer(optimizer) if sparse else None

  @classmethod
  def of(cls, trainer: TableShardedTrainer) -> 'TableLayout':
    return cls([t.config for t in trainer.tables], trainer.plan, trainer.optimizer, trainer.mesh)

  @property
  def groups(self) -> dict:
    return self.ebc.groups if self.ebc is not None else {}

  # ---- one buffer --------------------------------------------------------------------------------
  def _buffer_shape(self, key: str, tail: tuple = ()) -> tuple:
    g = self.groups[key]
    if g.kernel == 'dp':
      t = self.configs[g.shards[0][0].table]
      return (t.num_embeddings,) + tail
    return (self.plan.num_devices * g.rows,) + tail

  def _unshard(self, key: str, buf: np.ndarray, out: dict) -> None:
    """Buffer (or a row state ``[N * R_max]``) of group ``key`` -> ``out[table] = [R, d]``."""
    g = self.groups[key]
    buf = np.asarray(buf)
    if g.kernel == 'dp':
      t = self.configs[g.shards[0][0].table]
      out[t.name] = buf if buf.ndim == 2 else np.repeat(buf[:, None], t.embedding_dim, 1)
      return
    blocks = buf.reshape((self.plan.num_devices, g.rows) + buf.shape[1:])
    for s, off in g.shards:
      t = self.configs[s.table]
      if s.table not in out:
        out[s.table] = np.zeros((t.num_embeddings, t.embedding_dim), buf.dtype)
      piece = blocks[s.device, off:off + s.row_hi - s.row_lo]
      out[s.table][s.row_lo:s.row_hi, s.col_lo:s.col_hi] = (piece if piece.ndim == 2
                                                            else piece[:, None])

  def _shard(self, key: str, arrays: dict, row_state: bool = False) -> np.ndarray:
    """``{table: [R, d]}`` -> the buffer of group ``key`` (``row_state``: ``[N * R_max]``, each
    shard's row the mean over its columns); padding rows are zero."""
    g = self.groups[key]

    def cut(a):  # [r, w] -> [r, w] or [r]
      return a.astype(np.float64).mean(1).astype(a.dtype) if row_state else a

    if g.kernel == 'dp':
      return cut(np.asarray(arrays[g.shards[0][0].table]))
    first = np.asarray(arrays[g.shards[0][0].table])
    tail = () if row_state else (g.width,)
    blocks = np.zeros((self.plan.num_devices, g.rows) + tail, first.dtype)
    for s, off in g.shards:
      piece = np.asarray(arrays[s.table])[s.row_lo:s.row_hi, s.col_lo:s.col_hi]
      blocks[s.device, off:off + s.row_hi - s.row_lo] = cut(piece)
    return blocks.reshape((-1,) + tail)

  # ---- parameter trees ---------------------------------------------------------------------------
  def merge(self, split: dict) -> dict:
    """``{'model', 'tables', 'replicated'}`` -> the model's unsharded parameter tree."""
    flat = traverse_util.flatten_dict(split['model'])
    tables = {k: np.asarray(v) for k, v in split['replicated'].items()}
    for key, buf in split['tables'].items():
      self._unshard(key, buf, tables)
    for name, v in tables.items():
      flat[tuple(name.split('/'))] = v
    return traverse_util.unflatten_dict(flat)

  def split(self, params: dict) -> dict:
    """The model's parameter tree -> ``{'model', 'tables', 'replicated'}`` in this layout."""
    flat = traverse_util.flatten_dict(params)
    names = {tuple(n.split('/')): n for n in self.configs}
    tables = {names[p]: v for p, v in flat.items() if p in names}
    model = traverse_util.unflatten_dict({p: v for p, v in flat.items() if p not in names})
    return {'model': model, 'tables': {k: self._shard(k, tables) for k in self.groups},
            'replicated': {n: tables[n] for n in self.replicated}}

  # ---- whole states ------------------------------------------------------------------------------
  def structure(self, unsharded: state_lib.TrainState,
                tx: optax.GradientTransformation) -> state_lib.TrainState:
    """The abstract state of this layout, from the abstract unsharded one."""
    flat = traverse_util.flatten_dict(unsharded.params)
    names = {tuple(n.split('/')) for n in self.configs}
    model = traverse_util.unflatten_dict({p: v for p, v in flat.items() if p not in names})
    sds = lambda shape, dtype=np.float32: jax.ShapeDtypeStruct(shape, dtype)
    buffers = {}
    for k, g in self.groups.items():
      first = self.configs[g.shards[0][0].table]
      width = first.embedding_dim if g.kernel == 'dp' else g.width
      buffers[k] = sds(self._buffer_shape(k, (width,)), flat[tuple(first.name.split('/'))].dtype)
    repl = {n: flat[tuple(n.split('/'))] for n in self.replicated}
    params = {'model': model, 'tables': buffers, 'replicated': repl}
    if self._sparse_opt is None:
      return unsharded.replace(params=params, opt_state=jax.eval_shape(tx.init, params),
                               table_opt_state=None)
    tstates = {k: jax.eval_shape(self._sparse_opt.init, b) for k, b in buffers.items()}
    return unsharded.replace(params=params, opt_state=jax.eval_shape(tx.init, model),
                             table_opt_state={'lr': sds(()), 'tables': tstates})

  def to_unsharded(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """A state of this layout (host arrays) -> the unsharded form."""
    params = self.merge(state.params)
    if self._sparse_opt is None:
      return state.replace(params=params,
                           opt_state=_map_subtrees(state.opt_state, _is_split, self.merge))
    per_table: dict[str, dict] = {}
    for key, st in state.table_opt_state['tables'].items():
      tables = [s.table for s, _ in self.groups[key].shards]
      for name, leaf in st.items():
        if np.ndim(leaf) == 0:
          for t in tables:
            per_table.setdefault(t, {})[name] = np.asarray(leaf)
          continue
        out: dict = {}
        self._unshard(key, leaf, out)
        for t, v in out.items():
          per_table.setdefault(t, {})[name] = v
    for t in self.configs:
      per_table.setdefault(t, {})
    return state.replace(params=params, table_opt_state=dict(state.table_opt_state,
                                                             tables=per_table))

  def from_unsharded(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """The unsharded form -> a state of this layout (host arrays)."""
    treedef = jax.tree.structure(state.params)
    is_params = lambda x: isinstance(x, dict) and jax.tree.structure(x) == treedef
    params = self.split(state.params)
    if self._sparse_opt is None:
      return state.replace(params=params,
                           opt_state=_map_subtrees(state.opt_state, is_params, self.split))
    per_table = state.table_opt_state['tables']
    tstates = {}
    for key, g in self.groups.items():
      first = g.shards[0][0].table
      shapes = jax.eval_shape(self._sparse_opt.init, jax.ShapeDtypeStruct((1, 1), np.float32))
      st = {}
      for name, sds in shapes.items():
        if sds.ndim == 0:
          st[name] = np.asarray(per_table[first][name])
        else:
          st[name] = self._shard(key, {t: per_table[t][name] for t in self.configs
                                       if name in per_table.get(t, {})}, row_state=sds.ndim == 1)
      tstates[key] = st
    return state.replace(params=params, table_opt_state=dict(state.table_opt_state,
                                                             tables=tstates))


def place(trainer: TableShardedTrainer, state: state_lib.TrainState) -> state_lib.TrainState:
  """A state of ``trainer``'s layout (host arrays) placed on its mesh (buffers, their optimizer
  slots and sparse state split over the devices as the buffers; everything else replicated)."""
  rep = NamedSharding(trainer.mesh, P())
  buffer_sh = trainer.ebc.shardings() if trainer.ebc is not None else {}
  put_rep = lambda x: jax.device_put(x, rep)

  def place_split(split):
    return {'model': jax.tree.map(lambda x: jax.device_put(x, trainer.dense_sharding(x)),
                                  split['model']),
            'tables': {k: jax.device_put(v, buffer_sh[k]) for k, v in split['tables'].items()},
            'replicated': jax.tree.map(put_rep, split['replicated'])}

  def state_sharding(key, leaf):
    if np.ndim(leaf) == 0:
      return rep
    spec = buffer_sh[key].spec
    return NamedSharding(trainer.mesh, P(*spec[:np.ndim(leaf)]))

  def place_dense(x):  # a sparse optimizer's optax state: over the dense parameters only
    return jax.device_put(x, trainer.dense_sharding(x))

  table_opt = None
  if state.table_opt_state is not None:
    table_opt = {'lr': put_rep(state.table_opt_state['lr']),
                 'tables': {k: {n: jax.device_put(v, state_sharding(k, v)) for n, v in st.items()}
                            for k, st in state.table_opt_state['tables'].items()}}
  return state.replace(step=put_rep(state.step), rng=put_rep(state.rng),
                       batch_stats=jax.tree.map(put_rep, state.batch_stats),
                       params=place_split(state.params),
                       opt_state=_map_subtrees(state.opt_state, _is_split, place_split,
                                               place_dense),
                       table_opt_state=table_opt)


# ---- reading checkpoints -------------------------------------------------------------------------

def saved_layout(ckpts: RunCheckpoints, kind: str, source: Optional[str]) -> dict:
  """The layout record of the newest ``kind`` checkpoint; for a checkpoint written before records
  were kept, ``embedding_plan.json`` of ``source`` (the optimizer unknown) or ``{}``."""
  record = ckpts.saved_layout(kind)
  if record is not None:
    return record
  path = os.path.join(source, PLAN_FILE) if source else None
  if path and os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      return {PLAN_KEY: json.load(f)}
  return {}


def read_unsharded(ckpts: RunCheckpoints, kind: str, run: RunModel, layout: dict,
                   optimizer: str = 'dense') -> Optional[tuple[state_lib.TrainState, dict]]:
  """The newest ``kind`` checkpoint in the unsharded form, as host arrays, and its meta.

  ``layout`` is the checkpoint's record (:func:`saved_layout`); ``optimizer`` the table optimizer
  to assume when the record does not name one. Padding of FSDP ``indivisible='pad'`` is sliced
  off.
  """
  unsharded = run.unsharded
  if layout.get(PLAN_KEY) is None:
    out = ckpts.restore_host(kind, unsharded)
    if out is None:
      return None
    return padding_lib.unpad_tree(out[0], unsharded), out[1]
  tables = TableLayout(run.tables(), EmbeddingPlan.from_dict(layout[PLAN_KEY]),
                       layout.get(OPTIMIZER_KEY, optimizer))
  out = ckpts.restore_host(kind, tables.structure(unsharded, run.tx))
  if out is None:
    return None
  return tables.to_unsharded(out[0]), out[1]


def _same_plan(a: EmbeddingPlan, b: EmbeddingPlan) -> bool:
  return (dict(a.tables), a.num_hosts, a.devices_per_host) == (dict(b.tables), b.num_hosts,
                                                              b.devices_per_host)


def restore_state(ckpts: RunCheckpoints, kind: str, trainer: Any, state: state_lib.TrainState,
                  run: RunModel, source: Optional[str] = None
                  ) -> Optional[tuple[state_lib.TrainState, dict]]:
  """(state, meta) of the newest ``kind`` checkpoint placed for ``trainer``; None if none.

  ``state`` is the trainer's initial state (its layout and placement). The checkpoint is restored
  directly when it has the trainer's layout, else through the unsharded form (module docstring).
  ``source`` is the run directory (for the plan file of older checkpoints).
  """
  if ckpts.latest_step(kind) is None:
    return None
  layout = saved_layout(ckpts, kind, source)
  if isinstance(trainer, TableShardedTrainer):
    saved_plan = layout.get(PLAN_KEY)
    # Older records name no optimizer; without a plan the tables trained with optax.
    saved_opt = layout.get(OPTIMIZER_KEY, trainer.optimizer if saved_plan else 'dense')
    if saved_opt != trainer.optimizer:
      raise RunDirError(f'the checkpoint in {source} trained its tables with optimizer '
                        f'{saved_opt!r}, this run uses {trainer.optimizer!r} '
                        '(config.embedding.optimizer); its optimizer state cannot carry over')
    if saved_plan and _same_plan(EmbeddingPlan.from_dict(saved_plan), trainer.plan):
      return ckpts.restore(kind, state)
    host, meta = read_unsharded(ckpts, kind, run, layout, trainer.optimizer)
    return place(trainer, TableLayout.of(trainer).from_unsharded(host)), meta
  if isinstance(trainer, ShardedTrainer) and (layout.get(PLAN_KEY)
                                              or trainer.plan.config.indivisible == 'pad'):
    if layout.get(OPTIMIZER_KEY, 'dense') != 'dense':
      raise RunDirError(f'the checkpoint in {source} trained its tables with the sparse optimizer '
                        f'{layout[OPTIMIZER_KEY]!r}; unsharded tables train with optax (dense)')
    host, meta = read_unsharded(ckpts, kind, run, layout)
    return trainer.place_state(host.replace(table_opt_state=None)), meta
  return ckpts.restore(kind, state)
