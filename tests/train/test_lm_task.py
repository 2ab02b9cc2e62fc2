"""The language-model task: its losses and metrics against numpy references, its place in
``task_for``, and a mixed-modal decoder LM trained through the one loop on the real data (tiny),
resumed exactly after a stop."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.schema import FeatureSchema, SequenceSchema, one_hot_schema
from jaxrec.errors import ConfigError
from jaxrec.train import loop
from jaxrec.train.config import mixed_modal_config
from jaxrec.train.tasks import LanguageModelTask, task_for

SCHEMA = SequenceSchema(seq_len=16, images_per_sequence=1, text_vocab_size=19, codebook_size=16,
                        image_height=8, image_width=8, patch_size=4)


def _batch(rows=5, length=6, vocab=11, seed=0):
  r = np.random.default_rng(seed)
  return (r.normal(size=(rows, length, vocab)).astype(np.float32),
          {'label': r.integers(0, vocab, (rows, length)).astype(np.int32),
           'target_modality': r.integers(0, 2, (rows, length)).astype(np.int32),
           'loss_mask': (r.random((rows, length)) > 0.2).astype(np.float32),
           'weight': np.array([1, 1, 1, 1, 0], np.float32)[:rows]})


def _nll(logits, label):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, label[..., None], -1)[..., 0]


def test_row_loss_is_the_masked_mean_token_nll():
  logits, batch = _batch()
  nll = _nll(logits.astype(np.float64), batch['label'])
  want = (nll * batch['loss_mask']).sum(1) / batch['loss_mask'].sum(1)
  got = LanguageModelTask().row_loss(jnp.asarray(logits), batch)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  smooth = LanguageModelTask().smoothed_row_loss(jnp.asarray(logits), batch, 0.0)
  np.testing.assert_allclose(smooth, want, rtol=1e-5)


def test_metrics_per_modality_skip_padding_rows():
  logits, batch = _batch()
  task = LanguageModelTask()
  stats = np.asarray(task.eval_outputs(jnp.asarray(logits), batch))
  assert stats.shape == (5, 4)
  m = task.metrics(batch['label'], stats, batch['weight'])
  nll = _nll(logits.astype(np.float64), batch['label'])
  keep = (batch['loss_mask'] > 0) & (batch['weight'][:, None] > 0)
  for i, name in enumerate(('text', 'image')):
    sel = keep & (batch['target_modality'] == i)
    assert m[f'{name}_tokens'] == sel.sum()
    np.testing.assert_allclose(m[f'{name}_loss'], nll[sel].mean(), rtol=1e-5)
    np.testing.assert_allclose(m[f'{name}_ppl'], np.exp(nll[sel].mean()), rtol=1e-5)
  np.testing.assert_allclose(m['loss'], nll[keep].mean(), rtol=1e-5)
  assert m['rows'] == 4 and m['tokens'] == keep.sum()
  train = task.train_metrics(jnp.asarray(logits), batch)
  np.testing.assert_allclose(train['image_loss'], m['image_loss'], rtol=1e-5)
  assert task.monitor_value(m, 'text_loss') == -m['text_loss']
  with pytest.raises(ValueError, match=r'must be \[rows, 4\]'):
    task.metrics(batch['label'], stats[:, :3], batch['weight'])


def test_task_for_sequences():
  assert isinstance(task_for(SCHEMA), LanguageModelTask)
  assert task_for(SCHEMA, 'lm').modality_names == ('text', 'image')
  with pytest.raises(ConfigError, match='config.task=lm needs a token-sequence dataset'):
    task_for(one_hot_schema(['a'], [4]), 'lm')
  with pytest.raises(ConfigError, match='config.task=classification needs an image dataset'):
    task_for(SCHEMA, 'classification')
  with pytest.raises(ConfigError, match=r"does not take \['ece_bins'\]"):
    task_for(SCHEMA, 'lm', {'ece_bins': 3})
  assert isinstance(one_hot_schema(['a'], [4]), FeatureSchema)


@pytest.fixture(scope='module')
def lm_cache(tmp_path_factory):
  """One BPE / codebook cache for the module's runs (keyed by their options)."""
  return str(tmp_path_factory.mktemp('lm_cache'))


def _config(untie, workdir_data, cache_dir, **overrides):
  c = mixed_modal_config(untie, 'xs')
  c.data_dir = str(workdir_data)
  c.dataset_options.mixed_modal.cache_dir = cache_dir
  c.model_kwargs.update(num_layers=1, embed_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
  opts = c.dataset_options.mixed_modal
  opts.update(seq_len=128, images_per_sequence=1, train_rows=48, valid_rows=16,
              text_vocab_size=256, codebook_size=16)
  c.batch_size, c.eval_batch_size, c.num_epochs = 8, 16, 2
  c.early_stop_patience = 2
  c.progress = c.tensorboard = False
  c.log_every_steps, c.checkpoint_every_steps = 2, 4
  c.update(overrides)
  return c


@pytest.mark.slow
def test_mot_lm_trains_and_resumes_exactly(shared_data, tmp_path, lm_cache):
  untie = 'mot'  # the dense model trains through the same loop in docs/mot.md's doc check
  full = loop.train_and_evaluate(_config(untie, shared_data, lm_cache), str(tmp_path / 'full'))
  v = full['valid']
  assert set(v) >= {'loss', 'ppl', 'text_loss', 'image_loss', 'text_ppl', 'image_ppl', 'tokens'}
  assert v['tokens'] == 16 * 128 and v['image_tokens'] == 16 * 49
  assert full['steps'] == 12
  lines = [json.loads(l) for l in open(tmp_path / 'full' / 'metrics.jsonl')]
  train = [l for l in lines if l['split'] == 'train']
  assert train and all('text_loss' in l and 'image_loss' in l for l in train)
  assert train[-1]['loss'] < train[0]['loss']  # it learns
  # Stopped after 5 steps (mid-epoch), then resumed: the same results.
  part = str(tmp_path / 'part')
  loop.train_and_evaluate(_config(untie, shared_data, lm_cache, max_steps=5), part)
  resumed = loop.train_and_evaluate(_config(untie, shared_data, lm_cache), part)
  np.testing.assert_allclose(resumed['valid']['loss'], v['loss'], rtol=1e-6)
  assert os.path.exists(os.path.join(part, 'dataset_state.json'))


def test_lm_refuses_shard_map_and_table_plans(shared_data, tmp_path, lm_cache):
  c = _config('mot', shared_data, lm_cache)
  c.sharding.strategy, c.sharding.implementation = 'FULL_SHARD', 'shard_map'
  with pytest.raises(ConfigError, match='shard_map'):
    loop.train_and_evaluate(c, str(tmp_path / 'a'))
  c = _config('mot', shared_data, lm_cache)
  c.embedding.plan = 'row_wise'
  with pytest.raises(ConfigError, match='sharded tables'):
    loop.train_and_evaluate(c, str(tmp_path / 'b'))
  with pytest.raises(ConfigError, match="'loss'"):
    loop.train_and_evaluate(_config('none', shared_data, lm_cache, monitor='auc'),
                            str(tmp_path / 'c'))
