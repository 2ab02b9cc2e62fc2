"""The one training loop for every model: the BARS protocol with exact resume.

What is trained comes from the task of the data (``jaxrec.train.tasks``: CTR on tabular data,
classification on images; ``config.task``) and a recipe (``jaxrec.train.recipes``: plain,
label smoothing, DLB, SMC; ``config.recipe``).

Protocol (FuxiCTR / BARS): Adam; validation every epoch; when the monitored metric does not improve
by more than ``min_delta`` the learning rate is multiplied by ``lr_decay_factor`` (floor
``min_learning_rate``); training stops after ``early_stop_patience`` epochs without improvement;
the best checkpoint is restored and evaluated on validation (and test when the dataset has one).
With ``config.lr_schedule='cosine'`` the rate follows the cosine schedule instead of the plateau
rule (early stopping still applies; set a patience of ``num_epochs`` to train every epoch).

Resume: the loop position (epoch, batch within the epoch), the best metric, the stale-epoch count
and the learning rate are checkpointed with the state; batches are a pure function of (seed,
epoch, start) and dropout keys of (seed, step), so a run killed at any point continues the same
trajectory from ``checkpoints/latest``. A rerun must describe the same run: its config may differ
from the stored ``config.json`` only in :data:`jaxrec.train.run_config.RESUMABLE_FIELDS`, and
nothing in the workdir is written before the config, data and model have passed their checks
(:mod:`jaxrec.train.run_config`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxrec.data.dataset import CTRSource, num_batches
from jaxrec.data.datasets import LoadedDataset, load_dataset
from jaxrec.data.noise import symmetric_label_noise
from jaxrec.errors import ConfigError, RunDirError
from jaxrec.models import MODELS, build_model, model_hyperparameters
from jaxrec.train.host_data import gather_rows
from jaxrec.train.sharded_trainer import ShardedTrainer
from jaxrec.train.table_trainer import TableShardedTrainer
from jaxrec.train import state as state_lib
from jaxrec.train import run_config
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train import reshard
from jaxrec.train.config import base_config, chosen_dataset_options
from jaxrec.train.recipes import Recipe, recipe_from_config, with_next
from jaxrec.train.tasks import CTRTask, Task, task_for
from jaxrec.train.writers import MetricWriter

PLAN_FILE = reshard.PLAN_FILE  # the resolved plan of a run with sharded tables
MONITORS = tuple(CTRTask.monitors)  # the CTR task's; each task lists its own


def monitor_value(metrics: dict, monitor: str, task: Optional[Task] = None) -> float:
  """Higher is better: for CTR auc, -logloss, or auc - logloss (FuxiCTR's {AUC: 1, logloss: -1});
  for classification accuracy or -nll."""
  return (task or CTRTask()).monitor_value(metrics, monitor)


def optim_config(config: ml_collections.ConfigDict, total_steps: int = 0) -> state_lib.OptimConfig:
  """The optimizer settings of ``config``; ``total_steps`` (the run's steps) for the cosine
  schedule (``config.warmup_epochs`` of them warm up)."""
  schedule = config.get('lr_schedule', 'plateau')
  warmup = 0
  if schedule == 'cosine' and config.num_epochs:
    warmup = int(round(total_steps * float(config.get('warmup_epochs', 0)) / config.num_epochs))
  return state_lib.OptimConfig(learning_rate=config.learning_rate,
                               max_grad_norm=config.max_grad_norm,
                               embedding_regularizer=config.embedding_regularizer,
                               net_regularizer=config.net_regularizer,
                               optimizer=config.get('optimizer', 'adam'),
                               momentum=float(config.get('momentum', 0.9)),
                               nesterov=bool(config.get('nesterov', False)),
                               lr_schedule=schedule, total_steps=max(int(total_steps), 1),
                               warmup_steps=warmup)


def load_data(config: ml_collections.ConfigDict) -> LoadedDataset:
  """``config.dataset`` loaded with its options (``config.chosen_dataset_options``), with
  ``config.label_noise`` applied to the training labels."""
  data = load_dataset(config.dataset, config.data_dir or None, **chosen_dataset_options(config))
  rate = float(config.get('label_noise', 0.0))
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f'config.label_noise must be in [0, 1), got {rate}')
  if rate:
    seed = int(config.get('label_noise_seed', -1))
    seed = config.seed if seed < 0 else seed
    train = data.splits['train']
    classes = getattr(data.schema, 'num_classes', 2)
    noisy, flipped = symmetric_label_noise(train.label, rate, classes, seed)
    train.label = noisy
    data.state = dict(data.state, label_noise={'rate': rate, 'seed': seed,
                                               'flipped': int(flipped.sum())})
  return data


def make_model(config: ml_collections.ConfigDict, schema):
  """``config.model`` built with ``config.model_kwargs`` (and ``config.embedding_dim`` when the
  model takes one); ConfigError if they do not fit."""
  kwargs = dict(config.get('model_kwargs', {}) or {})
  if config.model not in MODELS or 'embedding_dim' in model_hyperparameters(MODELS[config.model]):
    kwargs['embedding_dim'] = config.embedding_dim
  try:
    return build_model(config.model, schema, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model / config.model_kwargs: {e}') from None


def make_task(config: ml_collections.ConfigDict, schema) -> Task:
  """The task of ``config`` (``config.task``, ``config.task_options``) on data of ``schema``."""
  options = config.get('task_options') or {}
  options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else dict(options)
  return task_for(schema, config.get('task', 'auto'), options)


def make_recipe(config: ml_collections.ConfigDict, task: Task, total_steps: int) -> Recipe:
  recipe = recipe_from_config(config, total_steps)
  recipe.check(task)
  return recipe


def evaluate(eval_step, state, source: CTRSource, batch_size: int,
             desc: Optional[str] = None, progress: bool = False,
             task: Optional[Task] = None) -> dict[str, float]:
  """Scores every row of ``source`` (padding removed) and returns the task's metrics (CTR:
  auc/logloss/ne/rows).

  On several processes ``source`` yields this process's rows and the rows of all processes are
  gathered before the metrics.
  """
  logits, labels, weights = [], [], []
  it = source.batches(batch_size)
  if progress:
    it = tqdm(it, total=num_batches(source.num_rows, batch_size), desc=desc, leave=False)
  for batch in it:
    logits.append(np.asarray(eval_step(state, batch)))
    labels.append(batch['label'])
    weights.append(batch['weight'])
  labels, logits, weights = gather_rows(np.concatenate(labels), np.concatenate(logits),
                                        np.concatenate(weights))  # every process's rows
  return (task or CTRTask()).metrics(labels, logits, weights)


def _initial_meta() -> dict:
  return {'epoch': 0, 'batch': 0, 'best': None, 'best_epoch': -1, 'stale': 0,
          'done': False, 'history': []}


def _write_json(path: str, obj: Any) -> None:
  if jax.process_index() == 0:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(obj, f, indent=2, sort_keys=True)


def check_config(config: ml_collections.ConfigDict) -> None:
  for name in ('batch_size', 'eval_batch_size', 'num_epochs', 'embedding_dim'):
    if int(config[name]) < 1:
      raise ConfigError(f'config.{name} must be >= 1, got {config[name]}')
  if not 0 < config.lr_decay_factor <= 1:
    raise ConfigError(f'config.lr_decay_factor must be in (0, 1], got {config.lr_decay_factor}')


def make_trainer(config: ml_collections.ConfigDict, model, schema, tx, ocfg, example,
                 task: Optional[Task] = None, recipe: Optional[Recipe] = None):
  """The trainer of ``config``: ``TableShardedTrainer`` when ``config.embedding.plan`` shards the
  tables (the plan is printed), else ``ShardedTrainer`` (dense parameters by
  ``config.sharding``)."""
  emb = config.get('embedding') or base_config().embedding
  if emb.plan != 'none':
    if (task is not None and task.name != 'ctr') or (recipe is not None and recipe.name != 'none'):
      raise ConfigError(f'config.embedding.plan={emb.plan!r} (sharded tables) trains the CTR task '
                        'with the plain recipe only; this config has task '
                        f'{getattr(task, "name", "ctr")!r} and recipe '
                        f'{getattr(recipe, "name", "none")!r} (set config.embedding.plan=none)')
    trainer = TableShardedTrainer.from_config(config, model, schema, tx, ocfg, example)
    trainer.check_batch_size(config.batch_size)
    if jax.process_index() == 0:
      print(trainer.describe(config.batch_size), flush=True)
    return trainer
  if emb.optimizer != 'dense':
    raise ConfigError(f'config.embedding.optimizer={emb.optimizer!r} needs sharded tables '
                      "(config.embedding.plan); with plan 'none' the tables train with optax "
                      "(optimizer 'dense')")
  try:
    trainer = ShardedTrainer.from_config(config, model, tx, ocfg, example, task, recipe)
    trainer.check_batch_size(config.batch_size)
  except ValueError as e:
    raise ConfigError(f'sharding plan (config.sharding): {e}') from None
  return trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       override_config_check: bool = False,
                       fork_from: Optional[str] = None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a run) and returns the results dict.

  Writes ``config.json``, ``dataset_state.json``, ``metrics.jsonl``, TensorBoard events,
  ``checkpoints/{latest,best}`` and, when training ends, ``results.json``. ``config.max_steps``
  (0 = no limit) stops after that many steps in total, leaving a resumable run.

  Args:
    config: the run's config (:func:`jaxrec.train.config.base_config` fields).
    workdir: the run directory. If it holds a checkpoint the run resumes, and ``config`` may
      differ from its ``config.json`` only in ``run_config.RESUMABLE_FIELDS``
      (ConfigMismatchError listing the fields otherwise).
    override_config_check: resume even so, replacing the stored ``config.json``.
    fork_from: a run directory whose latest and best checkpoints start this run in ``workdir``
      (which must hold no run); the config may differ, but not the data or parameter shapes.
      A recipe with ``fresh_optimizer`` (the auxiliary-router phase) takes only the parameters
      (of the source's best checkpoint, else its latest) and starts at step 0.

  Raises:
    jaxrec.errors.UserError: a config, data, sharding plan or run directory that cannot be run;
      the workdir is then left untouched.
  """
  check_config(config)
  record = run_config.run_record(config)
  start = run_config.plan_start(workdir, record, fork_from, override_config_check)
  data = load_data(config)
  data_state = run_config.json_native(dict(data.state, schema=data.schema.to_dict()))
  if start.source is not None:
    run_config.check_dataset_state(start.source, data_state, override_config_check)

  model = make_model(config, data.schema)
  task = make_task(config, data.schema)
  task.check_monitor(config.monitor)
  total_steps = config.num_epochs * num_batches(data.splits['train'].num_rows, config.batch_size)
  recipe = make_recipe(config, task, total_steps)
  ocfg = optim_config(config, total_steps)
  try:
    tx = state_lib.make_optimizer(ocfg)
  except ValueError as e:
    raise ConfigError(f'config.optimizer / config.lr_schedule: {e}') from None
  # The mesh, FSDP strategy and multi-host data (jaxrec.sharding): each process reads its rows.
  splits = dict(data.splits)
  example = next(splits['train'].batches(config.batch_size))
  if recipe.lookahead:
    example = with_next(example, example)
  trainer = make_trainer(config, model, data.schema, tx, ocfg, example, task, recipe)
  splits = {k: trainer.local_source(v) for k, v in splits.items()}
  train, valid = splits['train'], splits['valid']
  state, _ = trainer.init_state()
  meta = _initial_meta()
  restored = best = None
  run = reshard.RunModel(model, data.schema, tx, example, config.seed, recipe)
  params_only = fork_from is not None and recipe.fresh_optimizer
  if start.source is not None:
    restored, best = _restore(start.source, state, trainer, run, with_best=fork_from is not None)
    if params_only:  # the source's best (else latest) parameters; everything else starts fresh
      source_state = (best or restored)[0]
      state = state.replace(params=source_state.params, batch_stats=source_state.batch_stats)
      restored = best = None
    else:
      state, meta = restored

  # Validated: from here on the workdir is written.
  if jax.process_index() == 0 and start.note:
    print(start.note + (f' (parameters only: config.recipe={recipe.name!r} starts a fresh '
                        'optimizer at step 0)' if params_only else ''), flush=True)
  os.makedirs(workdir, exist_ok=True)
  files = [(run_config.CONFIG_FILE, record), (run_config.DATASET_STATE_FILE, data_state)]
  if isinstance(trainer, TableShardedTrainer):  # the resolved plan, for evaluation and reuse
    files.append((PLAN_FILE, trainer.plan.to_dict()))
  for name, obj in files:
    path = os.path.join(workdir, name)
    if run_config.read_json(path) != obj:
      _write_json(path, obj)
  ckpts = RunCheckpoints(workdir, layout=reshard.layout_record(trainer))
  if fork_from is not None:
    ckpts.save('latest', int(state.step), state, meta)
    if best is not None:
      ckpts.save('best', int(best[0].step), *best)
  steps_per_epoch = num_batches(train.num_rows, config.batch_size)
  if restored is not None and jax.process_index() == 0:
    print(f'Resuming from {start.source} at step {int(state.step)} '
          f'({_position(meta, steps_per_epoch, config.num_epochs)})', flush=True)

  train_step, eval_step = trainer.train_step, trainer.eval_step
  writer = MetricWriter(workdir, tensorboard=config.tensorboard)
  show = config.progress and jax.process_index() == 0
  try:
    while not meta['done'] and meta['epoch'] < config.num_epochs:
      epoch = meta['epoch']
      bar = tqdm(total=train.num_rows, initial=min(meta['batch'] * config.batch_size,
                                                   train.num_rows),
                 unit='ex', unit_scale=True, desc=f'epoch {epoch + 1}', disable=not show)
      acc, acc_n, t0 = {}, 0, time.perf_counter()
      for batch in _train_batches(train, config, epoch, meta['batch'], recipe.lookahead):
        state, m = train_step(state, batch)
        meta['batch'] += 1
        step = int(state.step)
        rows = int(batch['weight'].sum()) * jax.process_count()
        bar.update(rows)
        for k, v in m.items():
          acc[k] = acc.get(k, 0.0) + v
        acc_n += 1
        if step % config.log_every_steps == 0 or meta['batch'] == steps_per_epoch:
          logs = {k: float(v) / acc_n for k, v in acc.items()}
          if not math.isfinite(logs['loss']):
            raise FloatingPointError(f'loss is {logs["loss"]} at step {step} (epoch {epoch + 1}); '
                                     'lower the learning rate or check the data')
          dt = time.perf_counter() - t0
          logs['examples_per_sec'] = acc_n * config.batch_size / max(dt, 1e-9)
          logs['learning_rate'] = state_lib.get_learning_rate(state)
          writer.write(step, 'train', logs)
          bar.set_postfix(loss=f'{logs["loss"]:.4f}')
          acc, acc_n, t0 = {}, 0, time.perf_counter()
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
          ckpts.save('latest', step, state, meta)
        if config.max_steps and step >= config.max_steps:
          ckpts.save('latest', step, state, meta)
          bar.close()
          return {'stopped_at_step': step}
      bar.close()
      meta = _end_of_epoch(config, eval_step, state, valid, meta, writer, ckpts, task)
      if ocfg.lr_schedule == 'plateau':
        state = trainer.set_learning_rate(state, meta['lr'])
      ckpts.save('latest', int(state.step), state, meta)
    restore_best = lambda: reshard.restore_state(ckpts, 'best', trainer, state, run, workdir)
    results = _final_evaluation(config, eval_step, state, splits, meta, restore_best,
                                getattr(data.splits['valid'], 'teacher_logit', None), task)
    writer.write(int(state.step), 'final', {f'{s}_{k}': v for s, d in results.items()
                                            if isinstance(d, dict) for k, v in d.items()})
    _write_json(os.path.join(workdir, 'results.json'), results)
    return results
  finally:
    writer.close()
    ckpts.close()


def _restore(source: str, state, trainer, run: reshard.RunModel, with_best: bool = False):
  """(latest, best) checkpoints of run directory ``source`` as (state, meta) pairs, read without
  writing and placed for ``trainer`` (converted when they were saved on another mesh or plan,
  ``jaxrec.train.reshard``); best is None unless ``with_best`` and there is one."""
  ckpts = RunCheckpoints(source, read_only=True)
  try:
    latest = reshard.restore_state(ckpts, 'latest', trainer, state, run, source)
    best = (reshard.restore_state(ckpts, 'best', trainer, state, run, source) if with_best
            else None)
  except (ValueError, TypeError, KeyError) as e:
    raise RunDirError(f'the checkpoint in {source} does not fit the model of this config '
                      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
  finally:
    ckpts.close()
  if latest is None:
    raise RunDirError(f'{source}/checkpoints/latest holds no checkpoint')
  return latest, best


def _position(meta: dict, steps_per_epoch: int, num_epochs: int) -> str:
  """Where a restored run stands, with epochs counted from 1 as the progress lines count them."""
  if meta['done'] or meta['epoch'] >= num_epochs:
    return f'training finished after {meta["epoch"]} epochs'
  return f'epoch {meta["epoch"] + 1}, {meta["batch"]} of {steps_per_epoch} batches done'


def _train_batches(train, config, epoch: int, start: int, lookahead: bool):
  """The epoch's training batches from batch ``start`` on; with ``lookahead`` each carries the
  batch that follows it in training (the next epoch's first after the last), under ``next.``."""
  def stream(e, s):
    return train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=e, start=s)
  batches = stream(epoch, start)
  if not lookahead:
    yield from batches
    return
  following = itertools.chain(stream(epoch, start + 1), stream(epoch + 1, 0))
  for batch, nxt in zip(batches, following):
    yield with_next(batch, nxt)


def _end_of_epoch(config, eval_step, state, valid, meta, writer, ckpts,
                  task: Optional[Task] = None) -> dict:
  """Validation, best checkpoint, learning-rate decay and early stopping for one epoch."""
  task = task or CTRTask()
  meta = dict(meta)
  metrics = evaluate(eval_step, state, valid, config.eval_batch_size, desc='valid',
                     progress=config.progress and jax.process_index() == 0, task=task)
  value = task.monitor_value(metrics, config.monitor)
  lr = state_lib.get_learning_rate(state)
  epoch = meta['epoch']
  if meta['best'] is None or value > meta['best'] + config.min_delta:
    meta.update(best=value, best_epoch=epoch, stale=0)
    ckpts.save('best', int(state.step), state, {'epoch': epoch, 'valid': metrics})
  else:
    meta['stale'] += 1
    if config.get('lr_schedule', 'plateau') == 'plateau':
      lr = max(lr * config.lr_decay_factor, config.min_learning_rate)
  if meta['stale'] >= config.early_stop_patience:
    meta['done'] = True
  writer.write(int(state.step), 'valid', dict(metrics, epoch=epoch + 1, learning_rate=lr))
  if jax.process_index() == 0:
    print(f'epoch {epoch + 1}: valid {task.summary(metrics)} '
          f'(best epoch {meta["best_epoch"] + 1}, lr {lr:g})', flush=True)
  meta['history'] = meta['history'] + [dict(metrics, epoch=epoch + 1)]
  meta.update(epoch=epoch + 1, batch=0, lr=lr)
  return meta


def _final_evaluation(config, eval_step, state, splits, meta, restore_best,
                      bayes_logit=None, task: Optional[Task] = None) -> dict:
  """Restores the best checkpoint and scores valid (and test when present).

  ``bayes_logit(batch)``, when the data has one (the synthetic generator's ``teacher_logit``),
  is scored on the same rows as ``bayes_optimal_valid`` / ``bayes_optimal_test``: the best any
  model can reach.
  """
  best = restore_best()
  if best is None:
    raise RuntimeError('training ended without a best checkpoint (no epoch was evaluated)')
  best_state, best_meta = best
  results = {'best_epoch': best_meta['epoch'] + 1, 'epochs_run': meta['epoch'],
             'steps': int(state.step), 'history': meta['history']}
  for split in ('valid', 'test'):
    if split in splits:
      results[split] = evaluate(eval_step, best_state, splits[split], config.eval_batch_size,
                                task=task)
      if bayes_logit is not None:
        results[f'bayes_optimal_{split}'] = evaluate(lambda _, batch: bayes_logit(batch), None,
                                                     splits[split], config.eval_batch_size,
                                                     task=task)
  if jax.process_index() == 0:
    print('best checkpoint: ' + json.dumps({k: results[k] for k in (
        'best_epoch', 'valid', 'bayes_optimal_valid') if k in results}), flush=True)
  return results
