"""CTR metrics on the host: exact tie-aware AUC, logloss and normalized entropy.

All functions take numpy arrays and compute in float64. Rows with weight 0 (batch padding) must be
removed by the caller (:func:`ctr_metrics` does it when given ``weight``).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
  order = np.argsort(x, kind='mergesort')
  xs = x[order]
  # Boundaries of runs of equal values.
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], len(xs)]
  run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks_sorted = np.repeat(run_rank, ends - starts)
  ranks = np.empty(len(x), np.float64)
  ranks[order] = ranks_sorted
  return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, exact and tie-aware (a tied positive/negative pair counts 1/2).

  This is the Mann-Whitney U statistic divided by n_pos * n_neg; it equals sklearn's
  ``roc_auc_score``. Raises ValueError when only one class is present.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape} differ in shape')
  pos = labels > 0.5
  n_pos = int(pos.sum())
  n_neg = len(labels) - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f'AUC needs both classes: {n_pos} positives, {n_neg} negatives')
  ranks = _average_ranks(scores)
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
  """Mean binary cross-entropy, computed stably from logits: mean(softplus(z) - y z)."""
  y = np.asarray(labels, np.float64).reshape(-1)
  z = np.asarray(logits, np.float64).reshape(-1)
  return float(np.mean(np.logaddexp(0.0, z) - y * z))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps] (sklearn's convention)."""
  y = np.asarray(labels, np.float64).reshape(-1)
  p = np.clip(np.asarray(probs, np.float64).reshape(-1), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def base_entropy(labels: np.ndarray) -> float:
  """Entropy (nats) of the base rate: the logloss of always predicting mean(labels)."""
  p = float(np.mean(np.asarray(labels, np.float64)))
  if p <= 0.0 or p >= 1.0:
    raise ValueError(f'normalized entropy needs both classes; base rate is {p}')
  return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def normalized_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
  """NE = logloss / entropy of the base rate (He et al., 2014); < 1 beats the base rate."""
  return logloss_from_logits(labels, logits) / base_entropy(labels)


def ctr_metrics(labels: np.ndarray, logits: np.ndarray,
                weight: np.ndarray | None = None) -> dict[str, float]:
  """auc, logloss, ne and rows over the rows with nonzero weight."""
  labels = np.asarray(labels).reshape(-1)
  logits = np.asarray(logits).reshape(-1)
  if weight is not None:
    keep = np.asarray(weight).reshape(-1) > 0
    labels, logits = labels[keep], logits[keep]
  return {'auc': auc(labels, logits), 'logloss': logloss_from_logits(labels, logits),
          'ne': normalized_entropy(labels, logits), 'rows': int(len(labels))}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
  """ECE (Guo et al., 2017): rows binned by confidence (the top class probability) into ``bins``
  equal-width bins of (0, 1]; the row-weighted mean of |accuracy - mean confidence| per bin."""
  labels = np.asarray(labels).reshape(-1)
  probs = np.asarray(probs, np.float64)
  conf = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
  # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur.
  which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
  total = 0.0
  for b in range(bins):
    sel = which == b
    if sel.any():
      total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
  return float(total / max(len(labels), 1))


def classification_metrics(labels: np.ndarray, logits: np.ndarray,
                           weight: np.ndarray | None = None, ece_bins: int = 15
                           ) -> dict[str, float]:
  """accuracy, nll (mean negative log-likelihood, nats), ece and rows over the rows with nonzero
  weight; ``logits`` is ``[rows, classes]``, ``labels`` integer classes ``[rows]``."""
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) != len(labels):
    raise ValueError(f'logits {logits.shape} must be [rows, classes] for {len(labels)} labels')
  if weight is not None:
    keep = np.asarray(weight).reshape(-1) > 0
    labels, logits = labels[keep], logits[keep]
  if len(labels) == 0:
    raise ValueError('classification metrics of zero rows')
  logp = _log_softmax(logits)
  return {'accuracy': float(np.mean(logp.argmax(axis=-1) == labels)),
          'nll': float(-np.mean(logp[np.arange(len(labels)), labels])),
          'ece': expected_calibration_error(labels, np.exp(logp), ece_bins),
          'rows': int(len(labels))}
