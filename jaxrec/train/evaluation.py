"""Scoring a finished (or running) run on new data: the library side of scripts/evaluate.py."""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

from jaxrec.data.datasets import read_split_file
from jaxrec.data.schema import FeatureSchema
from jaxrec.errors import RunDirError
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.sharding.embedding_plan import EmbeddingPlan
from jaxrec.train.loop import PLAN_FILE, evaluate, make_model, optim_config
from jaxrec.train.table_trainer import TableShardedTrainer


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise RunDirError(f'{path} not found: is {workdir!r} a run directory of scripts/train.py?')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def load_dataset_state(workdir: str) -> dict:
  path = os.path.join(workdir, 'dataset_state.json')
  if not os.path.exists(path):
    raise RunDirError(f'{path} not found: is {workdir!r} a run directory of scripts/train.py?')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def restore_for_inference(workdir: str, checkpoint: str = 'best'):
  """Returns (config, model, state, dataset_state) of a run, with the ``checkpoint`` weights."""
  config = load_run_config(workdir)
  data_state = load_dataset_state(workdir)
  schema = FeatureSchema.from_dict(data_state['schema'])
  model = make_model(config, schema)
  tx = state_lib.make_optimizer(optim_config(config))
  emb = config.get('embedding') or {}
  trainer = None
  if emb.get('plan', 'none') != 'none':
    trainer = _table_trainer(workdir, config, model, schema, tx)
    abstract = trainer.init_state()[0]
  else:
    abstract = jax.eval_shape(lambda: state_lib.create_train_state(
        model, _dummy_batch(schema), tx, config.seed)[0])
  ckpts = RunCheckpoints(workdir, read_only=True)
  try:
    restored = ckpts.restore(checkpoint, abstract)
  finally:
    ckpts.close()
  if restored is None:
    raise RunDirError(f'{workdir}/checkpoints/{checkpoint} holds no checkpoint yet')
  state = restored[0]
  if trainer is not None:  # the model's own (unsharded) parameter tree
    state = state.replace(params=trainer.merge_params(jax.device_get(state.params)),
                          opt_state=None, table_opt_state=None)
  return config, model, state, data_state


def _table_trainer(workdir: str, config, model, schema, tx) -> TableShardedTrainer:
  """The trainer of a run with sharded tables, on as many devices as it was trained on."""
  path = os.path.join(workdir, PLAN_FILE)
  if not os.path.isfile(path):
    raise RunDirError(f'{path} not found: a run with config.embedding.plan='
                      f'{config.embedding.plan!r} stores its resolved plan there')
  with open(path, encoding='utf-8') as f:
    plan = EmbeddingPlan.from_json(f.read())
  if jax.device_count() != plan.num_devices:
    raise RunDirError(f'{workdir} keeps its tables sharded over {plan.num_devices} devices; '
                      f'evaluate it on {plan.num_devices} devices (on CPU: --cpu_devices='
                      f'{plan.num_devices}), this process has {jax.device_count()}')
  e = config.embedding
  example = _dummy_batch(schema)
  example = {k: v.repeat(plan.num_devices, axis=0) for k, v in example.items()}
  return TableShardedTrainer(model, schema, tx, optim_config(config), example, path,
                             optimizer=e.optimizer, table_learning_rate=e.learning_rate,
                             hosts=plan.num_hosts, seed=config.seed)


def _dummy_batch(schema: FeatureSchema) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrec.data.dataset import ArrayDataset  # pylint: disable=g-import-not-at-top
  m, length = schema.num_multi_hot, schema.max_multi_hot_length
  ds = ArrayDataset(schema, sparse=np.zeros((1, schema.num_sparse), np.int32),
                    label=np.zeros(1, np.float32), dense=np.zeros((1, schema.num_dense), np.float32),
                    multi_hot_ids=np.zeros((1, m, length), np.int32) if m else None,
                    multi_hot_lengths=np.zeros((1, m), np.int32) if m else None)
  return next(ds.batches(1))


def evaluate_split_file(workdir: str, split_file: str, checkpoint: str = 'best',
                        batch_size: Optional[int] = None) -> dict:
  """auc / logloss / ne / rows of the run's ``checkpoint`` on ``split_file``."""
  config, model, state, data_state = restore_for_inference(workdir, checkpoint)
  data = read_split_file(config.dataset, split_file, data_state)
  eval_step = jax.jit(state_lib.make_eval_step(model))
  return evaluate(eval_step, state, data, batch_size or config.eval_batch_size)
