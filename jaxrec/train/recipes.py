"""Training recipes: how a step turns a task's outputs into the loss, for any task and model.

A recipe wraps the task's per-row loss (``jaxrec.train.tasks``). Some recipes keep state from one
step to the next (``TrainState.recipe_state``, checkpointed with the rest, so resume stays exact)
and some read the batch that comes after the current one (``lookahead``: the loop passes it in the
batch under ``next.<key>``).

* ``PlainRecipe``: the task's loss (cross-entropy) on a view of the batch.
* ``LabelSmoothing(smoothing)``: cross-entropy against smoothed targets.
* ``DLB(alpha, temperature)`` (Shen et al., CVPR 2022, self-distillation from the last mini-batch):
  each step trains on the batch and the next one together; the next one's outputs are kept as
  soft labels for the following step, where the same rows (same view) come back as the current
  batch: loss = CE(both) + alpha * T^2 * KL(soft labels || outputs / T) on the current rows.
* ``AuxRouterRecipe`` (MoMa, arXiv 2407.21770): trains only the parameters under an
  ``aux_router`` module (every other parameter frozen: gradients stopped, updates zeroed) on the
  sum of the auxiliary routers' BCE against the main routers' expert-choice decisions, which the
  model sows into ``'intermediates'`` (``jaxrec.layers.moe.aux_router_terms``). It is a second
  phase after the main training: fork the trained run (``--fork_from``); the fork takes its
  parameters only and starts a fresh optimizer (``fresh_optimizer``). With the model's
  ``routing_mode='causal_inference'`` the run's validation scores causal inference.
* ``SMC(channels, views, alpha, temperature)`` (arXiv 2304.14224, SMC-k): each sample goes through
  the model as ``channels`` channels. Every step, channels 2..k run a no-gradient forward in train
  mode (updating BatchNorm statistics) on the *next* batch and their outputs are held for one step;
  then channel 1 trains on the current batch with
  loss = (1 - a) * CE + a * mean over held channels of KL(softmax(z_held / T) || softmax(z_1 / T))
  (batch mean, no T^2 factor), with a rising on a cosine from 0 to ``alpha`` over training; the
  first step has nothing held and trains on CE alone. ``views='independent'`` gives each channel
  its own augmentation (and dropout) draw, as the paper describes; ``views='identical'`` gives
  every channel the same one, which is what the released code does (its two loaders are seeded
  alike): distillation from the previous step's outputs on identical inputs.

Keys: batch ``t`` (``t`` = the step that trains on it) in channel ``c`` is viewed with
``view_key(rng, t, c)`` and its dropout uses ``dropout_key(rng, t, c)``; channel 0's dropout key is
``fold_in(rng, t)``, the key the plain step has always used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from jaxrec.errors import ConfigError
from jaxrec.layers.moe import aux_router_terms
from jaxrec.train.tasks import Task, weighted_mean

PyTree = Any
RECIPES = ('none', 'label_smoothing', 'dlb', 'smc', 'aux_router')
NEXT = 'next.'  # prefix of the lookahead batch's keys in a step's batch
_VIEW_SALT = 0x56494557  # separates view keys from dropout keys


def dropout_key(rng: jax.Array, t, channel: int = 0) -> jax.Array:
  key = jax.random.fold_in(rng, t)
  return key if channel == 0 else jax.random.fold_in(key, channel)


def view_key(rng: jax.Array, t, channel: int = 0) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, t), _VIEW_SALT), channel)


def next_batch(batch: Mapping[str, Any]) -> dict:
  """The lookahead batch carried in ``batch`` under ``next.<key>``."""
  return {k[len(NEXT):]: v for k, v in batch.items() if k.startswith(NEXT)}


def with_next(batch: dict, following: dict) -> dict:
  """``batch`` carrying ``following`` as its lookahead batch."""
  return dict(batch, **{NEXT + k: v for k, v in following.items()})


# forward(params, feats, dropout_key, batch_stats) -> (outputs, new_batch_stats), train mode.
Forward = Callable[[PyTree, dict, jax.Array, PyTree], tuple[jax.Array, PyTree]]
# The same, also returning the 'intermediates' the model sowed: (outputs, batch_stats, sown).
SowingForward = Callable[[PyTree, dict, jax.Array, PyTree], tuple[jax.Array, PyTree, PyTree]]


@dataclasses.dataclass(frozen=True)
class StepInputs:
  """What a recipe's loss sees in one step.

  Attributes:
    task: the task.
    forward: the model's train-mode forward (sharding hooks applied).
    features: model inputs of the batch -> the inputs of ``batch``'s features (``state.features``).
    batch: the step's batch (with the lookahead under ``next.`` when the recipe asks for it).
    step: the step (= index of the batch being trained on).
    rng: the state's base key.
    batch_stats: BatchNorm statistics before the step ({} when the model has none).
    recipe_state: what the recipe held from the previous step.
    forward_sown: ``forward`` also returning the model's sown ``'intermediates'``.
  """
  task: Task
  forward: Forward
  features: Callable[[dict], dict]
  batch: dict
  step: jax.Array
  rng: jax.Array
  batch_stats: PyTree
  recipe_state: PyTree
  forward_sown: Optional[SowingForward] = None


# (data_loss, new_batch_stats, new_recipe_state, metrics)
RecipeOutput = tuple[jax.Array, PyTree, PyTree, dict]


class Recipe:
  """Interface: ``loss(params, inputs) -> RecipeOutput``; ``init_state(outputs)`` the state held
  between steps (``None`` when there is none), from the outputs' ``ShapeDtypeStruct`` for one
  batch; ``trainable(params)`` which parameters the step updates (None: all);
  ``fresh_optimizer``: a fork into this recipe takes the parameters only."""
  name = 'none'
  lookahead = False
  needs_soft_labels = False
  fresh_optimizer = False

  def init_state(self, outputs: jax.ShapeDtypeStruct) -> PyTree:
    del outputs
    return None

  def trainable(self, params: PyTree) -> Optional[PyTree]:
    """A bool per leaf of ``params`` (True: updated), or None when every parameter trains."""
    del params
    return None

  def loss(self, params: PyTree, x: StepInputs) -> RecipeOutput:
    raise NotImplementedError

  def check(self, task: Task) -> None:
    if self.needs_soft_labels and not task.soft_labels:
      raise ConfigError(f'config.recipe={self.name!r} distils soft labels, which the {task.name} '
                        'task does not give')


def _train_view(params, x: StepInputs, batch: dict, t, channel: int, stats):
  feats = x.task.view(x.features(batch), view_key(x.rng, t, channel))
  return x.forward(params, feats, dropout_key(x.rng, t, channel), stats)


@dataclasses.dataclass(frozen=True)
class PlainRecipe(Recipe):
  name = 'none'

  def loss(self, params, x):
    out, stats = _train_view(params, x, x.batch, x.step, 0, x.batch_stats)
    return (weighted_mean(x.task.row_loss(out, x.batch), x.batch['weight']), stats, x.recipe_state,
            x.task.train_metrics(out, x.batch))


@dataclasses.dataclass(frozen=True)
class LabelSmoothing(Recipe):
  smoothing: float = 0.1
  name = 'label_smoothing'

  def __post_init__(self):
    if not 0.0 <= self.smoothing < 1.0:
      raise ConfigError(f'config.label_smoothing must be in [0, 1), got {self.smoothing}')

  def loss(self, params, x):
    out, stats = _train_view(params, x, x.batch, x.step, 0, x.batch_stats)
    per_row = x.task.smoothed_row_loss(out, x.batch, self.smoothing)
    return (weighted_mean(per_row, x.batch['weight']), stats, x.recipe_state,
            x.task.train_metrics(out, x.batch))


def _held(outputs: jax.ShapeDtypeStruct, copies: int) -> dict:
  return {'teacher': jnp.zeros((copies,) + tuple(outputs.shape), jnp.float32),
          'valid': jnp.zeros((), jnp.bool_)}


def _concat(a: dict, b: dict) -> dict:
  return {k: jnp.concatenate([a[k], b[k]]) for k in a}


@dataclasses.dataclass(frozen=True)
class DLB(Recipe):
  alpha: float = 1.0
  temperature: float = 3.0
  name = 'dlb'
  lookahead = True
  needs_soft_labels = True

  def __post_init__(self):
    if self.alpha < 0 or self.temperature <= 0:
      raise ConfigError(f'config.dlb: alpha must be >= 0 and temperature > 0, got {self.alpha}, '
                        f'{self.temperature}')

  def init_state(self, outputs):
    return _held(outputs, 1)

  def loss(self, params, x):
    nxt = next_batch(x.batch)
    k0, k1 = view_key(x.rng, x.step, 0), view_key(x.rng, x.step + 1, 0)
    feats = _concat(x.task.view(x.features(x.batch), k0), x.task.view(x.features(nxt), k1))
    out, stats = x.forward(params, feats, dropout_key(x.rng, x.step, 0), x.batch_stats)
    n = x.batch['weight'].shape[0]
    cur, following = out[:n], out[n:]
    ce = weighted_mean(x.task.row_loss(out, _concat(_labels(x.batch), _labels(nxt))),
                       jnp.concatenate([x.batch['weight'], nxt['weight']]))
    held = x.recipe_state
    kl = weighted_mean(x.task.distill_row_loss(cur, held['teacher'][0], self.temperature),
                       x.batch['weight'])
    w = jnp.where(held['valid'], self.alpha * self.temperature ** 2, 0.0)
    new = {'teacher': jax.lax.stop_gradient(following)[None].astype(jnp.float32),
           'valid': jnp.ones((), jnp.bool_)}
    return ce + w * kl, stats, new, {'ce_loss': ce, 'distill_loss': kl, 'distill_weight': w}


def _labels(batch: dict) -> dict:
  return {'label': batch['label']}


@dataclasses.dataclass(frozen=True)
class SMC(Recipe):
  channels: int = 2
  views: str = 'independent'
  alpha: float = 0.9
  temperature: float = 1.5
  ramp: str = 'cosine'
  total_steps: int = 1
  name = 'smc'
  lookahead = True
  needs_soft_labels = True

  def __post_init__(self):
    if self.channels < 2:
      raise ConfigError(f'config.smc.channels must be >= 2, got {self.channels}')
    if self.views not in ('independent', 'identical'):
      raise ConfigError(f"config.smc.views must be 'independent' or 'identical', got {self.views!r}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ConfigError(f'config.smc.alpha must be in [0, 1], got {self.alpha}')
    if self.temperature <= 0:
      raise ConfigError(f'config.smc.temperature must be > 0, got {self.temperature}')
    if self.ramp not in ('cosine', 'constant'):
      raise ConfigError(f"config.smc.ramp must be 'cosine' or 'constant', got {self.ramp!r}")
    if self.total_steps < 1:
      raise ConfigError(f'SMC: total_steps must be >= 1, got {self.total_steps}')

  def init_state(self, outputs):
    return _held(outputs, self.channels - 1)

  def weight(self, step) -> jax.Array:
    """a at ``step``: alpha * (1 - (1 + cos(pi step / total)) / 2), or alpha (constant ramp)."""
    if self.ramp == 'constant':
      return jnp.float32(self.alpha)
    frac = jnp.minimum(step / self.total_steps, 1.0)
    return self.alpha * (1.0 - 0.5 * (1.0 + jnp.cos(math.pi * frac)))

  def loss(self, params, x):
    nxt = next_batch(x.batch)
    frozen = jax.lax.stop_gradient(params)
    stats, held = x.batch_stats, []
    for c in range(1, self.channels):  # teachers for the next step, BatchNorm statistics updated
      channel = c if self.views == 'independent' else 0
      out, stats = _train_view(frozen, x, nxt, x.step + 1, channel, stats)
      held.append(jax.lax.stop_gradient(out).astype(jnp.float32))
    out, _ = _train_view(params, x, x.batch, x.step, 0, x.batch_stats)  # statistics not updated
    w = x.batch['weight']
    ce = weighted_mean(x.task.row_loss(out, x.batch), w)
    prev = x.recipe_state
    kl = sum(weighted_mean(x.task.distill_row_loss(out, prev['teacher'][i], self.temperature), w)
             for i in range(self.channels - 1)) / (self.channels - 1)
    a = jnp.where(prev['valid'], self.weight(x.step), 0.0)
    new = {'teacher': jnp.stack(held), 'valid': jnp.ones((), jnp.bool_)}
    return (1.0 - a) * ce + a * kl, stats, new, {'ce_loss': ce, 'distill_loss': kl,
                                                 'distill_weight': a}


def under_module(params: PyTree, module: str) -> PyTree:
  """A bool per leaf of ``params``: whether its path passes through a module named ``module``."""
  def inside(path, _):
    return any(getattr(k, 'key', None) == module for k in path)
  return jax.tree_util.tree_map_with_path(inside, params)


def freeze(params: PyTree, trainable: PyTree) -> PyTree:
  """``params`` with the gradient stopped at every leaf whose ``trainable`` entry is False."""
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


@dataclasses.dataclass(frozen=True)
class AuxRouterRecipe(Recipe):
  """MoMa's post-hoc auxiliary-router training (module docstring).

  loss = sum over the model's auxiliary routers of their mean BCE against the main routers'
  expert-choice decisions (``aux_router_terms``); metrics add the routers' agreement with those
  decisions (``aux_router_accuracy``, the 0.5-threshold routing of causal inference) and the
  task's loss of the (unchanged) main model.
  """
  module: str = 'aux_router'
  name = 'aux_router'
  fresh_optimizer = True

  def trainable(self, params):
    mask = under_module(params, self.module)
    if not any(jax.tree.leaves(mask)):
      raise ConfigError(f"config.recipe='aux_router' trains the parameters under {self.module!r} "
                        'modules, and this model has none: it needs a MoE FFN or mixture-of-'
                        "depths (model 'decoder_lm' with model_kwargs.ffn='moe' or mod_fraction)")
    return mask

  def loss(self, params, x):
    if x.forward_sown is None:
      raise ConfigError("config.recipe='aux_router' needs the model's sown intermediates, which "
                        "this trainer's step does not collect")
    params = freeze(params, self.trainable(params))
    feats = x.task.view(x.features(x.batch), view_key(x.rng, x.step, 0))
    out, stats, sown = x.forward_sown(params, feats, dropout_key(x.rng, x.step, 0), x.batch_stats)
    terms = aux_router_terms(sown)
    if not terms['routers']:
      raise ConfigError("config.recipe='aux_router': the model sowed no auxiliary-router terms in "
                        'its training forward; it must route by expert choice in training '
                        "(model_kwargs.routing_mode 'expert_choice' or 'causal_inference')")
    metrics = {'aux_router_loss': terms['loss'], 'aux_router_accuracy': terms['accuracy'],
               'task_loss': weighted_mean(x.task.row_loss(out, x.batch), x.batch['weight'])}
    metrics.update(x.task.train_metrics(out, x.batch))
    return terms['loss'], stats, x.recipe_state, metrics


def recipe_from_config(config, total_steps: int) -> Recipe:
  """The recipe ``config.recipe`` names, with its section (``config.label_smoothing``,
  ``config.dlb``, ``config.smc``); ``total_steps`` sets SMC's ramp."""
  name = config.get('recipe', 'none')
  if name == 'none':
    return PlainRecipe()
  if name == 'label_smoothing':
    return LabelSmoothing(float(config.label_smoothing))
  if name == 'dlb':
    return DLB(float(config.dlb.alpha), float(config.dlb.temperature))
  if name == 'smc':
    s = config.smc
    return SMC(int(s.channels), str(s.views), float(s.alpha), float(s.temperature), str(s.ramp),
               max(int(total_steps), 1))
  if name == 'aux_router':
    return AuxRouterRecipe()
  raise ConfigError(f'config.recipe must be one of {RECIPES}, got {name!r}')
