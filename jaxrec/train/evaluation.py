"""Scoring a finished (or running) run on new data: the library side of scripts/evaluate.py."""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections

from jaxrec.data.datasets import read_split_file
from jaxrec.data.schema import ImageSchema, SequenceSchema, schema_from_dict
from jaxrec.errors import RunDirError
from jaxrec.train import state as state_lib
from jaxrec.train import reshard
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.loop import evaluate, make_model, make_recipe, make_task, optim_config
from jaxrec.train.recipes import with_next


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
  """Returns (config, model, state, dataset_state) of a run, with the ``checkpoint`` weights.

  The state is the unsharded model's (its own parameter tree, host arrays), read on any number of
  devices whatever mesh, embedding plan or FSDP padding the run trained with
  (``jaxrec.train.reshard``); its optimizer states are dropped.
  """
  config = load_run_config(workdir)
  data_state = load_dataset_state(workdir)
  schema = schema_from_dict(data_state['schema'])
  model = make_model(config, schema)
  # The run's optimizer and recipe give its checkpoint's layout (steps do not change shapes).
  tx = state_lib.make_optimizer(optim_config(config, total_steps=1))
  recipe = make_recipe(config, make_task(config, schema), total_steps=1)
  example = example_batch(schema)
  if recipe.lookahead:
    example = with_next(example, example)
  run = reshard.RunModel(model, schema, tx, example, config.seed, recipe, config.batch_size)
  emb = config.get('embedding') or {}
  ckpts = RunCheckpoints(workdir, read_only=True)
  try:
    if ckpts.latest_step(checkpoint) is None:
      raise RunDirError(f'{workdir}/checkpoints/{checkpoint} holds no checkpoint yet')
    layout = reshard.saved_layout(ckpts, checkpoint, workdir)
    if emb.get('plan', 'none') != 'none' and not layout:  # a checkpoint older than records
      raise RunDirError(f'{os.path.join(workdir, reshard.PLAN_FILE)} not found: a run with '
                        f'config.embedding.plan={emb["plan"]!r} stores its resolved plan there')
    restored = reshard.read_unsharded(ckpts, checkpoint, run, layout,
                                      emb.get('optimizer', 'dense'))
  finally:
    ckpts.close()
  state = restored[0].replace(opt_state=None, table_opt_state=None, recipe_state=None)
  return config, model, state, data_state


def example_batch(schema) -> dict:
  """A one-row batch of zeros in the layout of ``schema``'s data (CTR, image or token
  sequence): enough to initialise a model or plan its state."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrec.data.dataset import ArrayDataset  # pylint: disable=g-import-not-at-top
  if isinstance(schema, ImageSchema):
    return {'image': np.zeros((1,) + schema.shape, np.float32), 'label': np.zeros(1, np.int32),
            'weight': np.ones(1, np.float32)}
  if isinstance(schema, SequenceSchema):
    tokens = np.zeros((1, schema.seq_len), np.int32)
    modality = np.repeat(np.arange(schema.num_modalities, dtype=np.int32),
                         schema.modality_counts)[None]  # the static per-modality counts
    return {'inputs': tokens, 'modality': modality, 'label': tokens,
            'target_modality': modality, 'loss_mask': np.ones((1, schema.seq_len), np.float32),
            'weight': np.ones(1, np.float32)}
  m, length = schema.num_multi_hot, schema.max_multi_hot_length
  ds = ArrayDataset(schema, sparse=np.zeros((1, schema.num_sparse), np.int32),
                    label=np.zeros(1, np.float32), dense=np.zeros((1, schema.num_dense), np.float32),
                    multi_hot_ids=np.zeros((1, m, length), np.int32) if m else None,
                    multi_hot_lengths=np.zeros((1, m), np.int32) if m else None)
  return next(ds.batches(1))


def evaluate_split_file(workdir: str, split_file: str, checkpoint: str = 'best',
                        batch_size: Optional[int] = None) -> dict:
  """The task's metrics (CTR: auc / logloss / ne / rows; classification: accuracy / nll / ece /
  rows) of the run's ``checkpoint`` on ``split_file``."""
  config, model, state, data_state = restore_for_inference(workdir, checkpoint)
  data = read_split_file(config.dataset, split_file, data_state)
  task = make_task(config, schema_from_dict(data_state['schema']))
  eval_step = jax.jit(state_lib.make_eval_step(model, task=task))
  return evaluate(eval_step, state, data, batch_size or config.eval_batch_size, task=task)
