"""The one training loop for every CTR model: the BARS protocol with exact resume.

Protocol (FuxiCTR / BARS): Adam; validation every epoch; when the monitored metric does not improve
by more than ``min_delta`` the learning rate is multiplied by ``lr_decay_factor`` (floor
``min_learning_rate``); training stops after ``early_stop_patience`` epochs without improvement;
the best checkpoint is restored and evaluated on validation (and test when the dataset has one).

Resume: the loop position (epoch, batch within the epoch), the best metric, the stale-epoch count
and the learning rate are checkpointed with the state; batches are a pure function of (seed,
epoch, start) and dropout keys of (seed, step), so a run killed at any point continues the same
trajectory from ``checkpoints/latest``.
"""

from __future__ import annotations

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
from jaxrec.models import build_model
from jaxrec.sharding.data import gather_rows
from jaxrec.sharding.trainer import ShardedTrainer
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.metrics import ctr_metrics
from jaxrec.train.writers import MetricWriter

MONITORS = ('auc', 'logloss', 'auc-logloss')


def monitor_value(metrics: dict, monitor: str) -> float:
  """Higher is better: auc, -logloss, or auc - logloss (FuxiCTR's {AUC: 1, logloss: -1})."""
  if monitor == 'auc':
    return metrics['auc']
  if monitor == 'logloss':
    return -metrics['logloss']
  if monitor == 'auc-logloss':
    return metrics['auc'] - metrics['logloss']
  raise ValueError(f'config.monitor must be one of {MONITORS}, got {monitor!r}')


def optim_config(config: ml_collections.ConfigDict) -> state_lib.OptimConfig:
  return state_lib.OptimConfig(learning_rate=config.learning_rate,
                               max_grad_norm=config.max_grad_norm,
                               embedding_regularizer=config.embedding_regularizer,
                               net_regularizer=config.net_regularizer)


def load_data(config: ml_collections.ConfigDict) -> LoadedDataset:
  options = dict(config.get('dataset_options', {}) or {})
  return load_dataset(config.dataset, config.data_dir or None, **options)


def make_model(config: ml_collections.ConfigDict, schema):
  kwargs = dict(config.get('model_kwargs', {}) or {})
  return build_model(config.model, schema, embedding_dim=config.embedding_dim, **kwargs)


def evaluate(eval_step, state, source: CTRSource, batch_size: int,
             desc: Optional[str] = None, progress: bool = False) -> dict[str, float]:
  """Scores every row of ``source`` (padding removed) and returns auc/logloss/ne/rows.

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
  return ctr_metrics(labels, logits, weights)


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
      raise ValueError(f'config.{name} must be >= 1, got {config[name]}')
  if config.monitor not in MONITORS:
    raise ValueError(f'config.monitor must be one of {MONITORS}, got {config.monitor!r}')
  if not 0 < config.lr_decay_factor <= 1:
    raise ValueError(f'config.lr_decay_factor must be in (0, 1], got {config.lr_decay_factor}')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a run) and returns the results dict.

  Writes ``config.json``, ``dataset_state.json``, ``metrics.jsonl``, TensorBoard events,
  ``checkpoints/{latest,best}`` and, when training ends, ``results.json``. ``config.max_steps``
  (0 = no limit) stops after that many steps in total, leaving a resumable run.
  """
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  data = load_data(config)
  _write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  _write_json(os.path.join(workdir, 'dataset_state.json'),
              dict(data.state, schema=data.schema.to_dict()))

  model = make_model(config, data.schema)
  ocfg = optim_config(config)
  tx = state_lib.make_optimizer(ocfg)
  # The mesh, FSDP strategy and multi-host data (jaxrec.sharding): each process reads its rows.
  splits = dict(data.splits)
  example = next(splits['train'].batches(config.batch_size))
  trainer = ShardedTrainer.from_config(config, model, tx, ocfg, example)
  trainer.check_batch_size(config.batch_size)
  splits = {k: trainer.local_source(v) for k, v in splits.items()}
  train, valid = splits['train'], splits['valid']
  state, _ = trainer.init_state()
  ckpts = RunCheckpoints(workdir)
  restored = ckpts.restore('latest', state)
  meta = _initial_meta()
  if restored is not None:
    state, meta = restored
    if jax.process_index() == 0:
      print(f'Resuming from {workdir} at step {int(state.step)} (epoch {meta["epoch"]}, '
            f'batch {meta["batch"]})')

  train_step, eval_step = trainer.train_step, trainer.eval_step
  writer = MetricWriter(workdir, tensorboard=config.tensorboard)
  steps_per_epoch = num_batches(train.num_rows, config.batch_size)
  show = config.progress and jax.process_index() == 0
  try:
    while not meta['done'] and meta['epoch'] < config.num_epochs:
      epoch = meta['epoch']
      bar = tqdm(total=train.num_rows, initial=min(meta['batch'] * config.batch_size,
                                                   train.num_rows),
                 unit='ex', unit_scale=True, desc=f'epoch {epoch + 1}', disable=not show)
      acc, acc_n, t0 = {}, 0, time.perf_counter()
      for batch in train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                                 start=meta['batch']):
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
      meta = _end_of_epoch(config, eval_step, state, valid, meta, writer, ckpts)
      state = trainer.set_learning_rate(state, meta['lr'])
      ckpts.save('latest', int(state.step), state, meta)
    results = _final_evaluation(config, eval_step, state, splits, meta, ckpts)
    writer.write(int(state.step), 'final', {f'{s}_{k}': v for s, d in results.items()
                                            if isinstance(d, dict) for k, v in d.items()})
    _write_json(os.path.join(workdir, 'results.json'), results)
    return results
  finally:
    writer.close()
    ckpts.close()


def _end_of_epoch(config, eval_step, state, valid, meta, writer, ckpts) -> dict:
  """Validation, best checkpoint, learning-rate decay and early stopping for one epoch."""
  meta = dict(meta)
  metrics = evaluate(eval_step, state, valid, config.eval_batch_size, desc='valid',
                     progress=config.progress and jax.process_index() == 0)
  value = monitor_value(metrics, config.monitor)
  lr = state_lib.get_learning_rate(state)
  epoch = meta['epoch']
  if meta['best'] is None or value > meta['best'] + config.min_delta:
    meta.update(best=value, best_epoch=epoch, stale=0)
    ckpts.save('best', int(state.step), state, {'epoch': epoch, 'valid': metrics})
  else:
    meta['stale'] += 1
    lr = max(lr * config.lr_decay_factor, config.min_learning_rate)
  if meta['stale'] >= config.early_stop_patience:
    meta['done'] = True
  writer.write(int(state.step), 'valid', dict(metrics, epoch=epoch + 1, learning_rate=lr))
  if jax.process_index() == 0:
    print(f'epoch {epoch + 1}: valid auc {metrics["auc"]:.6f} logloss {metrics["logloss"]:.6f} '
          f'(best epoch {meta["best_epoch"] + 1}, lr {lr:g})', flush=True)
  meta['history'] = meta['history'] + [dict(metrics, epoch=epoch + 1)]
  meta.update(epoch=epoch + 1, batch=0, lr=lr)
  return meta


def _final_evaluation(config, eval_step, state, splits, meta, ckpts) -> dict:
  """Restores the best checkpoint and scores valid (and test when present)."""
  best = ckpts.restore('best', state)
  if best is None:
    raise RuntimeError('training ended without a best checkpoint (no epoch was evaluated)')
  best_state, best_meta = best
  results = {'best_epoch': best_meta['epoch'] + 1, 'epochs_run': meta['epoch'],
             'steps': int(state.step), 'history': meta['history']}
  for split in ('valid', 'test'):
    if split in splits:
      results[split] = evaluate(eval_step, best_state, splits[split], config.eval_batch_size)
  if jax.process_index() == 0:
    print('best checkpoint: ' + json.dumps({k: results[k] for k in ('best_epoch', 'valid')
                                           if k in results}), flush=True)
  return results
