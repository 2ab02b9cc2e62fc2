"""Synthetic CTR data from a planted teacher: jaxrec's embedded default dataset.

The generator draws rows of a Criteo-like layout (``num_sparse`` one-hot fields, optional multi-hot
fields, ``num_dense`` standardised dense features) and labels them with a fixed random *teacher*
whose logit mixes interactions of order 1 to 4, so models that capture higher-order interactions
keep gaining where simple ones flatten:

  * field ``i`` (schema order: one-hot fields, then multi-hot ones) has
    ``vocab_i = clip(round(max_vocab * (i + 1) ** -vocab_exponent), min_vocab, max_vocab)`` ids;
  * ids are Zipf distributed: rank ``k`` (1-based) has probability ``∝ k ** -zipf_exponent`` and
    is mapped to an id through a fixed random permutation per field (hot ids are not 0, 1, 2...);
    a multi-hot bag has a uniform length in ``[0, multi_hot_max_length]`` and Zipf ids;
  * the teacher gives each (field, id) a ``teacher_dim`` embedding and a first-order weight
    (``N(0, 1)`` entries); a multi-hot bag's vector and weight are the means over its ids (zero when
    empty); the dense features add one more vector ``dense @ P`` and a linear term;
  * logit components, over the teacher vectors ``v_f`` (``[F', batch, teacher_dim]``, ``F'`` =
    fields plus the dense vector): ``order1`` = sum of first-order weights, ``dense`` = linear in
    dense, ``order2`` = ``sum_{f<g} <v_f, v_g>`` (a full FM), ``order3`` / ``order4`` = sums over a
    fixed random set (16 by default) of vector triples / quadruples of ``sum_k prod_j v_{f_j}[k]``;
  * ``logit = bias + sum_c weight_c * component_c / std_c`` where ``std_c`` is measured on a
    calibration sample (so ``weight_c`` is the standard deviation of that component's contribution)
    and ``bias`` makes the mean click probability equal ``positive_rate``;
  * ``P(click) = flip + (1 - 2 flip) * E[sigmoid(logit + logit_noise_std * N(0, 1))]``
    (Gauss-Hermite quadrature), and ``label = uniform < P(click)``;
    :meth:`SyntheticSource.teacher_probability` gives this exact probability and
    :meth:`SyntheticSource.teacher_logit` its log-odds, so studies and the training loop report
    the Bayes-optimal logloss / AUC beside a model's.

Rows are generated in chunks of ``chunk_size``; chunk ``c`` of a split is a pure function of
``(config, split, c)`` (never of ``num_rows``: a shorter split is a prefix of a longer one), so
millions of rows stream without being held. The teacher tables are the only large state:
``sum_i vocab_i * (4 * teacher_dim + 8)`` bytes, capped by ``max_teacher_bytes``.

Example::

  splits = make_splits(SyntheticConfig(), num_train=1_000_000, num_valid=100_000, num_test=100_000)
  for batch in splits['train'].batches(4096, shuffle=True, seed=0, epoch=0):
    ...
  p = splits['valid'].teacher_probability(batch)   # [4096], the true click probability
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterator, Optional

import numpy as np

from jaxrec.data.dataset import ArrayDataset, Batch, num_batches, pad_batch
from jaxrec.data.schema import FeatureSchema, SparseField

SPLITS = ('train', 'valid', 'test')
DOWNLOAD_URLS: tuple[str, ...] = ()  # nothing to download: the data is generated
_CALIBRATION_SPLIT = len(SPLITS)
# Seed-sequence domains (second entry), so tables, chunks and shuffles never share a stream.
_TEACHER, _TABLE, _CHUNK, _ORDER, _WITHIN = 0, 1, 2, 3, 4
_COMPONENTS = ('order1', 'dense', 'order2', 'order3', 'order4')
_GAUSS_HERMITE_POINTS = 32
_PROBABILITY_EPS = 1e-12  # clip of the true probability in teacher_logit


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What the generator draws; every field is a plain scalar (``dataclasses.asdict`` round-trips).

  Attributes:
    seed: the data seed (teacher and rows).
    num_sparse: number of one-hot fields (named C1, C2, ...).
    num_dense: number of dense features (named I1, I2, ...), standard normal.
    num_multi_hot: number of multi-hot fields (named M1, M2, ...).
    multi_hot_max_length: padded bag length of the multi-hot fields (lengths uniform in 0..max).
    min_vocab, max_vocab, vocab_exponent: the power law of the vocab sizes (module docstring).
    zipf_exponent: Zipf exponent of the ids (> 0).
    teacher_dim: dimension of the teacher embeddings.
    num_triples, num_quadruples: number of distinct random triples / quadruples of teacher
      vectors; None: 16, or all of them when there are fewer (see :meth:`num_tuples`).
    weight_order1, weight_dense, weight_order2, weight_order3, weight_order4: logit standard
      deviation contributed by each component (0 switches it off).
    positive_rate: target mean click probability.
    logit_noise_std: standard deviation of Gaussian noise added to the logit.
    label_flip_rate: probability that a label is flipped (in [0, 0.5)).
    chunk_size: rows per generated chunk (part of the data's identity).
    calibration_rows: rows of the calibration sample (component scales and bias).
    max_teacher_bytes: cap on the memory of the teacher tables.
  """
  seed: int = 0
  num_sparse: int = 26
  num_dense: int = 13
  num_multi_hot: int = 0
  multi_hot_max_length: int = 8
  min_vocab: int = 10
  max_vocab: int = 10_000
  vocab_exponent: float = 1.0
  zipf_exponent: float = 1.05
  teacher_dim: int = 8
  num_triples: Optional[int] = None
  num_quadruples: Optional[int] = None
  weight_order1: float = 1.0
  weight_dense: float = 0.5
  weight_order2: float = 1.0
  weight_order3: float = 1.0
  weight_order4: float = 1.0
  positive_rate: float = 0.25
  logit_noise_std: float = 0.0
  label_flip_rate: float = 0.0
  chunk_size: int = 4096
  calibration_rows: int = 16384
  max_teacher_bytes: int = 1 << 30

  def __post_init__(self):
    for name in ('seed', 'num_sparse', 'num_dense', 'num_multi_hot', 'num_triples',
                 'num_quadruples'):
      if getattr(self, name) is not None and getattr(self, name) < 0:
        raise ValueError(f'SyntheticConfig.{name} must be >= 0, got {getattr(self, name)}')
    for name in ('multi_hot_max_length', 'min_vocab', 'teacher_dim', 'chunk_size',
                 'calibration_rows', 'max_teacher_bytes'):
      if getattr(self, name) < 1:
        raise ValueError(f'SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}')
    if self.num_sparse + self.num_multi_hot < 1:
      raise ValueError('SyntheticConfig needs at least one sparse field '
                       '(num_sparse + num_multi_hot >= 1)')
    if self.max_vocab < self.min_vocab:
      raise ValueError(f'SyntheticConfig.max_vocab {self.max_vocab} < min_vocab {self.min_vocab}')
    if not self.vocab_exponent >= 0:
      raise ValueError(f'SyntheticConfig.vocab_exponent must be >= 0, got {self.vocab_exponent}')
    if not self.zipf_exponent > 0:
      raise ValueError(f'SyntheticConfig.zipf_exponent must be > 0, got {self.zipf_exponent}')
    if not 0 <= self.label_flip_rate < 0.5:
      raise ValueError(f'SyntheticConfig.label_flip_rate must be in [0, 0.5), '
                       f'got {self.label_flip_rate}')
    if not self.label_flip_rate < self.positive_rate < 1 - self.label_flip_rate:
      raise ValueError(f'SyntheticConfig.positive_rate {self.positive_rate} must be in '
                       f'(label_flip_rate, 1 - label_flip_rate) = ({self.label_flip_rate}, '
                       f'{1 - self.label_flip_rate})')
    if self.logit_noise_std < 0:
      raise ValueError(f'SyntheticConfig.logit_noise_std must be >= 0, got {self.logit_noise_std}')
    for name, order in (('num_triples', 3), ('num_quadruples', 4)):
      available = math.comb(self.num_vectors, order)
      if getattr(self, name) is not None and getattr(self, name) > available:
        raise ValueError(f'SyntheticConfig.{name}={getattr(self, name)} exceeds the {available} '
                         f'distinct {order}-subsets of {self.num_vectors} teacher vectors')
    sizes = self.vocab_sizes()
    per_id = 4 * self.teacher_dim + 8
    total = sum(sizes) * per_id
    if total > self.max_teacher_bytes:
      names = [f.name for f in self.schema().sparse]
      big = int(np.argmax(sizes))
      raise ValueError(f'SyntheticConfig: teacher tables need {total:,} bytes, more than '
                       f'max_teacher_bytes={self.max_teacher_bytes:,}; the largest field '
                       f'{names[big]!r} (vocab {sizes[big]:,}) alone needs {sizes[big] * per_id:,}')

  @property
  def num_vectors(self) -> int:
    """Teacher vectors per row: one per sparse field, plus one for the dense features."""
    return self.num_sparse + self.num_multi_hot + (self.num_dense > 0)

  def num_tuples(self, order: int) -> int:
    """The number of planted interactions of ``order`` 3 or 4."""
    count = self.num_triples if order == 3 else self.num_quadruples
    return min(16, math.comb(self.num_vectors, order)) if count is None else count

  def vocab_sizes(self) -> tuple[int, ...]:
    """Vocab size of each sparse field in schema order (one-hot, then multi-hot)."""
    i = np.arange(self.num_sparse + self.num_multi_hot, dtype=np.float64)
    v = np.round(self.max_vocab * (i + 1) ** -self.vocab_exponent)
    return tuple(int(x) for x in np.clip(v, self.min_vocab, self.max_vocab))

  def schema(self) -> FeatureSchema:
    sizes = self.vocab_sizes()
    fields = [SparseField(f'C{i + 1}', sizes[i]) for i in range(self.num_sparse)]
    fields += [SparseField(f'M{j + 1}', sizes[self.num_sparse + j], self.multi_hot_max_length)
               for j in range(self.num_multi_hot)]
    return FeatureSchema(tuple(fields), tuple(f'I{k + 1}' for k in range(self.num_dense)))


# ---------------------------------------------------------------------------------------------
# Zipf sampling by rejection-inversion (Hoermann & Derflinger, 1996): exact for p(k) ∝ k^-s on
# {1..n}, O(1) per draw and no per-id tables. H is an antiderivative of h(x) = x^-s.


def _h_integral(x, s: float) -> np.ndarray:
  """``(x^(1-s) - 1) / (1-s)``, ``log x`` at s = 1."""
  if s == 1.0:
    return np.log(x)
  return np.expm1((1.0 - s) * np.log(x)) / (1.0 - s)


def _h_integral_inverse(y, s: float) -> np.ndarray:
  """The inverse of :func:`_h_integral` (clamped to its domain)."""
  if s == 1.0:
    return np.exp(y)
  return np.exp(np.log1p(np.maximum((1.0 - s) * y, -1.0 + 1e-15)) / (1.0 - s))


def zipf_ranks(rng: np.random.Generator, vocab: np.ndarray, rows: int, s: float) -> np.ndarray:
  """Draws Zipf ranks, column ``j`` over ``{0, ..., vocab[j] - 1}`` with ``p(k) ∝ (k + 1)^-s``.

  Args:
    rng: the generator (draws a data-dependent but deterministic number of uniforms).
    vocab: ``[cols]`` sizes.
    rows: number of rows.
    s: the exponent (> 0).

  Returns:
    ``int64 [rows, cols]``.
  """
  s = float(s)
  n = np.asarray(vocab, np.float64)  # [cols]
  h_x1 = float(_h_integral(1.5, s)) - 1.0
  h_n = _h_integral(n + 0.5, s)
  squeeze = 2.0 - float(_h_integral_inverse(_h_integral(2.5, s) - 2.0 ** -s, s))

  def draw(u, h_n, n):  # one rejection-inversion attempt per uniform; returns (rank, accepted)
    y = h_n + u * (h_x1 - h_n)
    x = _h_integral_inverse(y, s)
    k = np.minimum(np.maximum(np.floor(x + 0.5), 1.0), n)
    ok = k - x <= squeeze
    check = np.flatnonzero(~ok)
    if check.size:
      kc = k.reshape(-1)[check]
      ok.reshape(-1)[check] = y.reshape(-1)[check] >= _h_integral(kc + 0.5, s) - kc ** -s
    return k, ok

  k, ok = draw(rng.random((rows, len(n))), h_n[None, :], n[None, :])  # [rows, cols]
  out = k.astype(np.int64) - 1
  pending = np.flatnonzero(~ok)
  while pending.size:
    col = pending % len(n)
    k, ok = draw(rng.random(pending.size), h_n[col], n[col])
    out.reshape(-1)[pending[ok]] = k[ok].astype(np.int64) - 1
    pending = pending[~ok]
  return out


# ---------------------------------------------------------------------------------------------
# The teacher.


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
  """The planted world: id tables, interaction structure, component scales and bias.

  Attributes:
    config: the generating config.
    vocab: ``int64 [F]`` vocab sizes in schema order.
    offsets: ``int64 [F]`` start of each field in the concatenated tables.
    rank_to_id: ``int32 [total_vocab]`` per field, the id of Zipf rank ``k`` at ``offsets[f] + k``.
    embedding: ``float32 [total_vocab, teacher_dim]`` per (field, id) teacher embeddings.
    first_order: ``float32 [total_vocab]`` per (field, id) first-order weights.
    dense_weight: ``float32 [num_dense]``.
    dense_projection: ``float32 [num_dense, teacher_dim]``.
    triples: ``int64 [num_triples, 3]`` teacher-vector indices (fields, then the dense vector).
    quadruples: ``int64 [num_quadruples, 4]``.
    scales: per component, ``weight / std`` (0 for a switched-off or constant component).
    bias: the calibrated logit bias.
  """
  config: SyntheticConfig
  vocab: np.ndarray
  offsets: np.ndarray
  rank_to_id: np.ndarray
  embedding: np.ndarray
  first_order: np.ndarray
  dense_weight: np.ndarray
  dense_projection: np.ndarray
  triples: np.ndarray
  quadruples: np.ndarray
  scales: dict[str, float]
  bias: float

  def vectors(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Field-major teacher vectors ``[F', B, d]`` and summed first-order weights ``[B]``."""
    c = self.config
    s, m = c.num_sparse, c.num_multi_hot
    idx = self.offsets[:s, None] + batch['sparse'].T  # [S, B]
    vecs = [np.take(self.embedding, idx, axis=0)]  # [S, B, d]
    first = np.take(self.first_order, idx).sum(axis=0)  # [B]
    if m:
      ids, lengths = batch['multi_hot_ids'], batch['multi_hot_lengths']  # [B, M, L], [B, M]
      midx = self.offsets[s:, None, None] + ids.transpose(1, 0, 2)  # [M, B, L]
      valid = np.arange(ids.shape[2])[None, None, :] < lengths.T[:, :, None]
      weight = valid * (1.0 / np.maximum(lengths.T, 1)).astype(np.float32)[:, :, None]  # [M, B, L]
      vecs.append(np.einsum('mbl,mbld->mbd', weight, np.take(self.embedding, midx, axis=0)))
      first = first + (np.take(self.first_order, midx) * weight).sum(axis=(0, 2))
    if c.num_dense:
      vecs.append((batch['dense'] @ self.dense_projection)[None])  # [1, B, d]
    return np.concatenate(vecs, axis=0), first

  def components(self, batch: Batch, names=_COMPONENTS) -> dict[str, np.ndarray]:
    """The raw (unscaled) logit components ``{name: float32 [B]}`` of a batch."""
    v, first = self.vectors(batch)  # [F', B, d], [B]
    out = {}
    for name in names:
      if name == 'order1':
        out[name] = first
      elif name == 'dense':
        out[name] = batch['dense'] @ self.dense_weight if self.config.num_dense else 0 * first
      elif name == 'order2':
        total = v.sum(axis=0)  # [B, d]
        out[name] = 0.5 * ((total * total).sum(axis=1) - (v * v).sum(axis=0).sum(axis=1))
      else:
        tuples = self.triples if name == 'order3' else self.quadruples
        prod = v[tuples[:, 0]]  # [T, B, d]
        for j in range(1, tuples.shape[1]):
          prod = prod * v[tuples[:, j]]
        out[name] = prod.sum(axis=0).sum(axis=1)
    return out

  def logit(self, batch: Batch) -> np.ndarray:
    """``float64 [B]`` the noise-free teacher logit."""
    names = tuple(n for n in _COMPONENTS if self.scales[n] != 0.0)
    comps = self.components(batch, names)
    out = np.full(len(batch['sparse']), self.bias, np.float64)
    for n in names:
      out += self.scales[n] * comps[n].astype(np.float64)
    return out

  def probability(self, batch: Batch) -> np.ndarray:
    """``float64 [B]`` the true click probability of each row."""
    return _click_probability(self.logit(batch), self.config)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _click_probability(logit: np.ndarray, config: SyntheticConfig) -> np.ndarray:
  """``flip + (1 - 2 flip) * E[sigmoid(logit + std * Z)]``, Z ~ N(0, 1), by Gauss-Hermite."""
  if config.logit_noise_std > 0:
    x, w = np.polynomial.hermite.hermgauss(_GAUSS_HERMITE_POINTS)
    shifts = np.sqrt(2.0) * config.logit_noise_std * x
    p = _sigmoid(logit[:, None] + shifts[None, :]) @ (w / np.sqrt(np.pi))
  else:
    p = _sigmoid(logit)
  return config.label_flip_rate + (1.0 - 2.0 * config.label_flip_rate) * p


def _random_subsets(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
  """``count`` distinct sorted k-subsets of ``range(n)`` as ``int64 [count, k]``."""
  if count == 0:
    return np.zeros((0, k), np.int64)
  if math.comb(n, k) <= 200_000:
    every = np.array(list(itertools.combinations(range(n), k)), np.int64)
    return every[np.sort(rng.choice(len(every), count, replace=False))]
  chosen = set()
  while len(chosen) < count:
    chosen.add(tuple(sorted(rng.choice(n, k, replace=False).tolist())))
  return np.array(sorted(chosen), np.int64)


def build_teacher(config: SyntheticConfig) -> Teacher:
  """Draws the teacher of ``config`` and calibrates its component scales and bias."""
  vocab = np.array(config.vocab_sizes(), np.int64)
  offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]]).astype(np.int64)
  total, d = int(vocab.sum()), config.teacher_dim
  rank_to_id = np.empty(total, np.int32)
  embedding = np.empty((total, d), np.float32)
  first_order = np.empty(total, np.float32)
  for f, (lo, n) in enumerate(zip(offsets, vocab)):  # each field's tables depend only on (seed, f)
    rng = np.random.default_rng([config.seed, _TABLE, f])
    rank_to_id[lo:lo + n] = rng.permutation(n)
    embedding[lo:lo + n] = rng.standard_normal((n, d), np.float32)
    first_order[lo:lo + n] = rng.standard_normal(n, np.float32)
  rng = np.random.default_rng([config.seed, _TEACHER])
  nd = config.num_dense
  dense_weight = rng.standard_normal(nd, np.float32)
  dense_projection = rng.standard_normal((nd, d), np.float32) / np.float32(np.sqrt(max(nd, 1)))
  triples = _random_subsets(rng, config.num_vectors, 3, config.num_tuples(3))
  quadruples = _random_subsets(rng, config.num_vectors, 4, config.num_tuples(4))
  teacher = Teacher(config, vocab, offsets, rank_to_id, embedding, first_order, dense_weight,
                    dense_projection, triples, quadruples, {n: 0.0 for n in _COMPONENTS}, 0.0)

  chunks = num_batches(config.calibration_rows, config.chunk_size)
  sample = _concat([_chunk_features(teacher, _CALIBRATION_SPLIT, c) for c in range(chunks)])
  sample = {k: v[:config.calibration_rows] for k, v in sample.items()}
  comps = teacher.components(sample)
  scales = {}
  for name in _COMPONENTS:
    weight = float(getattr(config, f'weight_{name}'))
    std = float(np.std(comps[name].astype(np.float64)))
    scales[name] = weight / std if weight != 0.0 and std > 1e-12 else 0.0
  teacher = dataclasses.replace(teacher, scales=scales)
  bias = _solve_bias(teacher.logit(sample), config)
  return dataclasses.replace(teacher, bias=bias)


def _solve_bias(logit: np.ndarray, config: SyntheticConfig) -> float:
  """The ``b`` with ``mean(P(logit + b)) == positive_rate`` (safeguarded Newton on a bracket)."""
  def gap(b):
    return float(_click_probability(logit + b, config).mean()) - config.positive_rate

  lo, hi = -50.0, 50.0
  b = float(np.log(config.positive_rate / (1 - config.positive_rate)) - logit.mean())
  b = min(max(b, lo), hi)
  for _ in range(100):
    g = gap(b)
    if abs(g) < 1e-12:
      break
    if g > 0:
      hi = b
    else:
      lo = b
    slope = (gap(b + 1e-4) - g) / 1e-4
    step = b - g / slope if slope > 0 else 0.5 * (lo + hi)
    b = step if lo < step < hi else 0.5 * (lo + hi)
    if hi - lo < 1e-12:
      break
  return b


# ---------------------------------------------------------------------------------------------
# Chunks.


def _concat(parts: list[Batch]) -> Batch:
  if len(parts) == 1:
    return parts[0]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _chunk_features(teacher: Teacher, split: int, chunk: int) -> Batch:
  """The features of one full chunk: a pure function of ``(config, split, chunk)``."""
  c = teacher.config
  rows, s, m, length = c.chunk_size, c.num_sparse, c.num_multi_hot, c.multi_hot_max_length
  rngs = [np.random.default_rng([c.seed, _CHUNK, split, chunk, part]) for part in range(3)]
  cols = np.concatenate([np.arange(s), np.repeat(np.arange(s, s + m), length)])  # field per column
  ranks = zipf_ranks(rngs[0], teacher.vocab[cols], rows, c.zipf_exponent)  # [rows, S + M * L]
  ids = np.take(teacher.rank_to_id, teacher.offsets[cols] + ranks)  # int32
  out = {'sparse': ids[:, :s]}
  if m:
    lengths = rngs[1].integers(0, length + 1, (rows, m)).astype(np.int32)
    valid = np.arange(length)[None, None, :] < lengths[:, :, None]  # [rows, M, L]
    out['multi_hot_ids'] = np.where(valid, ids[:, s:].reshape(rows, m, length), 0).astype(np.int32)
    out['multi_hot_lengths'] = lengths
    out['multi_hot_weights'] = valid.astype(np.float32)
  else:
    out['multi_hot_ids'] = np.zeros((rows, 0, 0), np.int32)
    out['multi_hot_lengths'] = np.zeros((rows, 0), np.int32)
    out['multi_hot_weights'] = np.zeros((rows, 0, 0), np.float32)
  out['dense'] = rngs[2].standard_normal((rows, c.num_dense), np.float32)
  return out


def _chunk(teacher: Teacher, split: int, chunk: int) -> Batch:
  """One full chunk with labels drawn from the teacher probability."""
  out = _chunk_features(teacher, split, chunk)
  p = teacher.probability(out)
  u = np.random.default_rng([teacher.config.seed, _CHUNK, split, chunk, 3]).random(len(p))
  out['label'] = (u < p).astype(np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# The source.


class SyntheticSource:
  """One split of synthetic rows, streamed in chunks (a CTRSource).

  Shuffling (``shuffle=True``) permutes the chunk order by ``(seed, epoch)`` and the rows within
  each chunk by ``(seed, epoch, chunk)``; each row appears exactly once per epoch. ``seed`` there
  is the shuffle seed, not the data seed (``config.seed``).

  Attributes:
    config: the generating config.
    split: 'train', 'valid' or 'test' (disjoint row streams of the same teacher).
    num_rows: rows in the split.
    schema: the feature schema.
    teacher: the planted teacher.
  """

  def __init__(self, config: SyntheticConfig, split: str, num_rows: int, *,
               teacher: Optional[Teacher] = None):
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if num_rows < 0:
      raise ValueError(f'num_rows must be >= 0, got {num_rows}')
    if teacher is not None and teacher.config != config:
      raise ValueError('teacher was built from a different config')
    self.config = config
    self.split = split
    self.num_rows = int(num_rows)
    self.schema = config.schema()
    self.teacher = teacher if teacher is not None else build_teacher(config)

  @property
  def num_chunks(self) -> int:
    return num_batches(self.num_rows, self.config.chunk_size)

  def chunk(self, index: int) -> Batch:
    """Rows ``[index * chunk_size, ...)`` of the split, unpadded and unshuffled."""
    if not 0 <= index < self.num_chunks:
      raise ValueError(f'chunk index {index} is outside [0, {self.num_chunks})')
    out = _chunk(self.teacher, SPLITS.index(self.split), index)
    rows = min(self.config.chunk_size, self.num_rows - index * self.config.chunk_size)
    return out if rows == self.config.chunk_size else {k: v[:rows] for k, v in out.items()}

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    """Yields ``ceil(num_rows / batch_size) - start`` batches padded to ``batch_size``.

    Batch ``b`` holds rows ``[b * batch_size, (b + 1) * batch_size)`` of the (shuffled) epoch
    order; the chunks before batch ``start`` are never generated.
    """
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    total = num_batches(self.num_rows, batch_size)
    if not 0 <= start <= total:
      raise ValueError(f'start must be in [0, {total}], got {start}')
    size = self.config.chunk_size
    order = np.arange(self.num_chunks)
    if shuffle:
      order = np.random.default_rng([seed, _ORDER, epoch]).permutation(self.num_chunks)
    rows = np.minimum(size, self.num_rows - order * size)
    bounds = np.concatenate([[0], np.cumsum(rows)])  # epoch position of each slot's first row
    cache: dict[int, Batch] = {}

    def slot_rows(slot: int) -> Batch:
      if slot not in cache:
        cache.clear()
        data = self.chunk(int(order[slot]))
        if shuffle:
          perm = np.random.default_rng([seed, _WITHIN, epoch, int(order[slot])]).permutation(
              int(rows[slot]))
          data = {k: v[perm] for k, v in data.items()}
        cache[slot] = data
      return cache[slot]

    for b in range(start, total):
      lo, hi = b * batch_size, min((b + 1) * batch_size, self.num_rows)
      slot = int(np.searchsorted(bounds, lo, side='right')) - 1
      parts = []
      while lo < hi:
        end = min(hi, int(bounds[slot + 1]))
        data = slot_rows(slot)
        parts.append({k: v[lo - bounds[slot]:end - bounds[slot]] for k, v in data.items()})
        lo, slot = end, slot + 1
      yield pad_batch(_concat(parts), batch_size)

  def materialize(self, max_rows: int = 10_000_000) -> ArrayDataset:
    """The whole split in memory (for small splits; refuses more than ``max_rows``)."""
    if self.num_rows > max_rows:
      raise ValueError(f'synthetic/{self.split}: {self.num_rows:,} rows is more than '
                       f'max_rows={max_rows:,}; stream it with batches() instead')
    if self.num_rows == 0:
      data = {k: v[:0] for k, v in _chunk(self.teacher, SPLITS.index(self.split), 0).items()}
    else:
      data = _concat([self.chunk(c) for c in range(self.num_chunks)])
    return ArrayDataset(self.schema, name=f'synthetic/{self.split}', **data)

  def teacher_probability(self, batch: Batch) -> np.ndarray:
    """``float64 [batch]`` the true click probability of each row (also of padding rows)."""
    return self.teacher.probability(batch)

  def teacher_logit(self, batch: Batch) -> np.ndarray:
    """``float64 [batch]`` the log-odds of the true click probability: the Bayes-optimal score.

    Scored like a model's logits (``jaxrec.train.loop.evaluate``) it gives the best logloss and
    AUC any model can reach on those rows. The probability is clipped to ``[1e-12, 1 - 1e-12]``
    so that the log-odds stay finite.
    """
    p = np.clip(self.teacher_probability(batch), _PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
    return np.log(p) - np.log1p(-p)


def make_splits(config: SyntheticConfig, num_train: int, num_valid: int,
                num_test: int) -> dict[str, SyntheticSource]:
  """Train / valid / test sources: disjoint row streams labelled by one shared teacher."""
  teacher = build_teacher(config)
  sizes = {'train': num_train, 'valid': num_valid, 'test': num_test}
  return {s: SyntheticSource(config, s, n, teacher=teacher) for s, n in sizes.items()}


def load(data_dir=None, *, num_train: int = 500_000, num_valid: int = 50_000,
         num_test: int = 50_000, **options):
  """The synthetic dataset as a ``LoadedDataset`` (like the file readers).

  Args:
    data_dir: ignored (nothing is read); accepted so every loader has one signature.
    num_train, num_valid, num_test: rows per split.
    **options: :class:`SyntheticConfig` fields.

  Returns:
    ``LoadedDataset('synthetic', schema, splits, state)``: the splits are streaming
    :class:`SyntheticSource` s (CTRSources, not ArrayDatasets); ``state`` is JSON-serialisable
    (``{'dataset', 'version', 'schema', 'config', 'num_rows'}``) and :func:`from_state` rebuilds
    the same data.
  """
  # Imported here so the generator stays importable without the file readers.
  from jaxrec.data.tabular import STATE_VERSION, LoadedDataset  # pylint: disable=g-import-not-at-top
  del data_dir
  known = {f.name for f in dataclasses.fields(SyntheticConfig)}
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f'synthetic.load: unknown options {unknown}; SyntheticConfig fields are '
                     f'{sorted(known)}')
  config = SyntheticConfig(**options)
  splits = make_splits(config, num_train, num_valid, num_test)
  state = {'dataset': 'synthetic', 'version': STATE_VERSION, 'schema': config.schema().to_dict(),
           'config': dataclasses.asdict(config),
           'num_rows': {k: v.num_rows for k, v in splits.items()}}
  return LoadedDataset('synthetic', config.schema(), splits, state)


def from_state(state: dict):
  """Rebuilds the ``LoadedDataset`` whose ``state`` :func:`load` returned."""
  from jaxrec.data.tabular import check_state  # pylint: disable=g-import-not-at-top
  check_state(state, 'synthetic')
  rows = state['num_rows']
  return load(num_train=rows['train'], num_valid=rows['valid'], num_test=rows['test'],
              **state['config'])


def read_file(path: str, state: dict) -> ArrayDataset:
  """Synthetic data has no files: raises ValueError (rebuild the splits with :func:`from_state`)."""
  del state
  raise ValueError(f'{path}: the synthetic dataset has no split files; rebuild its splits with '
                   'jaxrec.data.synthetic.from_state(state)')
