"""Tests of the synthetic CTR generator (jaxrec/data/synthetic.py)."""

import dataclasses
import importlib.util
import itertools
import json

import numpy as np
import pytest

from jaxrec.data import synthetic
from jaxrec.data.dataset import num_batches
from jaxrec.data.schema import FeatureSchema
from jaxrec.data.synthetic import SyntheticConfig, SyntheticSource, make_splits, zipf_ranks
from jaxrec.train import metrics

# Small and fast; chunk_size 256 makes batches straddle chunks.
SMALL = SyntheticConfig(num_sparse=6, num_dense=3, num_multi_hot=2, multi_hot_max_length=4,
                        max_vocab=300, min_vocab=5, num_triples=6, num_quadruples=6,
                        chunk_size=256, calibration_rows=4096)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
  """Mann-Whitney AUC (scores here are continuous, so ties do not arise)."""
  ranks = np.empty(len(score))
  ranks[np.argsort(score, kind='stable')] = np.arange(1, len(score) + 1)
  pos = y == 1
  n1, n0 = pos.sum(), (~pos).sum()
  return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _rows(batches):
  """The real rows of a list of batches, sorted into a canonical order."""
  keep = np.concatenate([b['weight'] for b in batches]) > 0
  cat = {k: np.concatenate([b[k] for b in batches])[keep] for k in batches[0]}
  order = np.lexsort(cat['dense'].T[::-1])  # dense values are continuous: a unique key per row
  return {k: v[order] for k, v in cat.items()}


@pytest.fixture(scope='module')
def small():
  return make_splits(SMALL, num_train=1000, num_valid=700, num_test=300)


def test_vocab_power_law_and_schema():
  c = SyntheticConfig(num_sparse=4, num_multi_hot=2, max_vocab=1000, min_vocab=300,
                      vocab_exponent=1.0, num_dense=2)
  assert c.vocab_sizes() == (1000, 500, 333, 300, 300, 300)
  s = c.schema()
  assert [f.name for f in s.sparse] == ['C1', 'C2', 'C3', 'C4', 'M1', 'M2']
  assert s.dense == ('I1', 'I2')
  assert s.num_sparse == 4 and s.num_multi_hot == 2
  assert s.max_multi_hot_length == c.multi_hot_max_length
  default = SyntheticConfig()
  assert default.schema().num_sparse == 26 and default.schema().num_dense == 13
  assert SyntheticConfig(**dataclasses.asdict(default)) == default
  assert default.num_vectors == 27 and default.num_tuples(3) == default.num_tuples(4) == 16
  few = SyntheticConfig(num_sparse=4, num_dense=0)  # 4 vectors: 4 triples, 1 quadruple
  assert (few.num_tuples(3), few.num_tuples(4)) == (4, 1)


def test_same_seed_same_data_and_other_seed_differs(small):
  again = SyntheticSource(SMALL, 'train', 1000)  # a freshly built teacher
  _assert_batches_equal(list(small['train'].batches(128)), list(again.batches(128)))
  other = SyntheticSource(dataclasses.replace(SMALL, seed=1), 'train', 1000)
  a, b = next(small['train'].batches(512)), next(other.batches(512))
  assert (a['sparse'] != b['sparse']).mean() > 0.5
  assert not np.array_equal(a['label'], b['label'])
  assert not np.array_equal(small['train'].teacher.embedding, other.teacher.embedding)


def test_splits_are_distinct_streams_and_prefix_stable(small):
  train, valid = small['train'].chunk(0), small['valid'].chunk(0)
  assert not np.array_equal(train['dense'], valid['dense'])
  assert small['train'].teacher is small['valid'].teacher
  short = SyntheticSource(SMALL, 'train', 300, teacher=small['train'].teacher)
  full = small['train'].materialize().arrays()
  part = short.materialize().arrays()
  for k in part:
    np.testing.assert_array_equal(part[k], full[k][:300], err_msg=k)


@pytest.mark.parametrize('shuffle', [False, True])
@pytest.mark.parametrize('batch_size', [100, 256, 1000, 4096])
def test_resume_equals_tail_of_full_pass(small, shuffle, batch_size):
  src = small['train']
  full = list(src.batches(batch_size, shuffle=shuffle, seed=3, epoch=2))
  assert len(full) == num_batches(1000, batch_size)
  for b in full:
    assert all(len(v) == batch_size for v in b.values())
  for start in range(len(full) + 1):
    tail = list(src.batches(batch_size, shuffle=shuffle, seed=3, epoch=2, start=start))
    _assert_batches_equal(tail, full[start:])


def test_resume_skips_chunks_without_generating_them(small, monkeypatch):
  src = small['train']
  made = []
  real_chunk = src.chunk
  monkeypatch.setattr(src, 'chunk', lambda i: made.append(i) or real_chunk(i))
  list(src.batches(100, start=6))  # rows 600.. live in chunks 2 and 3
  assert made == [2, 3]
  made.clear()
  list(src.batches(100))
  assert made == [0, 1, 2, 3]  # each chunk generated once in a sequential pass


def test_shuffle_covers_each_row_exactly_once_per_epoch(small):
  src = small['train']
  plain = _rows(list(src.batches(128)))
  assert len(plain['label']) == 1000
  assert len(np.unique(plain['dense'][:, 0])) == 1000
  orders = []
  for epoch in (0, 1):
    batches = list(src.batches(96, shuffle=True, seed=7, epoch=epoch))
    assert sum(b['weight'].sum() for b in batches) == 1000
    got = _rows(batches)
    for k in plain:
      np.testing.assert_array_equal(got[k], plain[k], err_msg=k)
    orders.append(np.concatenate([b['dense'][:, 0] for b in batches]))
  assert not np.array_equal(orders[0], orders[1])
  again = np.concatenate([b['dense'][:, 0] for b in src.batches(96, shuffle=True, seed=7, epoch=0)])
  np.testing.assert_array_equal(again, orders[0])
  unshuffled = np.concatenate([b['dense'][:, 0] for b in src.batches(96)])
  assert not np.array_equal(orders[0], unshuffled)


def test_ids_within_vocab_and_materialize_matches_batches(small):
  src = small['valid']
  data = src.materialize()  # ArrayDataset validates ids, bag lengths and labels
  assert data.num_rows == 700
  sizes = np.array(src.schema.vocab_sizes)
  assert (data.sparse >= 0).all() and (data.sparse < sizes[None, :SMALL.num_sparse]).all()
  rows = _rows(list(src.batches(256)))
  mat = _rows([dict(data.arrays(), weight=np.ones(700, np.float32))])
  for k in rows:
    np.testing.assert_array_equal(rows[k], mat[k], err_msg=k)
  with pytest.raises(ValueError, match='max_rows'):
    src.materialize(max_rows=10)


@pytest.mark.parametrize('s', [1.0, 1.3])
def test_zipf_sampler_matches_pmf(s):
  vocab = np.array([3, 20, 200])
  ranks = zipf_ranks(np.random.default_rng(0), vocab, 100_000, s)
  for j, n in enumerate(vocab):
    assert ranks[:, j].min() >= 0 and ranks[:, j].max() < n
    pmf = np.arange(1, n + 1, dtype=np.float64) ** -s
    pmf /= pmf.sum()
    freq = np.bincount(ranks[:, j], minlength=n) / len(ranks)
    sigma = np.sqrt(pmf * (1 - pmf) / len(ranks))
    assert (np.abs(freq - pmf) < 5 * sigma + 1e-12).all(), (n, np.max(np.abs(freq - pmf) / sigma))


def test_zipf_skew_of_ids_with_permuted_hot_ids(small):
  data = small['train'].materialize()
  counts = np.bincount(data.sparse[:, 0], minlength=300)
  top = np.sort(counts)[::-1]
  assert top[0] > 20 * np.median(counts)
  assert top[:10].sum() > 0.35 * counts.sum()  # 10 of 300 ids hold over a third of the rows
  hottest = [int(np.argmax(np.bincount(data.sparse[:, j]))) for j in range(SMALL.num_sparse)]
  assert hottest != [0] * SMALL.num_sparse  # ranks go through a random permutation
  teacher = small['train'].teacher
  np.testing.assert_array_equal(np.sort(teacher.rank_to_id[:300]), np.arange(300))


def test_multi_hot_bags_valid(small):
  data = small['train'].materialize()
  ids, lengths, weights = data.multi_hot_ids, data.multi_hot_lengths, data.multi_hot_weights
  length = SMALL.multi_hot_max_length
  assert ids.shape == (1000, 2, length) and lengths.shape == (1000, 2)
  assert lengths.min() == 0 and lengths.max() == length
  assert set(np.unique(lengths)) == set(range(length + 1))
  valid = np.arange(length)[None, None, :] < lengths[:, :, None]
  np.testing.assert_array_equal(weights, valid.astype(np.float32))
  assert (ids[~valid] == 0).all()
  for j, f in enumerate(small['train'].schema.multi_hot_fields):
    assert (ids[:, j][valid[:, j]] < f.vocab_size).all() and (ids >= 0).all()


def test_teacher_components_match_brute_force(small):
  teacher = small['train'].teacher
  batch = next(small['train'].batches(64))
  comps = teacher.components(batch)
  # Reference: per-row loops over fields.
  s = SMALL.num_sparse
  vec = np.zeros((64, s + SMALL.num_multi_hot + 1, SMALL.teacher_dim))  # fields, then dense
  first = np.zeros(64)
  for r in range(64):
    for f in range(s):
      g = teacher.offsets[f] + batch['sparse'][r, f]
      vec[r, f], first[r] = teacher.embedding[g], first[r] + teacher.first_order[g]
    for j in range(SMALL.num_multi_hot):
      n = batch['multi_hot_lengths'][r, j]
      g = teacher.offsets[s + j] + batch['multi_hot_ids'][r, j, :n]
      if n:
        vec[r, s + j] = teacher.embedding[g].mean(axis=0)
        first[r] += teacher.first_order[g].mean()
    vec[r, -1] = batch['dense'][r] @ teacher.dense_projection
  np.testing.assert_allclose(comps['order1'], first, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(comps['dense'], batch['dense'] @ teacher.dense_weight, rtol=1e-5,
                             atol=1e-5)
  fm = sum((vec[:, a] * vec[:, b]).sum(axis=1)
           for a, b in itertools.combinations(range(vec.shape[1]), 2))
  np.testing.assert_allclose(comps['order2'], fm, rtol=1e-5, atol=1e-4)
  for name, tuples in (('order3', teacher.triples), ('order4', teacher.quadruples)):
    ref = sum(np.prod(vec[:, list(t)], axis=1).sum(axis=1) for t in tuples)
    np.testing.assert_allclose(comps[name], ref, rtol=1e-5, atol=1e-4)


def test_click_probability_quadrature_matches_numeric_integral():
  c = SyntheticConfig(num_sparse=2, num_dense=0, max_vocab=10, num_triples=0, num_quadruples=0,
                      logit_noise_std=0.8, label_flip_rate=0.1, calibration_rows=256)
  logit = np.array([-6.0, -1.5, 0.0, 0.3, 2.0, 7.0])
  z = np.linspace(-12, 12, 200_001)
  density = np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
  ref = [np.trapezoid(density / (1 + np.exp(-(l + 0.8 * z))), z) for l in logit]
  ref = 0.1 + 0.8 * np.array(ref)
  np.testing.assert_allclose(synthetic._click_probability(logit, c), ref, rtol=1e-7, atol=1e-9)


def test_bias_solves_positive_rate_exactly():
  c = dataclasses.replace(SMALL, logit_noise_std=0.5, label_flip_rate=0.02, positive_rate=0.1)
  logit = np.random.default_rng(0).normal(0.7, 2.0, 5000)
  b = synthetic._solve_bias(logit, c)
  assert abs(synthetic._click_probability(logit + b, c).mean() - 0.1) < 1e-9


@pytest.mark.parametrize('kw', [{}, {'logit_noise_std': 0.7, 'label_flip_rate': 0.05,
                                     'positive_rate': 0.4}])
def test_positive_rate_and_label_calibration(kw):
  c = dataclasses.replace(SMALL, num_multi_hot=0, chunk_size=4096, **kw)
  src = SyntheticSource(c, 'test', 40_000)
  batches = list(src.batches(8192))
  y = np.concatenate([b['label'] for b in batches])[:40_000]
  p = np.concatenate([src.teacher_probability(b) for b in batches])[:40_000]
  assert abs(y.mean() - c.positive_rate) < 0.015
  assert abs(p.mean() - c.positive_rate) < 0.01
  assert p.min() >= c.label_flip_rate and p.max() <= 1 - c.label_flip_rate
  for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0)):  # labels follow the teacher probability
    sel = (p >= lo) & (p < hi)
    assert sel.sum() > 1000
    assert abs(y[sel].mean() - p[sel].mean()) < 4 * np.sqrt(0.25 / sel.sum())


def test_teacher_logit_is_the_log_odds_of_the_true_probability(monkeypatch):
  """The Bayes-optimal score: the finite log-odds of teacher_probability, so it ranks and scores
  as the true probability does (also with logit noise and label flips)."""
  c = dataclasses.replace(SMALL, logit_noise_std=0.5, label_flip_rate=0.02)
  src = SyntheticSource(c, 'valid', 3000)
  batch = next(src.batches(3000))
  p, z = src.teacher_probability(batch), src.teacher_logit(batch)
  assert z.dtype == np.float64 and z.shape == (3000,)
  np.testing.assert_allclose(1 / (1 + np.exp(-z)), p, rtol=1e-12, atol=1e-15)
  assert metrics.auc(batch['label'], z) == metrics.auc(batch['label'], p)
  assert metrics.logloss_from_logits(batch['label'], z) == pytest.approx(
      metrics.logloss(batch['label'], p, eps=1e-12), rel=1e-12)
  monkeypatch.setattr(src, 'teacher_probability', lambda b: np.array([0.0, 1.0]))
  assert np.isfinite(src.teacher_logit(batch)).all()  # a saturated probability stays finite


def _first_order_design(src, arrays):
  """One-hot ids, dense features and an intercept: ``[rows, total_vocab + num_dense + 1]``."""
  n, vocab = len(arrays['label']), int(src.teacher.vocab.sum())
  x = np.zeros((n, vocab + src.schema.num_dense + 1))
  x[np.arange(n)[:, None], src.teacher.offsets[None, :] + arrays['sparse']] = 1.0
  x[:, vocab:-1] = arrays['dense']
  x[:, -1] = 1.0
  return x


def _fit_logistic_regression(x, y, l2=1.0, steps=8):
  w = np.zeros(x.shape[1])
  for _ in range(steps):  # Newton's method on the L2-regularised log-likelihood
    p = 1 / (1 + np.exp(-x @ w))
    hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
    w -= np.linalg.solve(hess, x.T @ (p - y) + l2 * w)
  return w


def test_teacher_has_high_order_signal():
  """Logistic regression on first-order features stays far below the teacher, unless the teacher
  is itself first order (the control), where it comes close to the teacher."""
  base = SyntheticConfig(num_sparse=8, num_dense=2, max_vocab=50, min_vocab=5, teacher_dim=4,
                         num_triples=8, num_quadruples=8, chunk_size=8192, calibration_rows=8192)
  gaps = {}
  for name, kw in (('full', {}),
                   ('first_order', dict(weight_order2=0.0, weight_order3=0.0, weight_order4=0.0))):
    splits = make_splits(dataclasses.replace(base, **kw), 24_000, 16_000, 0)
    train, valid = splits['train'].materialize().arrays(), splits['valid'].materialize().arrays()
    w = _fit_logistic_regression(_first_order_design(splits['train'], train), train['label'])
    lr_auc = _auc(valid['label'], _first_order_design(splits['valid'], valid) @ w)
    teacher_auc = _auc(valid['label'], splits['valid'].teacher_probability(valid))
    gaps[name] = teacher_auc - lr_auc
  assert gaps['first_order'] < 0.015, gaps
  assert gaps['full'] > 0.1, gaps


def test_memory_cap_error_names_the_field():
  with pytest.raises(ValueError, match=r"largest field 'C1' \(vocab 10,000,000\)"):
    SyntheticConfig(max_vocab=10_000_000, max_teacher_bytes=1 << 28)
  with pytest.raises(ValueError, match="'M1' \\(vocab 1,000\\)"):
    SyntheticConfig(num_sparse=0, num_multi_hot=2, max_vocab=1000, max_teacher_bytes=50_000)
  SyntheticConfig(num_sparse=0, num_multi_hot=2, max_vocab=1000, max_teacher_bytes=60_000)


@pytest.mark.parametrize('kw, match', [
    ({'positive_rate': 0.95, 'label_flip_rate': 0.1}, 'positive_rate'),
    ({'num_sparse': 3, 'num_dense': 0, 'num_quadruples': 2}, 'num_quadruples'),
    ({'zipf_exponent': 0.0}, 'zipf_exponent'),
    ({'vocab_exponent': -1.0}, 'vocab_exponent'),
    ({'max_vocab': 5, 'min_vocab': 6}, 'max_vocab'),
    ({'num_sparse': 0}, 'at least one sparse field'),
])
def test_bad_config_raises(kw, match):
  with pytest.raises(ValueError, match=match):
    SyntheticConfig(**kw)


def test_bad_batches_arguments_raise(small):
  with pytest.raises(ValueError, match='start'):
    list(small['test'].batches(100, start=4))
  with pytest.raises(ValueError, match='batch_size'):
    list(small['test'].batches(0))
  with pytest.raises(ValueError, match='split'):
    SyntheticSource(SMALL, 'training', 10)


@pytest.mark.skipif(importlib.util.find_spec('jaxrec.data.tabular') is None,
                    reason='jaxrec.data.tabular (LoadedDataset) not present')
def test_load_returns_loaded_dataset_rebuildable_from_state():
  ds = synthetic.load(num_train=600, num_valid=200, num_test=100, num_sparse=4, num_dense=2,
                      max_vocab=100, chunk_size=512, calibration_rows=1024)
  assert ds.name == 'synthetic' and set(ds.splits) == {'train', 'valid', 'test'}
  assert ds.splits['valid'].num_rows == 200 and ds.schema == ds.splits['train'].schema
  assert ds.splits['train'].config.num_sparse == 4
  state = json.loads(json.dumps(ds.state))  # JSON-serialisable
  again = synthetic.from_state(state)
  for split in ('train', 'test'):
    _assert_batches_equal(list(ds.splits[split].batches(256)),
                          list(again.splits[split].batches(256)))
  assert FeatureSchema.from_dict(state['schema']) == ds.schema
  with pytest.raises(ValueError, match='unknown options'):
    synthetic.load(num_fields=3)
  with pytest.raises(ValueError, match='no split files'):
    synthetic.read_file('valid.csv', state)
  with pytest.raises(ValueError, match='synthetic'):
    synthetic.from_state({**state, 'dataset': 'criteo'})
