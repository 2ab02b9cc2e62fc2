"""The sharded train and eval steps the one trainer (``jaxrec.train.loop``) runs.

``ShardedTrainer`` ties a mesh and a ``ShardingConfig`` to a model and optimizer: it plans the
state (``jaxrec.sharding.fsdp.plan_state``), runs the unsharded-parameter check, creates the state
already sharded (``init`` jitted with the plan's ``out_shardings``, so no device ever holds a whole
FULL_SHARD state), and jits the train / eval steps with the plan's in/out shardings, the logical
axis rules bound for activation constraints, host offload moves, and the strategy's hooks (GSPMD)
or the explicit shard_map loss. Batches go in as process-local numpy blocks (``local_source``) and
come out as global arrays; eval logits come back as this process's rows. Under
``indivisible='pad'`` the state holds zero-padded parameters and optimizer slots (``place_state``
pads, ``unpad_state`` slices them back to the model's shapes).

Example::

  mesh = make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
  trainer = ShardedTrainer(model, tx, optim_cfg, mesh, ShardingConfig('FULL_SHARD'), batch)
  state, mask = trainer.init_state()
  state, metrics = trainer.train_step(state, batch)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.data.dataset import CTRSource
from jaxrec.sharding.fsdp import ShardingConfig, StatePlan, make_gspmd_hooks, plan_state
from jaxrec.sharding.guardrail import UnshardedReport, check_unsharded
from jaxrec.sharding.mesh import mesh_from_config
from jaxrec.sharding.offload import to_device_memory
from jaxrec.sharding.shard_map_fsdp import make_shard_map_loss_and_grad
from jaxrec.train import host_data as data_lib
from jaxrec.train import state as state_lib
from jaxrec.train.config import base_config
from jaxrec.train.recipes import Recipe
from jaxrec.train.tasks import Task


class ShardedTrainer:
  """Sharded state creation and steps for one model, optimizer, mesh and sharding config.

  Attributes:
    plan: the state's ``StatePlan``.
    report: the unsharded-parameter report (the check passed).
    mesh: the mesh.
  """

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               optim: state_lib.OptimConfig, mesh: Mesh, config: ShardingConfig,
               example_batch: dict, seed: int = 0, task: Optional[Task] = None,
               recipe: Optional[Recipe] = None):
    self.mesh = mesh
    self._model, self._tx, self._optim, self._seed = model, tx, optim, seed
    self._task, self._recipe = task, recipe
    if config.implementation == 'shard_map' and (
        (task is not None and task.name != 'ctr') or (recipe is not None and recipe.name != 'none')):
      raise ValueError("implementation 'shard_map' trains the CTR task with the plain recipe only; "
                       "use implementation 'gspmd' for other tasks and recipes")
    example = state_lib.zero_features(example_batch)

    def boxed_init():
      return state_lib.init_boxed_state(model, example, tx, seed, recipe)

    self.plan: StatePlan = plan_state(jax.eval_shape(boxed_init), mesh, config)
    self.report: UnshardedReport = check_unsharded(self.plan)
    plan = self.plan
    self._init = jax.jit(lambda: plan.pad(nn.meta.unbox(boxed_init())), out_shardings=plan.state)
    self._build_steps()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model: nn.Module,
                  tx: optax.GradientTransformation, optim: state_lib.OptimConfig,
                  example_batch: dict, task: Optional[Task] = None,
                  recipe: Optional[Recipe] = None) -> 'ShardedTrainer':
    """From a run config's ``sharding`` section (defaults if it has none) and ``seed``."""
    scfg = config.get('sharding') or base_config().sharding
    return cls(model, tx, optim, mesh_from_config(scfg), ShardingConfig.from_config(scfg),
               example_batch, config.seed, task, recipe)

  # --- steps ------------------------------------------------------------------------------------

  def _build_steps(self):
    plan, mesh = self.plan, self.mesh
    step_model, hooks = make_gspmd_hooks(plan, self._model)
    if plan.config.implementation == 'shard_map':
      optim = self._optim
      loss_and_grad = make_shard_map_loss_and_grad(
          plan, self._model, lambda p: state_lib.regularization(p, plan.mask, optim),
          state_lib.features)
      rules = ()  # no activation constraints inside shard_map
    else:
      loss_and_grad = state_lib.make_loss_and_grad(step_model, plan.mask, self._optim, hooks,
                                                   self._task, self._recipe)
      rules = plan.activation_rules
    trainable = (None if self._recipe is None
                 else self._recipe.trainable(nn.meta.unbox(plan.abstract.params)))
    train = state_lib.make_train_step(step_model, self._tx, plan.mask, self._optim,
                                      loss_and_grad, trainable)
    evaluate = state_lib.make_eval_step(step_model, hooks, self._task)

    def in_context(fn, rules_):
      def wrapped(state, batch):
        state = to_device_memory(state, plan.state)
        with nn.logical_axis_rules(rules_), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
          return fn(state, batch)
      return wrapped

    replicated = NamedSharding(mesh, P())
    self._train_fn = in_context(train, rules)
    self._train = jax.jit(self._train_fn, in_shardings=(plan.state, plan.batch),
                          out_shardings=(plan.state, replicated), donate_argnums=0)
    self._eval = jax.jit(in_context(evaluate, plan.activation_rules),
                         in_shardings=(plan.state, plan.batch), out_shardings=plan.batch)
    self._set_lr = jax.jit(state_lib.set_learning_rate, in_shardings=(plan.state, None),
                           out_shardings=plan.state, donate_argnums=0)

  def init_state(self) -> tuple[state_lib.TrainState, Any]:
    """The initial state, created sharded; and the embedding mask."""
    return self._init(), self.plan.mask

  def place_state(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """``state`` (e.g. an unsharded one) moved to the plan's shardings (zero-padded where the
    plan pads, ``indivisible='pad'``)."""
    return jax.device_put(self.plan.pad(jax.device_get(state)) if self.plan.padded else state,
                          self.plan.state)

  def unpad_state(self, state: state_lib.TrainState) -> state_lib.TrainState:
    """``state`` with the padding sliced off: the unsharded model's shapes (a no-op unless the
    plan pads)."""
    return self.plan.unpad(state)

  def check_batch_size(self, batch_size: int, what: str = 'batch_size') -> None:
    div = self.plan.batch_divisor
    if batch_size % div:
      raise ValueError(f'config.{what}={batch_size} does not split over the batch mesh axes '
                       f'{self.plan.batch_axes} ({div} devices); make it a multiple of {div}')

  def global_batch(self, local_batch: dict) -> dict:
    return data_lib.global_batch(local_batch, self.plan.batch)

  def train_step(self, state: state_lib.TrainState, local_batch: dict):
    """One optimizer step on the global batch assembled from every process's ``local_batch``."""
    self.check_batch_size(len(local_batch['label']) * jax.process_count())
    return self._train(state, self.global_batch(local_batch))

  def eval_step(self, state: state_lib.TrainState, local_batch: dict) -> np.ndarray:
    """Model outputs (``float32 [rows]`` logits for CTR, ``[rows, classes]`` for classification,
    per-row statistics for the language-model task: ``Task.eval_outputs``) of this process's rows (padded internally to split evenly)."""
    return data_lib.eval_local_rows(lambda b: self._eval(state, b), self.global_batch,
                                    local_batch, self.plan.batch_divisor)

  def set_learning_rate(self, state: state_lib.TrainState, lr: float) -> state_lib.TrainState:
    return self._set_lr(state, jnp.float32(lr))

  def local_source(self, source: CTRSource) -> data_lib.ProcessLocalSource:
    return data_lib.ProcessLocalSource(source)

  def lower_train_step(self, state: Any, global_batch: Any) -> jax.stages.Lowered:
    """The lowered train step (for HLO and memory inspection; arguments may be abstract).

    ``lower(...).compile()`` is callable as ``compiled(state, global_batch)``.
    """
    return self._train.lower(state, global_batch)

  def abstract_state(self) -> state_lib.TrainState:
    """``jax.ShapeDtypeStruct`` s of the (stored, padded) state, with the plan's shardings."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.plan.abstract, self.plan.state)

  def abstract_batch(self, batch_size: int, example_batch: dict) -> dict:
    """``jax.ShapeDtypeStruct`` s of a global batch of ``batch_size`` rows."""
    return {k: jax.ShapeDtypeStruct((batch_size,) + np.shape(v)[1:], np.asarray(v).dtype,
                                    sharding=self.plan.batch)
            for k, v in example_batch.items()}


def single_device_mesh(device: Optional[Any] = None) -> Mesh:
  """A 1-device mesh with the standard axes (all of size 1)."""
  device = jax.devices()[0] if device is None else device
  return Mesh(np.array([device], dtype=object).reshape(1, 1, 1), ('data', 'fsdp', 'tensor'))
