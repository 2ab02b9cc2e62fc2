"""Train state, optimizer and the jitted train / eval steps shared by every model.

What a step optimises comes from a task (``jaxrec.train.tasks``: CTR by default) and a recipe
(``jaxrec.train.recipes``: plain cross-entropy by default).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

# The sharding code's hooks and the embedding mask live below the trainer (jaxrec.sharding never
# imports jaxrec.train); they are part of this module's interface too.
from jaxrec.sharding.hooks import ForwardHooks, LossAndGrad
from jaxrec.sharding.rules import embedding_mask
from jaxrec.train.recipes import PlainRecipe, Recipe, StepInputs
from jaxrec.train.tasks import CTRTask, Task, weighted_mean

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; checkpointed whole).

  Attributes:
    step: number of optimizer steps taken.
    params: model parameters (unboxed).
    batch_stats: BatchNorm running statistics ({} when the model has none).
    opt_state: optax state; the learning rate lives in ``opt_state.hyperparams``.
    rng: base PRNG key (uint32[2]); step ``s`` uses ``fold_in(rng, s)`` for dropout.
    table_opt_state: state of the fused sparse optimizer of sharded embedding tables
      (``jaxrec.train.table_trainer``); None when the tables train with optax.
    recipe_state: what the training recipe holds from one step to the next (e.g. SMC's soft
      labels, ``jaxrec.train.recipes``); None for recipes that hold nothing.
  """
  step: jnp.ndarray
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jnp.ndarray
  table_opt_state: PyTree = None
  recipe_state: PyTree = None


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and loss settings (FuxiCTR / BARS semantics).

  Attributes:
    learning_rate: initial Adam learning rate.
    max_grad_norm: global-norm gradient clipping (FuxiCTR clips at 10); 0 disables it.
    embedding_regularizer: lambda of ``lambda/2 * ||W||^2`` over every embedding table (found by
      its ``'vocab'`` logical axis), added to the loss each step as FuxiCTR does.
    net_regularizer: the same over all other parameters (with SGD this is PyTorch's coupled
      ``weight_decay``).
    optimizer: 'adam' (BARS) or 'sgd' (with ``momentum``, Nesterov if ``nesterov``).
    lr_schedule: 'plateau' (a constant rate the loop lowers when validation stalls, BARS) or
      'cosine' (cosine decay to 0 over ``total_steps`` after ``warmup_steps`` of linear warm-up).
  """
  learning_rate: float = 1e-3
  max_grad_norm: float = 10.0
  embedding_regularizer: float = 0.0
  net_regularizer: float = 0.0
  optimizer: str = 'adam'
  momentum: float = 0.9
  nesterov: bool = False
  lr_schedule: str = 'plateau'
  total_steps: int = 0
  warmup_steps: int = 0


OPTIMIZERS = ('adam', 'sgd')
LR_SCHEDULES = ('plateau', 'cosine')


def learning_rate_schedule(cfg: OptimConfig):
  """The rate, or for 'cosine' the schedule step -> rate."""
  if cfg.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f'lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}')
  if cfg.lr_schedule == 'plateau':
    return cfg.learning_rate
  if cfg.total_steps < 1:
    raise ValueError(f"lr_schedule 'cosine' needs total_steps >= 1, got {cfg.total_steps}")
  if cfg.warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                              max(cfg.total_steps, cfg.warmup_steps + 1))
  return optax.cosine_decay_schedule(cfg.learning_rate, cfg.total_steps)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """Adam or SGD with the learning rate injected as a hyperparameter (set on plateau by the loop,
  or following the cosine schedule), after global-norm clipping when ``max_grad_norm`` > 0."""
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}')
  lr = learning_rate_schedule(cfg)
  if cfg.optimizer == 'adam':
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  else:
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=cfg.momentum or None,
                                              nesterov=cfg.nesterov)
  if cfg.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), opt)
  return opt


def _with_lr(adam_state, lr: float):
  hp = dict(adam_state.hyperparams)
  hp['learning_rate'] = jnp.asarray(lr, dtype=jnp.asarray(hp['learning_rate']).dtype)
  return adam_state._replace(hyperparams=hp)


def _adam_state(opt_state):
  """The inject_hyperparams state: the whole state, or the 2nd of (clip, adam) from make_optimizer."""
  return opt_state if hasattr(opt_state, 'hyperparams') else opt_state[1]


def get_learning_rate(state: TrainState) -> float:
  return float(_adam_state(state.opt_state).hyperparams['learning_rate'])


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
  """Returns ``state`` with the optimizer's learning rate replaced by ``lr``."""
  if hasattr(state.opt_state, 'hyperparams'):
    return state.replace(opt_state=_with_lr(state.opt_state, lr))
  clip, adam = state.opt_state
  return state.replace(opt_state=(clip, _with_lr(adam, lr)))


def init_boxed_state(model: nn.Module, example_batch: dict, tx: optax.GradientTransformation,
                     seed: int, recipe: Optional[Recipe] = None) -> TrainState:
  """The initial state with parameters (and the optimizer state built on them) still boxed.

  Parameters stay ``nn.LogicallyPartitioned`` (carrying their logical axis names) and so do the
  optimizer's per-parameter slots (Adam's ``mu``/``nu``), which lets ``jax.eval_shape`` of this
  function tell the sharding code every array's logical axes. ``nn.meta.unbox`` gives the state
  ``create_train_state`` returns. ``recipe`` (its state is made from the model's output shape).
  """
  rng = jax.random.PRNGKey(seed)
  init_rng, state_rng = jax.random.split(rng)
  feats = features(example_batch)
  variables = model.init({'params': init_rng, 'dropout': init_rng}, feats, train=False)
  boxed = variables['params']
  batch_stats = nn.meta.unbox(variables.get('batch_stats', {}))
  held = None
  if recipe is not None:
    outputs = jax.eval_shape(lambda v: model.apply(v, feats, train=False), nn.meta.unbox(variables))
    held = recipe.init_state(outputs)
  return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, batch_stats=batch_stats,
                    opt_state=tx.init(boxed), rng=state_rng, recipe_state=held)


def create_train_state(model: nn.Module, example_batch: dict, tx: optax.GradientTransformation,
                       seed: int, recipe: Optional[Recipe] = None) -> tuple[TrainState, PyTree]:
  """Initialises the model on ``example_batch`` and returns (state, embedding mask)."""
  boxed = init_boxed_state(model, example_batch, tx, seed, recipe)
  return nn.meta.unbox(boxed), embedding_mask(boxed.params)


# Model inputs: CTR fields (jaxrec.data.schema.FeatureSchema), images (ImageSchema) and token
# sequences (SequenceSchema).
FEATURE_KEYS = ('sparse', 'dense', 'multi_hot_ids', 'multi_hot_lengths', 'multi_hot_weights',
                'image', 'inputs', 'modality')


def features(batch: dict) -> dict:
  """The model inputs of a batch (drops label, weight and a recipe's lookahead batch)."""
  return {k: batch[k] for k in FEATURE_KEYS if k in batch}


def zero_features(batch: dict) -> dict:
  """The batch's features as zero arrays (init needs shapes only; identical on every process)."""
  return {k: np.zeros(np.shape(v), np.asarray(v).dtype) for k, v in features(batch).items()}


def weighted_bce(logits: jnp.ndarray, labels: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
  """Mean binary cross-entropy over rows with weight > 0 (padding rows have weight 0)."""
  return weighted_mean(optax.sigmoid_binary_cross_entropy(logits, labels), weight)


def regularization(params: PyTree, mask: PyTree, cfg: OptimConfig) -> jnp.ndarray:
  """``emb_reg/2 * sum ||table||^2 + net_reg/2 * sum ||w||^2`` (FuxiCTR's p=2 regularizer)."""
  total = jnp.zeros((), jnp.float32)
  for p, is_emb in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
    lam = cfg.embedding_regularizer if is_emb else cfg.net_regularizer
    if lam:
      total = total + (lam / 2.0) * jnp.sum(jnp.square(p.astype(jnp.float32)))
  return total


def make_loss_and_grad(model: nn.Module, mask: PyTree, cfg: OptimConfig,
                       hooks: ForwardHooks = ForwardHooks(), task: Optional[Task] = None,
                       recipe: Optional[Recipe] = None) -> LossAndGrad:
  """The loss (the recipe's loss of the task's outputs + regularization) of a batch and its
  gradient in the parameters; CTR with plain cross-entropy by default.

  The auxiliary output is ``(data_loss, reg_loss, new_batch_stats, (recipe_state, metrics))``.
  """
  task = CTRTask() if task is None else task
  recipe = PlainRecipe() if recipe is None else recipe

  def apply(params, feats, key, stats, collections):
    params, feats = hooks.prepare(params, feats)
    variables = {'params': params}
    if stats:
      variables['batch_stats'] = stats
    out, updates = model.apply(variables, feats, train=True, rngs={'dropout': key},
                               mutable=['batch_stats', *collections])
    return (out, updates.get('batch_stats', {}),
            *(updates.get(c, {}) for c in collections))

  def forward(params, feats, key, stats):
    return apply(params, feats, key, stats, ())

  def forward_sown(params, feats, key, stats):
    return apply(params, feats, key, stats, ('intermediates',))

  forward_fn, forward_sown_fn = hooks.checkpoint(forward), hooks.checkpoint(forward_sown)

  def loss_and_grad(state: TrainState, batch: dict, dropout_rng: jax.Array):
    del dropout_rng  # the recipe derives its keys from (state.rng, state.step), as this was
    inputs = StepInputs(task=task, forward=forward_fn, features=features, batch=batch,
                        step=state.step, rng=state.rng, batch_stats=state.batch_stats,
                        recipe_state=state.recipe_state, forward_sown=forward_sown_fn)

    def loss_fn(params):
      data_loss, stats, held, metrics = recipe.loss(params, inputs)
      reg = regularization(params, mask, cfg)
      return data_loss + reg, (data_loss, reg, stats, (held, metrics))

    out, grads = jax.value_and_grad(loss_fn, has_aux=True)(hooks.cast_params(state.params))
    return out, hooks.reduce_grads(grads)

  return loss_and_grad


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mask: PyTree,
                    cfg: OptimConfig, loss_and_grad: Optional[LossAndGrad] = None,
                    trainable: Optional[PyTree] = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds ``train_step(state, batch) -> (state, metrics)`` (jit it with the state donated).

  ``loss_and_grad`` replaces the default ``make_loss_and_grad(model, mask, cfg)`` (the sharding
  code passes one with hooks, or an explicit shard_map implementation). ``trainable``: a bool
  per parameter (``Recipe.trainable``); the updates of the others are zeroed, so they stay
  exactly as they are whatever the optimizer and regularizers do.
  """
  if loss_and_grad is None:
    loss_and_grad = make_loss_and_grad(model, mask, cfg)

  def train_step(state: TrainState, batch: dict):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = loss_and_grad(state, batch, dropout_rng)
    data_loss, reg, new_stats = aux[:3]
    held, extra = aux[3] if len(aux) > 3 else (state.recipe_state, {})
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if trainable is not None:
      updates = jax.tree.map(lambda u, t: u if t else jnp.zeros_like(u), updates, trainable)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              batch_stats=new_stats if state.batch_stats else state.batch_stats,
                              recipe_state=held)
    metrics = {'loss': loss, 'data_loss': data_loss, 'reg_loss': reg,
               'grad_norm': optax.tree.norm(grads), 'update_norm': optax.tree.norm(updates),
               **extra}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, hooks: ForwardHooks = ForwardHooks(),
                   task: Optional[Task] = None) -> Callable[[TrainState, dict], jnp.ndarray]:
  """Builds ``eval_step(state, batch) -> outputs`` in inference mode: the model's logits (CTR:
  ``[B]``), or what ``task.eval_outputs`` keeps of them (the language-model task: per-row
  statistics, since ``[B, L, V]`` logits are too large to bring to the host)."""

  def eval_step(state: TrainState, batch: dict):
    params, feats = hooks.prepare(hooks.cast_params(state.params), features(batch))
    variables = {'params': params}
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
    out = model.apply(variables, feats, train=False)
    return out if task is None else task.eval_outputs(out, batch)

  return eval_step
