"""Tests of jaxrec.data.noise.symmetric_label_noise."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrec.data.noise import symmetric_label_noise

N = 100_000


def class_labels(num_classes: int = 10, seed: int = 0, dtype=np.int32) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, num_classes, N).astype(dtype)


@pytest.mark.parametrize('rate', [0.05, 0.2, 0.4])
def test_flip_fraction_and_flipped_rows(rate):
  labels = class_labels()
  noisy, flipped = symmetric_label_noise(labels, rate, 10, seed=1)
  # The flip count is Binomial(100k, rate): std of the fraction <= 0.0016; tolerance 0.01 (6 std).
  assert abs(flipped.mean() - rate) < 0.01
  assert np.all(noisy[flipped] != labels[flipped])
  np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
  assert noisy.min() >= 0 and noisy.max() < 10


def test_replacements_are_uniform_over_the_other_classes():
  labels = class_labels()
  noisy, flipped = symmetric_label_noise(labels, 0.5, 10, seed=2)
  counts = np.zeros((10, 10))
  np.add.at(counts, (labels[flipped], noisy[flipped]), 1)
  assert not np.diag(counts).any()
  expected = counts.sum(axis=1, keepdims=True) / 9  # about 555 per (class, other class)
  off = ~np.eye(10, dtype=bool)
  chi2 = float((((counts - expected) ** 2 / expected)[off]).sum())
  # 10 * (9 - 1) = 80 degrees of freedom: mean 80, std 12.6; the bound is 6 std above the mean.
  assert chi2 < 156, chi2


def test_deterministic_by_seed():
  labels = class_labels()
  a, fa = symmetric_label_noise(labels, 0.3, 10, seed=5)
  b, fb = symmetric_label_noise(labels, 0.3, 10, seed=5)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(fa, fb)
  c, fc = symmetric_label_noise(labels, 0.3, 10, seed=6)
  assert not np.array_equal(fa, fc) and not np.array_equal(a, c)
  # Row i's decision depends on the seed and the row count only, not on the labels.
  _, f_other = symmetric_label_noise(class_labels(seed=9), 0.3, 10, seed=5)
  np.testing.assert_array_equal(f_other, fa)


def test_binary_ctr_labels_keep_dtype():
  labels = np.random.default_rng(0).integers(0, 2, N).astype(np.float32)
  noisy, flipped = symmetric_label_noise(labels, 0.1, 2, seed=3)
  assert noisy.dtype == np.float32 and flipped.dtype == bool and noisy.shape == labels.shape
  np.testing.assert_array_equal(noisy, np.where(flipped, 1.0 - labels, labels))
  assert abs(flipped.mean() - 0.1) < 0.01


@pytest.mark.parametrize('dtype', [np.int32, np.int64, np.uint8, np.float32])
def test_dtype_and_shape_preserved(dtype):
  labels = class_labels(num_classes=5, dtype=dtype).reshape(1000, 100)
  noisy, flipped = symmetric_label_noise(labels, 0.25, 5, seed=4)
  assert noisy.dtype == labels.dtype and noisy.shape == flipped.shape == (1000, 100)
  assert np.all(noisy[flipped] != labels[flipped])


def test_zero_rate_is_the_identity():
  labels = class_labels()
  noisy, flipped = symmetric_label_noise(labels, 0.0, 10, seed=0)
  np.testing.assert_array_equal(noisy, labels)
  assert not flipped.any()


def test_bad_arguments():
  labels = class_labels()
  for rate in (-0.1, 1.0, 1.5, float('nan')):
    with pytest.raises(ValueError, match='rate must be in'):
      symmetric_label_noise(labels, rate, 10, seed=0)
  for k in (1, 0):
    with pytest.raises(ValueError, match='num_classes must be an integer >= 2'):
      symmetric_label_noise(labels, 0.1, k, seed=0)
  with pytest.raises(ValueError, match=r'labels\[3\] = 10 is not a class id in \[0, 10\)'):
    symmetric_label_noise(np.array([0, 1, 2, 10]), 0.1, 10, seed=0)
  with pytest.raises(ValueError, match=r'labels\[0, 1\] = 0.5 is not a class id'):
    symmetric_label_noise(np.array([[0.0, 0.5]], np.float32), 0.1, 2, seed=0)
  with pytest.raises(ValueError, match=r'labels\[0\] = -1'):
    symmetric_label_noise(np.array([-1, 1]), 0.1, 2, seed=0)
