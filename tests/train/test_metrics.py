"""Metrics against hand-computed cases and brute-force definitions."""

import itertools

import numpy as np
import pytest

from jaxrec.train import metrics


def brute_force_auc(labels, scores):
  pos = [s for l, s in zip(labels, scores) if l == 1]
  neg = [s for l, s in zip(labels, scores) if l == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auc_hand_cases():
  assert metrics.auc([0, 1], [0.1, 0.9]) == 1.0
  assert metrics.auc([0, 1], [0.9, 0.1]) == 0.0
  assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
  # pos scores {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=.5, (0.4>0.1)=1
  assert metrics.auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4, abs=1e-15)


@pytest.mark.parametrize('seed', range(5))
def test_auc_matches_brute_force_with_many_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 300)
  scores = rng.integers(0, 7, 300).astype(np.float32)  # heavy ties
  assert metrics.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_needs_both_classes():
  with pytest.raises(ValueError, match='both classes'):
    metrics.auc([1, 1], [0.2, 0.3])


def test_logloss_hand_case():
  # -(log 0.8 + log 0.6) / 2 for p = sigmoid(z) = 0.8 (y=1) and 0.4 (y=0)
  z = np.log([0.8 / 0.2, 0.4 / 0.6])
  want = -(np.log(0.8) + np.log(0.6)) / 2
  assert metrics.logloss_from_logits([1, 0], z) == pytest.approx(want, abs=1e-12)
  assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(want, abs=1e-12)


def test_logloss_from_logits_is_stable_for_large_logits():
  assert metrics.logloss_from_logits([1, 0], [800.0, -800.0]) == pytest.approx(0.0, abs=1e-12)
  assert metrics.logloss_from_logits([0], [800.0]) == pytest.approx(800.0, rel=1e-12)


def test_normalized_entropy_hand_case():
  labels = np.array([1, 0, 0, 0])
  p = 0.25
  base = -(p * np.log(p) + (1 - p) * np.log(1 - p))
  # Predicting the base rate everywhere gives NE = 1 exactly.
  z = np.full(4, np.log(p / (1 - p)))
  assert metrics.normalized_entropy(labels, z) == pytest.approx(1.0, abs=1e-12)
  assert metrics.base_entropy(labels) == pytest.approx(base, abs=1e-15)


def test_ctr_metrics_drops_padding_rows():
  labels = np.array([1, 0, 1, 0, 0])
  logits = np.array([2.0, -1.0, 0.5, 3.0, 9.0])
  weight = np.array([1, 1, 1, 1, 0])
  m = metrics.ctr_metrics(labels, logits, weight)
  assert m['rows'] == 4
  assert m['auc'] == pytest.approx(brute_force_auc(labels[:4], logits[:4]), abs=1e-15)
  assert m['logloss'] == pytest.approx(metrics.logloss_from_logits(labels[:4], logits[:4]), abs=1e-15)


def test_classification_metrics_hand_case():
  # Four rows, three classes; the fifth has weight 0 (padding) and is ignored.
  probs = np.array([[0.7, 0.2, 0.1],   # conf 0.7, predicts 0, label 0: right
                    [0.3, 0.6, 0.1],   # conf 0.6, predicts 1, label 2: wrong
                    [0.1, 0.1, 0.8],   # conf 0.8, predicts 2, label 2: right
                    [0.25, 0.5, 0.25],  # conf 0.5, predicts 1, label 1: right
                    [1.0, 0.0, 0.0]])
  labels = np.array([0, 2, 2, 1, 1])
  m = metrics.classification_metrics(labels, np.log(np.maximum(probs, 1e-30)),
                                     np.array([1, 1, 1, 1, 0.0]), ece_bins=5)
  assert m['rows'] == 4
  assert m['accuracy'] == 0.75
  np.testing.assert_allclose(m['nll'], -np.mean(np.log([0.7, 0.1, 0.8, 0.5])), rtol=1e-12)
  # Bins of width 0.2: (0.4, 0.6] holds rows 2 and 4 (conf 0.6, 0.5; accuracy 1/2);
  # (0.6, 0.8] holds rows 1 and 3 (conf 0.7, 0.8; accuracy 1).
  want = (2 * abs(0.5 - 0.55) + 2 * abs(1.0 - 0.75)) / 4
  np.testing.assert_allclose(m['ece'], want, rtol=1e-12)


def test_classification_metrics_checks_shapes():
  with pytest.raises(ValueError, match='classes'):
    metrics.classification_metrics(np.zeros(3), np.zeros(3))
