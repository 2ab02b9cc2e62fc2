"""MoMa's auxiliary-router phase through the one loop: a MoMa decoder trained by expert choice on
the real mixed-modal data (tiny), then forked into ``recipe='aux_router'``: the fork takes the
parameters only (fresh optimizer, step 0), updates the auxiliary routers and nothing else, their
BCE falls, and validation scores causal inference (``routing_mode='causal_inference'``)."""

import json

import jax
import numpy as np
import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import loop
from jaxrec.train.config import aux_router_config, moma_config
from jaxrec.train.evaluation import restore_for_inference
from jaxrec.train.recipes import under_module


def _small(c, data_dir, **overrides):
  c.data_dir = str(data_dir)
  c.model_kwargs.update(num_layers=2, embed_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
  c.dataset_options.mixed_modal.update(seq_len=128, images_per_sequence=1, train_rows=48,
                                       valid_rows=16, text_vocab_size=256, codebook_size=16)
  c.batch_size, c.eval_batch_size = 8, 16
  c.num_epochs = c.early_stop_patience = 1
  c.progress = c.tensorboard = False
  c.log_every_steps = 1
  c.update(overrides)
  return c


def _params(workdir):
  return jax.tree_util.tree_flatten_with_path(restore_for_inference(workdir)[2].params)[0]


@pytest.mark.slow
def test_aux_router_phase_trains_only_the_auxiliary_routers(shared_data, tmp_path):
  main, aux = str(tmp_path / 'main'), str(tmp_path / 'aux')
  loop.train_and_evaluate(_small(moma_config('moma_mod', 'xs'), shared_data), main)
  config = _small(aux_router_config('moma_mod', 'xs'), shared_data, learning_rate=1e-2)
  results = loop.train_and_evaluate(config, aux, fork_from=main)
  assert results['steps'] == 6  # a fresh start: step 0 + one epoch of 48 / 8 rows
  before, after = _params(main), _params(aux)
  assert [p for p, _ in before] == [p for p, _ in after]
  mask = jax.tree.leaves(under_module(restore_for_inference(aux)[2].params, 'aux_router'))
  assert 0 < sum(mask) < len(mask)
  for (path, a), (_, b), trains in zip(before, after, mask):
    if trains:
      assert not np.array_equal(a, b), path
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))  # frozen, bit for bit
  lines = [json.loads(l) for l in open(f'{aux}/metrics.jsonl')]
  train = [l for l in lines if l['split'] == 'train']
  assert train[-1]['aux_router_loss'] < train[0]['aux_router_loss']
  assert 0 <= train[-1]['aux_router_accuracy'] <= 1 and 'task_loss' in train[-1]
  # Validation of the aux run routes causally: not the expert-choice loss of the same weights.
  main_valid = json.load(open(f'{main}/results.json'))['valid']['loss']
  assert abs(results['valid']['loss'] - main_valid) > 1e-6


def test_aux_router_recipe_refuses_models_it_cannot_train(shared_data, tmp_path):
  dense = _small(moma_config('dense', 'xs'), shared_data, recipe='aux_router', max_steps=1)
  with pytest.raises(ConfigError, match='has none'):
    loop.train_and_evaluate(dense, str(tmp_path / 'a'))
  causal = _small(aux_router_config('moma', 'xs'), shared_data, max_steps=1)
  causal.model_kwargs.routing_mode = 'causal'
  with pytest.raises(ConfigError, match='sowed no auxiliary-router terms'):
    loop.train_and_evaluate(causal, str(tmp_path / 'b'))
  with pytest.raises(ValueError, match='no router'):
    aux_router_config('mot', 'xs')
