"""Scoring a finished (or running) run on new data: the library side of scripts/evaluate.py."""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

from jaxrec.data.datasets import read_split_file
from jaxrec.data.schema import FeatureSchema
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.loop import evaluate, make_model, optim_config


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} a run directory of scripts/train.py?')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def load_dataset_state(workdir: str) -> dict:
  path = os.path.join(workdir, 'dataset_state.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} a run directory of scripts/train.py?')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def restore_for_inference(workdir: str, checkpoint: str = 'best'):
  """Returns (config, model, state, dataset_state) of a run, with the ``checkpoint`` weights."""
  config = load_run_config(workdir)
  data_state = load_dataset_state(workdir)
  schema = FeatureSchema.from_dict(data_state['schema'])
  model = make_model(config, schema)
  tx = state_lib.make_optimizer(optim_config(config))
  abstract = jax.eval_shape(lambda: state_lib.create_train_state(
      model, _dummy_batch(schema), tx, config.seed)[0])
  restored = RunCheckpoints(workdir).restore(checkpoint, abstract)
  if restored is None:
    raise FileNotFoundError(f'{workdir}/checkpoints/{checkpoint} holds no checkpoint yet')
  return config, model, restored[0], data_state


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
