"""The one loop's trainer when embedding tables are sharded by a plan (``config.embedding``).

Every ``FieldEmbedding`` of a model (DLRM's tables; FM's first-order weights *and* its
second-order embeddings; ...) contributes one table per sparse field, named by its parameter path
(``'embedding/user'``, ``'linear/embedding/user'``) and read by a feature of the same name. The
trainer takes these tables out of the model's parameters, shards them with
``ShardedEmbeddingBagCollection`` on the ``(host, local)`` mesh of every device, looks them up
itself and hands each ``FieldEmbedding`` its ``[B, F, d]`` through the ``EMBEDDED`` variable
collection; the model code never sees sharding. The batch is split over all devices; the dense
parameters are replicated (``NO_SHARD``) or split over every device (``FULL_SHARD``, GSPMD;
``dense_sharding``); other strategies are refused.

State layout (``TrainState``):
  * ``params = {'model': dense params, 'tables': {group: buffer}, 'replicated': {table: [R, d]}}``
  * optimizer ``dense`` (``config.embedding.optimizer``): optax (clip + Adam of the loop) over the
    whole ``params``, exactly the unsharded numbers: the buffers' padding rows are zeros with zero
    gradient, and ``data_parallel`` tables are kept once, replicated (``'replicated'``), so the
    global gradient norm and the L2 regularizer count each row once.
  * a fused sparse optimizer (``sgd`` | ``adagrad`` | ``rowwise_adagrad`` | ``adam``): optax on
    ``params['model']`` only; the tables (all of them in buffers, data_parallel included) are
    updated row-sparsely inside the step (``SparseOptimizer``), with their state in
    ``table_opt_state = {'lr': scalar, 'tables': {group: state}}``. Gradient clipping covers the
    dense parameters only (as TorchRec's fused optimizers), and the table learning rate follows
    the loop's plateau decay by the same factor.

Plans (``config.embedding.plan``): ``none``; one sharding type for every table whose shape allows
it (``resolve_plan``); a JSON plan file (``EmbeddingPlan.from_json``); or ``auto``: planned at
start-up by ``jaxrec.planner`` (method ``config.embedding.planner``) from each table's features
measured on the example batch (a batch of the training data: ids per sample and the histogram of
id access counts, ``sample_features``).

Checkpoints hold the state in this layout and record the plan; a run on another device count or
plan restores them through the unsharded form (``jaxrec.train.reshard``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrec import planner as planner_lib
from jaxrec.data.dataset import CTRSource
from jaxrec.data.schema import FeatureSchema
from jaxrec.embeddings.collection import ID_CHECKS, check_ids, pooled_lookup
from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.embeddings.jagged import KeyedJagged
from jaxrec.errors import ConfigError
from jaxrec.embeddings.sparse_optim import KINDS as SPARSE_KINDS
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.layers.embedding import EMBEDDED
from jaxrec.sharding.embedding_plan import SHARDING_TYPES, EmbeddingPlan, TableSharding
from jaxrec.sharding.embedding_shard import AXES, ShardedEmbeddingBagCollection, embedding_mesh
from jaxrec.train import host_data as data_lib
from jaxrec.train import state as state_lib

PLANS = ('none', 'auto') + SHARDING_TYPES
OPTIMIZERS = ('dense',) + SPARSE_KINDS
DENSE_STRATEGIES = ('NO_SHARD', 'FULL_SHARD')  # the dense parameters beside sharded tables


class EmbeddingConfigError(ConfigError):
  """A bad ``config.embedding`` (plan, optimizer, cap) or an unsupported combination."""


@dataclasses.dataclass(frozen=True)
class ModelTable:
  """One table of a model: the ``FieldEmbedding`` at ``module`` (a param path) for ``field``."""
  module: tuple[str, ...]
  field: str
  config: EmbeddingBagConfig


def model_tables(boxed_params: Any, schema: FeatureSchema) -> list[ModelTable]:
  """Every embedding table of a model (params whose logical axes include ``'vocab'``).

  Tables are named ``'/'.join(path)`` and read one feature of the same name.
  """
  mask = traverse_util.flatten_dict(state_lib.embedding_mask(boxed_params))
  shapes = traverse_util.flatten_dict(nn.meta.unbox(boxed_params))
  fields = {f.name: f for f in schema.sparse}
  out = []
  for path, is_table in mask.items():
    if not is_table:
      continue
    field = fields.get(path[-1])
    if field is None:
      raise EmbeddingConfigError(f'embedding table {"/".join(path)!r} is not named after a sparse '
                                 f'field of the schema ({sorted(fields)}); only FieldEmbedding '
                                 'tables can be sharded')
    name = '/'.join(path)
    rows, dim = shapes[path].shape
    cfg = EmbeddingBagConfig(name, rows, dim, (name,),
                             pooling=field.pooling if field.multi_hot else 'sum',
                             weighted=field.multi_hot)
    out.append(ModelTable(tuple(path[:-1]), path[-1], cfg))
  if not out:
    raise EmbeddingConfigError('config.embedding.plan is set but the model has no embedding tables')
  return out


# ---- plans ---------------------------------------------------------------------------------------

def _allows(kind: str, cfg: EmbeddingBagConfig, num_hosts: int) -> bool:
  """Whether ``kind`` fits the table's shape under ``resolve_plan``'s placements: column-split
  types cut the columns in two halves (an even ``embedding_dim``), grid needs two hosts.
  Row-split types fit any table (a shard may hold no rows)."""
  if kind in ('column_wise', 'table_column_wise', 'grid'):
    return cfg.embedding_dim % 2 == 0 and (kind != 'grid' or num_hosts >= 2)
  return True


def resolve_plan(kind: str, tables: Sequence[EmbeddingBagConfig], num_hosts: int, per_host: int,
                 memory_cap_bytes: int = 0, table_wise_below_bytes: int = 0) -> EmbeddingPlan:
  """Every table gets ``kind`` where its shape allows it, the others ``table_wise``.

  Shape rules: column-split types split the columns in two halves (an even ``embedding_dim``);
  grid needs two hosts; row-split types fit any table. Tables smaller than
  ``table_wise_below_bytes`` stay whole (``table_wise``) too: a mixed plan. Placement of
  whole tables and column shards: tables in decreasing size, each shard to the least loaded
  device in bytes (ties: lowest index), the two column halves of a ``table_column_wise`` table on
  the two least loaded devices of the least loaded host; ``table_row_wise`` to the least loaded
  host, ``grid`` to the two least loaded hosts.
  """
  if kind not in SHARDING_TYPES:
    raise EmbeddingConfigError(f'config.embedding.plan: unknown sharding type {kind!r}; one of '
                               f'{PLANS} or a path to a JSON plan file')
  n = num_hosts * per_host
  load = [0] * n
  specs = {}

  def host_load(h):
    return sum(load[h * per_host:(h + 1) * per_host])

  def least(devices, k):
    return sorted(devices, key=lambda d: (load[d], d))[:k]

  for t in sorted(tables, key=lambda t: (-t.num_bytes, t.name)):
    small = t.num_bytes < table_wise_below_bytes  # a mixed plan: small tables whole
    k = kind if _allows(kind, t, num_hosts) and not small else 'table_wise'
    b = t.num_bytes
    if k == 'table_wise':
      (d,) = least(range(n), 1)
      load[d] += b
      specs[t.name] = TableSharding(k, devices=(d,))
    elif k == 'column_wise':
      ds = least(range(n), 2)
      for d in ds:
        load[d] += b // 2
      specs[t.name] = TableSharding(k, devices=tuple(sorted(ds)))
    elif k == 'table_column_wise':
      h = min(range(num_hosts), key=lambda h: (host_load(h), h))
      ds = least(range(h * per_host, (h + 1) * per_host), 2)
      if len(ds) < 2:  # one device per host: the whole table there
        load[ds[0]] += b
        specs[t.name] = TableSharding('table_wise', devices=(ds[0],))
        continue
      for d in ds:
        load[d] += b // 2
      specs[t.name] = TableSharding(k, devices=tuple(sorted(ds)))
    elif k in ('table_row_wise', 'grid'):
      hosts = sorted(range(num_hosts), key=lambda h: (host_load(h), h))[:1 if k != 'grid' else 2]
      for h in hosts:
        for d in range(h * per_host, (h + 1) * per_host):
          load[d] += b // (per_host * len(hosts))
      specs[t.name] = TableSharding(k, hosts=tuple(hosts))
    else:  # data_parallel, row_wise
      for d in range(n):
        load[d] += b if k == 'data_parallel' else b // n
      specs[t.name] = TableSharding(k)
  return EmbeddingPlan({t.name: specs[t.name] for t in tables}, num_hosts, per_host,
                       memory_cap_bytes or None)


def tables_kjt(feats: dict, schema: FeatureSchema, tables: Sequence[ModelTable]) -> KeyedJagged:
  """One feature per table (named after it): the schema's bags, column per table."""
  base = KeyedJagged.from_batch(feats, schema)
  cols = [base.keys.index(t.field) for t in tables]
  return KeyedJagged(ids=base.ids[:, cols], lengths=base.lengths[:, cols],
                     weights=base.weights[:, cols], keys=tuple(t.config.name for t in tables))


def sample_features(tables: Sequence[ModelTable],
                    kjt: KeyedJagged) -> list[planner_lib.features.TableFeatures]:
  """Each table's planner features from one batch (``kjt``: one column per table, in order)."""
  ids, lengths = np.asarray(kjt.ids), np.asarray(kjt.lengths)  # [B, T, L], [B, T]
  in_bag = np.arange(ids.shape[2])[None, None, :] < lengths[:, :, None]
  return [planner_lib.features.from_ids(t.config.name, ids[:, i][in_bag[:, i]], ids.shape[0],
                                        t.config.num_embeddings, t.config.embedding_dim)
          for i, t in enumerate(tables)]


def auto_plan(tables: Sequence[EmbeddingBagConfig], num_hosts: int, per_host: int,
              memory_cap_bytes: int, method: str, features=None, cost_model: str = '',
              batch_size: int = planner_lib.DEFAULT_BATCH) -> EmbeddingPlan:
  """``config.embedding.plan='auto'``: ``jaxrec.planner.plan`` with ``method`` on ``features``
  (default: the tables' shapes with uniform access, one id per sample)."""
  try:
    return planner_lib.plan(features or tables, (num_hosts, per_host), memory_cap_bytes or None,
                            method, cost_model=cost_model or None, batch_size=batch_size)
  except planner_lib.PlannerError as e:
    raise EmbeddingConfigError(f'config.embedding.plan=auto (planner {method!r}): {e}') from None


def load_plan(spec: str, tables: Sequence[EmbeddingBagConfig], num_hosts: int, per_host: int,
              memory_cap_bytes: int = 0, table_wise_below_bytes: int = 0,
              auto: Optional[dict] = None) -> EmbeddingPlan:
  """``config.embedding.plan`` -> a validated ``EmbeddingPlan`` (see the module docstring);
  ``auto``: ``auto_plan``'s keyword arguments for ``spec == 'auto'``."""
  if spec == 'auto':
    plan = auto_plan(tables, num_hosts, per_host, memory_cap_bytes, **(auto or {}))
  elif spec in SHARDING_TYPES:
    plan = resolve_plan(spec, tables, num_hosts, per_host, memory_cap_bytes,
                        table_wise_below_bytes)
  elif spec.endswith('.json') or os.path.sep in spec:
    if not os.path.isfile(spec):
      raise EmbeddingConfigError(f'config.embedding.plan: plan file {spec!r} not found')
    with open(spec, encoding='utf-8') as f:
      try:
        plan = EmbeddingPlan.from_json(f.read())
      except (ValueError, TypeError) as e:
        raise EmbeddingConfigError(f'plan file {spec}: {e}') from None
    if (plan.num_hosts, plan.devices_per_host) != (num_hosts, per_host):
      raise EmbeddingConfigError(
          f'plan file {spec}: planned for {plan.num_hosts} host(s) x {plan.devices_per_host} '
          f'devices, but this run has {num_hosts} x {per_host} (config.embedding.hosts and the '
          'device count)')
    if memory_cap_bytes:
      plan = dataclasses.replace(plan, memory_cap_bytes=memory_cap_bytes)
  else:
    raise EmbeddingConfigError(f'config.embedding.plan: unknown value {spec!r}; one of {PLANS} or '
                               'a path to a JSON plan file')
  try:
    plan.validate(tables)
  except ValueError as e:
    raise EmbeddingConfigError(f'config.embedding.plan {spec!r}: {e}') from None
  return plan


def mesh_shape(config_hosts: int, num_devices: int) -> tuple[int, int]:
  """``(num_hosts, devices_per_host)``: ``config.embedding.hosts`` (0: one per process)."""
  hosts = config_hosts or jax.process_count()
  if hosts < 1 or num_devices % hosts:
    raise EmbeddingConfigError(f'config.embedding.hosts={config_hosts}: {num_devices} devices do '
                               f'not split into {hosts} hosts')
  return hosts, num_devices // hosts


# ---- the trainer ---------------------------------------------------------------------------------

class TableShardedTrainer:
  """Train / eval steps of ``model`` with its tables sharded by ``plan`` (module docstring).

  The interface is ``ShardedTrainer``'s (``jaxrec.train.sharded_trainer``), so the loop runs either.

  Attributes:
    plan: the validated ``EmbeddingPlan``.
    tables: the model's tables (``ModelTable`` s).
    mesh: the ``(host, local)`` mesh.
  """

  def __init__(self, model: nn.Module, schema: FeatureSchema, tx: optax.GradientTransformation,
               optim: state_lib.OptimConfig, example_batch: dict, plan_spec: str, *,
               optimizer: str = 'dense', table_learning_rate: float = 0.0, id_check: str = 'none',
               memory_cap_bytes: int = 0, hosts: int = 0, seed: int = 0,
               id_capacity_factor: float = 0.0, table_wise_below_bytes: int = 0,
               dense_strategy: str = 'NO_SHARD', planner: str = 'neuroshard',
               cost_model: str = ''):
    if dense_strategy not in DENSE_STRATEGIES:
      raise EmbeddingConfigError(
          f'config.sharding.strategy={dense_strategy!r} with sharded tables: one of '
          f'{DENSE_STRATEGIES} (the dense parameters on the tables\' mesh)')
    self.dense_strategy = dense_strategy
    if optimizer not in OPTIMIZERS:
      raise EmbeddingConfigError(f'config.embedding.optimizer must be one of {OPTIMIZERS}, got '
                                 f'{optimizer!r}')
    if id_check not in ID_CHECKS:
      raise EmbeddingConfigError(f'config.embedding.id_check must be one of {ID_CHECKS}, got '
                                 f'{id_check!r}')
    if table_learning_rate < 0:
      raise EmbeddingConfigError('config.embedding.learning_rate must be >= 0 (0: '
                                 f'config.learning_rate), got {table_learning_rate}')
    self.sparse = optimizer != 'dense'
    if self.sparse and optim.embedding_regularizer:
      raise EmbeddingConfigError(
          f'config.embedding.optimizer={optimizer!r} updates only the rows a batch touches, so it '
          f'cannot apply config.embedding_regularizer={optim.embedding_regularizer} (an L2 '
          'penalty on every row); set it to 0 or use optimizer dense')
    self._model, self._schema, self._tx, self._optim, self._seed = model, schema, tx, optim, seed
    self._example = state_lib.zero_features(example_batch)
    boxed = jax.eval_shape(lambda: state_lib.init_boxed_state(model, self._example, tx, seed))
    self.tables = model_tables(boxed.params, schema)
    configs = [t.config for t in self.tables]
    hosts, per_host = mesh_shape(hosts, jax.device_count())
    auto = None
    if plan_spec == 'auto':
      kjt = self._kjt(state_lib.features(example_batch))
      auto = {'method': planner, 'cost_model': cost_model, 'batch_size': kjt.batch_size,
              'features': sample_features(self.tables, kjt)}
    self.plan = load_plan(plan_spec, configs, hosts, per_host, memory_cap_bytes,
                          table_wise_below_bytes, auto)
    self.mesh = embedding_mesh(self.plan)
    # Dense optimizer: data_parallel tables stay whole (replicated), the rest go to buffers.
    self._replicated = [] if self.sparse else [
        t.config for t in self.tables
        if self.plan.tables[t.config.name].sharding_type == 'data_parallel']
    names = {c.name for c in self._replicated}
    sharded = [c for c in configs if c.name not in names]
    self.ebc = None
    if sharded:
      sub = EmbeddingPlan({c.name: self.plan.tables[c.name] for c in sharded}, hosts, per_host,
                          self.plan.memory_cap_bytes)
      # Ids are checked on the host before each step (``_host_check``), not inside the lookup.
      self.ebc = ShardedEmbeddingBagCollection(sharded, sub, self.mesh,
                                               id_capacity_factor=id_capacity_factor)
    self._id_check = id_check
    base_lr = table_learning_rate or optim.learning_rate
    self._table_lr_ratio = base_lr / optim.learning_rate
    self._sparse_opt = SparseOptimizer(optimizer, base_lr) if self.sparse else None
    self._batch_sharding = NamedSharding(self.mesh, P(AXES))
    self._replicated_sharding = NamedSharding(self.mesh, P())
    self._build()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model: nn.Module, schema: FeatureSchema,
                  tx: optax.GradientTransformation, optim: state_lib.OptimConfig,
                  example_batch: dict) -> 'TableShardedTrainer':
    e = config.embedding
    if e.plan == 'none':
      raise EmbeddingConfigError("config.embedding.plan is 'none': the tables are not sharded "
                                 '(the loop uses ShardedTrainer)')
    scfg = config.get('sharding', {})
    strategy = scfg.get('strategy', 'NO_SHARD')
    implementation = scfg.get('implementation', 'gspmd')
    if strategy != 'NO_SHARD' and implementation != 'gspmd':
      raise EmbeddingConfigError(
          f'config.sharding.implementation={implementation!r} with sharded tables: only gspmd')
    return cls(model, schema, tx, optim, example_batch, e.plan, optimizer=e.optimizer,
               table_learning_rate=e.learning_rate, id_check=e.id_check,
               memory_cap_bytes=e.memory_cap_bytes, hosts=e.get('hosts', 0), seed=config.seed,
               id_capacity_factor=e.get('id_capacity_factor', 0.0),
               table_wise_below_bytes=e.get('table_wise_below_bytes', 0),
               dense_strategy=strategy, planner=e.get('planner', 'neuroshard'),
               cost_model=e.get('cost_model', ''))

  def describe(self, batch_size: int) -> str:
    """The printed plan: per device, its shards and bytes."""
    return self.plan.describe([t.config for t in self.tables], batch_size)

  # ---- state -------------------------------------------------------------------------------------
  def _split(self, params: dict) -> dict:
    """Unsharded model params -> ``{'model', 'tables', 'replicated'}`` (tables by name)."""
    flat = traverse_util.flatten_dict(params)
    names = {tuple(t.config.name.split('/')): t.config.name for t in self.tables}
    tables = {names[p]: v for p, v in flat.items() if p in names}
    model = traverse_util.unflatten_dict({p: v for p, v in flat.items() if p not in names})
    repl = {c.name: tables.pop(c.name) for c in self._replicated}
    buffers = self.ebc.shard(tables) if self.ebc is not None else {}
    return {'model': model, 'tables': buffers, 'replicated': repl}

  def merge_params(self, params: dict) -> dict:
    """The inverse of the split: the model's unsharded parameter tree (tables included)."""
    flat = traverse_util.flatten_dict(params['model'])
    tables = dict(params['replicated'])
    if self.ebc is not None:
      tables.update(self.ebc.unshard(params['tables']))
    for name, v in tables.items():
      flat[tuple(name.split('/'))] = v
    return traverse_util.unflatten_dict(flat)

  def _mask(self, params: dict) -> dict:
    return {'model': jax.tree.map(lambda _: False, params['model']),
            'tables': jax.tree.map(lambda _: True, params['tables']),
            'replicated': jax.tree.map(lambda _: True, params['replicated'])}

  def _initial_state(self) -> state_lib.TrainState:
    # The unsharded run's initial parameters (the same keys as state_lib.init_boxed_state), split
    # and placed; the optimizer state is built on the split parameters only (no whole-table Adam
    # slots for a sparse optimizer).
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(self._seed))
    variables = nn.meta.unbox(self._model.init({'params': init_rng, 'dropout': init_rng},
                                               self._example, train=False))
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=None,
                                 batch_stats=variables.get('batch_stats', {}), opt_state=None,
                                 rng=state_rng)
    return self.place_params(variables['params'], state)

  def dense_sharding(self, leaf) -> NamedSharding:
    """Where a dense parameter (or its optimizer slot) lives: replicated (``NO_SHARD``), or under
    ``FULL_SHARD`` split over every device along its largest dimension that divides the device
    count (replicated when none does); GSPMD gathers it for the forward pass and reduce-scatters
    its gradient."""
    shape = np.shape(leaf)
    n = self.plan.num_devices
    if self.dense_strategy == 'NO_SHARD' or not shape:
      return self._replicated_sharding
    dims = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0 and shape[i] >= n]
    if not dims:
      return self._replicated_sharding
    spec = [None] * len(shape)
    spec[int(dims[0])] = AXES
    return NamedSharding(self.mesh, P(*spec))

  def place_params(self, params: dict, state: state_lib.TrainState) -> state_lib.TrainState:
    """A fresh optimizer state for ``params`` (the model's unsharded tree), split and placed
    (``reshard.place``: buffers and their optimizer slots sharded, dense parameters by
    ``dense_sharding``)."""
    from jaxrec.train import reshard  # pylint: disable=g-import-not-at-top (reshard imports this)
    split = self._split(params)
    if self.sparse:
      opt_state = self._tx.init(split['model'])
      table_opt = {'lr': jnp.float32(self._sparse_opt.learning_rate),
                   'tables': self.ebc.init_states(self._sparse_opt, split['tables'])}
    else:
      opt_state = self._tx.init(split)
      table_opt = None
    return reshard.place(self, state.replace(params=split, opt_state=opt_state,
                                             table_opt_state=table_opt))

  def init_state(self) -> tuple[state_lib.TrainState, Any]:
    state = self._initial_state()
    return state, self._mask(state.params)

  # ---- forward -----------------------------------------------------------------------------------
  def _kjt(self, feats: dict) -> KeyedJagged:
    return tables_kjt(feats, self._schema, self.tables)

  def _embedded(self, pooled: dict) -> dict:
    """``{table: [B, d]}`` -> the ``EMBEDDED`` collection ``{module: {'pooled': [B, F, d]}}``."""
    by_module: dict[tuple, list] = {}
    for t in self.tables:  # schema order within a module (FieldEmbedding's order)
      by_module.setdefault(t.module, []).append(t)
    flat = {}
    for module, ts in by_module.items():
      order = {f.name: i for i, f in enumerate(self._schema.sparse)}
      ts = sorted(ts, key=lambda t: order[t.field])
      flat[module + ('pooled',)] = jnp.stack([pooled[t.config.name] for t in ts], axis=1)
    return traverse_util.unflatten_dict(flat)

  def _apply(self, params: dict, batch_stats, feats: dict, pooled: dict, train: bool, rngs=None):
    variables = {'params': params['model'], EMBEDDED: self._embedded(pooled)}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    if train:
      return self._model.apply(variables, feats, train=True, rngs=rngs, mutable=['batch_stats'])
    return self._model.apply(variables, feats, train=False)

  def _lookup_replicated(self, params: dict, kjt: KeyedJagged) -> dict:
    return pooled_lookup(params['replicated'], kjt, self._replicated) if self._replicated else {}

  def _build(self):
    model_loss = state_lib.weighted_bce
    optim = self._optim

    def dense_loss_and_grad(state, batch, rng):
      feats = state_lib.features(batch)
      kjt = self._kjt(feats)

      def loss_fn(params):
        pooled = self._lookup_replicated(params, kjt)
        if self.ebc is not None:
          pooled.update(self.ebc.lookup(params['tables'], kjt))
        logits, upd = self._apply(params, state.batch_stats, feats, pooled, True,
                                  {'dropout': rng})
        data_loss = model_loss(logits, batch['label'], batch['weight'])
        reg = state_lib.regularization(params, self._mask(params), optim)
        return data_loss + reg, (data_loss, reg, upd.get('batch_stats', {}))

      return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    def sparse_train_step(state, batch):
      rng = jax.random.fold_in(state.rng, state.step)
      feats = state_lib.features(batch)
      kjt = self._kjt(feats)
      ctx = self.ebc.gather(state.params['tables'], kjt)

      def loss_fn(model_params, rows):
        pooled = self.ebc.pool(rows, ctx)
        params = dict(state.params, model=model_params)
        logits, upd = self._apply(params, state.batch_stats, feats, pooled, True, {'dropout': rng})
        data_loss = model_loss(logits, batch['label'], batch['weight'])
        reg = state_lib.regularization(model_params,
                                       jax.tree.map(lambda _: False, model_params), optim)
        return data_loss + reg, (data_loss, reg, upd.get('batch_stats', {}))

      (loss, (data_loss, reg, new_stats)), (g_model, g_rows) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(state.params['model'], ctx['rows'])
      updates, opt_state = self._tx.update(g_model, state.opt_state, state.params['model'])
      model_params = optax.apply_updates(state.params['model'], updates)
      opt = dataclasses.replace(self._sparse_opt, learning_rate=state.table_opt_state['lr'])
      buffers, tstates = self.ebc.apply_row_grads(opt, state.params['tables'],
                                                  state.table_opt_state['tables'], ctx, g_rows)
      params = dict(state.params, model=model_params, tables=buffers)
      new_state = state.replace(
          step=state.step + 1, params=params, opt_state=opt_state,
          table_opt_state=dict(state.table_opt_state, tables=tstates),
          batch_stats=new_stats if state.batch_stats else state.batch_stats)
      metrics = {'loss': loss, 'data_loss': data_loss, 'reg_loss': reg,
                 'grad_norm': optax.tree.norm(g_model), 'update_norm': optax.tree.norm(updates)}
      return new_state, metrics

    if self.sparse:
      train = sparse_train_step
    else:
      train = state_lib.make_train_step(self._model, self._tx, None, optim, dense_loss_and_grad)

    def evaluate(state, batch):
      feats = state_lib.features(batch)
      kjt = self._kjt(feats)
      pooled = self._lookup_replicated(state.params, kjt)
      if self.ebc is not None:
        pooled.update(self.ebc.lookup(state.params['tables'], kjt))
      return self._apply(state.params, state.batch_stats, feats, pooled, False)

    def set_lr(state, lr):
      state = state_lib.set_learning_rate(state, lr)
      if self.sparse:
        table_lr = (lr * self._table_lr_ratio).astype(jnp.float32)
        state = state.replace(table_opt_state=dict(state.table_opt_state, lr=table_lr))
      return state

    self._train_fn, self._set_lr_fn, self._jits = train, set_lr, {}
    self._eval = jax.jit(evaluate)

  def _jitted(self, name: str, state) -> Any:
    """The jitted train step or learning-rate setter, with the state's layout as its output
    shardings (taken from the first state it sees), so the dense parameters keep their sharding
    from step to step."""
    if name not in self._jits:
      shardings = jax.tree.map(lambda x: x.sharding, state)
      if name == 'train':
        out = (shardings, self._replicated_sharding)
        self._jits[name] = jax.jit(self._train_fn, donate_argnums=0, out_shardings=out)
      else:
        self._jits[name] = jax.jit(self._set_lr_fn, donate_argnums=0, out_shardings=shardings)
    return self._jits[name]

  # ---- the loop's interface ----------------------------------------------------------------------
  @property
  def optimizer(self) -> str:
    """``config.embedding.optimizer``: ``'dense'`` or the sparse optimizer's kind."""
    return self._sparse_opt.kind if self.sparse else 'dense'

  @property
  def batch_divisor(self) -> int:
    return self.plan.num_devices

  def check_batch_size(self, batch_size: int, what: str = 'batch_size') -> None:
    div = self.batch_divisor
    if batch_size % div:
      raise EmbeddingConfigError(
          f'config.{what}={batch_size} does not split over the {div} devices of the embedding '
          f'mesh; make it a multiple of {div}')

  def global_batch(self, local_batch: dict) -> dict:
    return data_lib.global_batch(local_batch, self._batch_sharding)

  def _host_check(self, local_batch: dict) -> None:
    if self._id_check == 'error':
      check_ids(self._kjt(state_lib.features(local_batch)), [t.config for t in self.tables])

  def train_step(self, state: state_lib.TrainState, local_batch: dict):
    self.check_batch_size(len(local_batch['label']) * jax.process_count())
    self._host_check(local_batch)
    return self._jitted('train', state)(state, self.global_batch(local_batch))

  def eval_step(self, state: state_lib.TrainState, local_batch: dict) -> np.ndarray:
    return data_lib.eval_local_rows(lambda b: self._eval(state, b), self.global_batch,
                                    local_batch, self.batch_divisor, self._host_check)

  def set_learning_rate(self, state: state_lib.TrainState, lr: float) -> state_lib.TrainState:
    return self._jitted('set_lr', state)(state, jnp.float32(lr))

  def local_source(self, source: CTRSource) -> data_lib.ProcessLocalSource:
    return data_lib.ProcessLocalSource(source)

  def lower_train_step(self, state: Any, global_batch: Any) -> jax.stages.Lowered:
    return self._jitted('train', state).lower(state, global_batch)

