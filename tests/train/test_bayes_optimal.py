"""The loop reports the synthetic data's Bayes-optimal metrics beside the model's."""

import json

import ml_collections
import numpy as np
import pytest

from jaxrec.data import synthetic
from jaxrec.train import loop
from jaxrec.train.config import base_config
from jaxrec.train.metrics import ctr_metrics
from jaxrec.train.writers import read_metrics

DATA = dict(seed=3, num_sparse=4, num_dense=2, max_vocab=50, min_vocab=5)
ROWS = dict(num_train=1024, num_valid=600, num_test=500)


def _config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options = ml_collections.ConfigDict(dict(ROWS, **DATA))
  c.model = 'lr'
  c.embedding_dim = 4
  c.batch_size = 256
  c.eval_batch_size = 256  # valid and test end in a padded batch
  c.learning_rate = 0.01
  c.num_epochs = 1
  c.progress = False
  c.tensorboard = False
  return c


def _true_metrics(source: synthetic.SyntheticSource) -> dict:
  """ctr_metrics of the true click probabilities of every row, computed without the loop."""
  arrays = source.materialize().arrays()
  p = source.teacher_probability(arrays)
  return ctr_metrics(arrays['label'], np.log(p) - np.log1p(-p))


def test_results_hold_bayes_optimal_metrics_of_the_true_probabilities(tmp_path, capsys):
  results = loop.train_and_evaluate(_config(), str(tmp_path))
  splits = synthetic.make_splits(synthetic.SyntheticConfig(**DATA), **ROWS)
  for split in ('valid', 'test'):
    got, want = results[f'bayes_optimal_{split}'], _true_metrics(splits[split])
    assert got['rows'] == want['rows'] == ROWS[f'num_{split}']
    for k in ('auc', 'logloss', 'ne'):
      assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (split, k)
    assert got['auc'] > results[split]['auc']  # one epoch of LR is far from the teacher
  with open(tmp_path / 'results.json') as f:
    assert json.load(f)['bayes_optimal_valid'] == pytest.approx(results['bayes_optimal_valid'])
  final = [r for r in read_metrics(str(tmp_path / 'metrics.jsonl')) if r['split'] == 'final']
  want = results['bayes_optimal_valid']['auc']
  assert final[-1]['bayes_optimal_valid_auc'] == pytest.approx(want)
  best_line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('best checkpoint:')]
  assert '"bayes_optimal_valid"' in best_line[-1]


def test_data_without_a_teacher_reports_no_bayes_optimal(tmp_path, monkeypatch):
  monkeypatch.delattr(synthetic.SyntheticSource, 'teacher_logit')
  results = loop.train_and_evaluate(_config(), str(tmp_path))
  assert 'valid' in results and not any(k.startswith('bayes_optimal') for k in results)
