"""Table features: the 17-bin access histogram against hand-computed values."""

import numpy as np
import pytest

from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.planner import features as F


def test_bins_are_powers_of_two_upper_inclusive():
  # (0, 1] -> 0, (1, 2] -> 1, (2, 4] -> 2, (4, 8] -> 3, ..., (16384, 32768] -> 15, above -> 16.
  counts = [1, 2, 3, 4, 5, 8, 9, 16384, 16385, 32768, 32769, 10 ** 9]
  assert F.count_bins(counts).tolist() == [0, 1, 2, 2, 3, 3, 4, 14, 15, 15, 16, 16]
  with pytest.raises(ValueError, match='>= 1'):
    F.count_bins([0, 1])


def test_histogram_of_a_hand_made_batch():
  # Batch of 4 samples reading ids: 5 x3, 7 x1, 9 x2, 11 x4, 13 x5 -> counts 3, 1, 2, 4, 5.
  ids = np.array([5, 7, 9, 5, 11, 11, 9, 13, 13, 5, 11, 13, 13, 11, 13])
  f = F.from_ids('t', ids, num_samples=4, rows=20, dim=8)
  # Unique ids 5: counts 1 -> bin 0 (id 7); 2 -> bin 1 (id 9); 3, 4 -> bin 2 (ids 5, 11);
  # 5 -> bin 3 (id 13).
  want = np.zeros(17)
  want[[0, 1, 2, 3]] = [1 / 5, 1 / 5, 2 / 5, 1 / 5]
  np.testing.assert_allclose(f.hist, want, atol=1e-12)
  assert f.pooling == 15 / 4 and (f.rows, f.dim, f.name) == (20, 8, 't')
  assert f.num_bytes == 20 * 8 * 4
  v = f.vector()
  assert v.shape == (len(F.FEATURE_LAYOUT),) and F.FEATURE_LAYOUT[:3] == ('rows', 'dim', 'pooling')
  np.testing.assert_allclose(v[:3], [20, 8, 3.75])
  np.testing.assert_allclose(v[3:], want, atol=1e-7)


def test_module_docstring_example():
  f = F.from_ids('t', [5, 5, 5, 7, 9, 9], num_samples=2, rows=10, dim=4)
  np.testing.assert_allclose(f.hist[:3], [1 / 3] * 3)
  assert f.pooling == 3.0


def test_from_stats_and_uniform_access():
  hist = [0.5, 0.5] + [0.0] * 15
  f = F.from_stats('u', 100, 16, 2.0, hist)
  assert f.hist == tuple(hist)
  # Uniform access, many more ids than rows: Poisson(lam) counts, all rows in the bins near lam.
  h = F.uniform_access_hist(rows=100, pooling=1.0, batch_size=6400)  # lam = 64
  assert abs(h.sum() - 1) < 1e-9 and h.argmax() in (6, 7)  # (32, 64] or (64, 128]
  # Few ids per row: mostly read once.
  h = F.uniform_access_hist(rows=10 ** 6, pooling=1.0, batch_size=1000)
  assert h[0] > 0.999
  cfg = EmbeddingBagConfig('c', 500, 8, ('a', 'b'))
  (u,) = F.uniform_features([cfg], pooling=1.5)
  assert (u.rows, u.dim, u.pooling) == (500, 8, 3.0)  # 1.5 ids per feature, 2 features


def test_bad_features_name_the_table():
  with pytest.raises(ValueError, match="table 'x': hist needs 17 bins"):
    F.TableFeatures('x', 10, 4, 1.0, (1.0,))
  with pytest.raises(ValueError, match="table 'x': hist must be >= 0 and sum to 1"):
    F.TableFeatures('x', 10, 4, 1.0, (0.5,) + (0.0,) * 16)
  with pytest.raises(ValueError, match="table 'x': rows must be a positive int"):
    F.TableFeatures('x', 0, 4, 1.0, (1.0,) + (0.0,) * 16)
