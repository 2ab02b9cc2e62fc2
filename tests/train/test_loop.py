"""The training loop: outputs, the BARS plateau/early-stop protocol, and exact resume."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from jaxrec.train.config import base_config
from jaxrec.train import loop
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.writers import read_metrics


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options = ml_collections.ConfigDict(dict(
      num_train=2000, num_valid=600, num_test=600, seed=3, num_sparse=4, num_dense=2,
      max_vocab=50, min_vocab=5))
  c.model = 'deepfm'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(hidden_units=(16,), dropout_rate=0.1))
  c.batch_size = 256
  c.learning_rate = 0.01
  c.eval_batch_size = 500
  c.num_epochs = 3
  c.log_every_steps = 4
  c.checkpoint_every_steps = 5
  c.progress = False
  for k, v in overrides.items():
    c[k] = v
  return c


def test_train_and_evaluate_writes_run_outputs(tmp_path):
  results = loop.train_and_evaluate(tiny_config(), str(tmp_path))
  assert results['epochs_run'] == 3
  assert results['valid']['rows'] == 600 and results['test']['rows'] == 600
  for split in ('valid', 'test'):
    assert 0.5 < results[split]['auc'] <= 1.0
  with open(tmp_path / 'results.json') as f:
    assert json.load(f)['valid'] == results['valid']
  records = read_metrics(str(tmp_path / 'metrics.jsonl'))
  train = [r for r in records if r['split'] == 'train']
  valid = [r for r in records if r['split'] == 'valid']
  assert len(valid) == 3 and [r['epoch'] for r in valid] == [1, 2, 3]
  assert train and all(np.isfinite(r['loss']) and r['examples_per_sec'] > 0 for r in train)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path / 'tb'))
  # The best checkpoint is the epoch with the highest validation AUC, and results score it.
  best_epoch = int(np.argmax([r['auc'] for r in valid])) + 1
  assert results['best_epoch'] == best_epoch
  assert results['valid']['auc'] == pytest.approx(valid[best_epoch - 1]['auc'], abs=1e-12)


def test_plateau_decay_and_early_stop(tmp_path, monkeypatch):
  """Scripted validation AUCs: lr x0.1 on each non-improving epoch, stop after 2 of them."""
  aucs = iter([0.70, 0.80, 0.79, 0.78, 0.99])

  def fake_evaluate(eval_step, state, source, batch_size, desc=None, progress=False, task=None):
    if desc == 'valid':
      return {'auc': next(aucs), 'logloss': 0.5, 'ne': 0.9, 'rows': source.num_rows}
    return {'auc': 0.5, 'logloss': 0.5, 'ne': 1.0, 'rows': source.num_rows}

  monkeypatch.setattr(loop, 'evaluate', fake_evaluate)
  results = loop.train_and_evaluate(tiny_config(num_epochs=10), str(tmp_path))
  assert results['epochs_run'] == 4  # epochs 3 and 4 did not improve -> stop
  assert results['best_epoch'] == 2
  lrs = [r['learning_rate'] for r in read_metrics(str(tmp_path / 'metrics.jsonl'))
         if r['split'] == 'valid']
  np.testing.assert_allclose(lrs, [1e-2, 1e-2, 1e-3, 1e-4], rtol=1e-6)


def test_learning_rate_floor(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, 'evaluate', lambda *a, **k: {'auc': 0.6, 'logloss': 0.5, 'ne': 1.0,
                                                         'rows': 1})
  c = tiny_config(num_epochs=4, early_stop_patience=10, learning_rate=1e-5)
  loop.train_and_evaluate(c, str(tmp_path))
  lrs = [r['learning_rate'] for r in read_metrics(str(tmp_path / 'metrics.jsonl'))
         if r['split'] == 'valid']
  np.testing.assert_allclose(lrs, [1e-5, 1e-6, 1e-6, 1e-6], rtol=1e-6)


class _Killed(Exception):
  pass


def _params_of(workdir, kind='latest'):
  ck = RunCheckpoints(str(workdir))
  c = tiny_config()
  data = loop.load_data(c)
  model = loop.make_model(c, data.schema)
  from jaxrec.train import state as state_lib  # pylint: disable=g-import-not-at-top
  tx = state_lib.make_optimizer(loop.optim_config(c))
  st, _ = state_lib.create_train_state(model, next(data.splits['train'].batches(256)), tx, c.seed)
  out = ck.restore(kind, st)
  ck.close()
  return out


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """The tiny config trained straight through (the reference of every killed run): (results,
  its workdir)."""
  workdir = tmp_path_factory.mktemp('straight')
  return loop.train_and_evaluate(tiny_config(), str(workdir)), workdir


@pytest.mark.parametrize('kill_after_batches', [7, 8, 13])
def test_killed_run_resumes_on_the_same_trajectory(tmp_path, monkeypatch, kill_after_batches,
                                                   straight_run):
  """A run killed mid-epoch (between checkpoints) and restarted ends bit-identical to one that ran
  through: same data order, same dropout keys, same plateau decisions."""
  want, straight = straight_run

  killed = tmp_path / 'killed'
  real_load = loop.load_data

  def load_then_kill(config):
    data = real_load(config)
    train = data.splits['train']
    real_batches = train.batches
    seen = {'n': 0}

    def batches(*args, **kwargs):
      for b in real_batches(*args, **kwargs):
        if seen['n'] == kill_after_batches:
          raise _Killed()
        seen['n'] += 1
        yield b

    monkeypatch.setattr(train, 'batches', batches)
    return data

  monkeypatch.setattr(loop, 'load_data', load_then_kill)
  with pytest.raises(_Killed):
    loop.train_and_evaluate(tiny_config(), str(killed))
  monkeypatch.setattr(loop, 'load_data', real_load)
  got = loop.train_and_evaluate(tiny_config(), str(killed))

  assert got['history'] == want['history']
  assert got['valid'] == want['valid'] and got['test'] == want['test']
  a, b = _params_of(straight), _params_of(killed)
  for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_max_steps_stops_resumably(tmp_path):
  out = loop.train_and_evaluate(tiny_config(max_steps=6), str(tmp_path))
  assert out == {'stopped_at_step': 6}
  state, meta = _params_of(tmp_path)
  assert int(state.step) == 6 and meta['batch'] == 6 and meta['epoch'] == 0


def test_bad_config_is_named(tmp_path):
  with pytest.raises(ValueError, match='config.monitor'):
    loop.train_and_evaluate(tiny_config(monitor='accuracy'), str(tmp_path))
  with pytest.raises(ValueError, match='config.batch_size'):
    loop.train_and_evaluate(tiny_config(batch_size=0), str(tmp_path))
