"""Tiny schemas, batches and numpy references shared by the model tests."""

import functools

import flax.linen as nn
import jax
import numpy as np

from jaxrec.data.schema import FeatureSchema, SparseField, one_hot_schema

# One-hot and multi-hot fields interleaved (mean and sum pooling) plus two dense features.
MIXED = FeatureSchema(
    (SparseField('user', 5), SparseField('tags', 6, max_length=3, pooling='mean'),
     SparseField('item', 7), SparseField('ctx', 4, max_length=2, pooling='sum')),
    dense=('age', 'price'))
SPARSE = one_hot_schema(['a', 'b', 'c'], [5, 7, 4])


def make_batch(schema: FeatureSchema, rows: int = 8, seed: int = 0) -> dict:
  """A random batch dict in the jaxrec layout (label and weight included, to be ignored)."""
  rng = np.random.default_rng(seed)
  one = schema.one_hot_fields
  batch = {
      'sparse': np.stack([rng.integers(0, f.vocab_size, rows) for f in one], 1).astype(np.int32),
      'dense': rng.normal(size=(rows, schema.num_dense)).astype(np.float32),
      'label': rng.integers(0, 2, rows).astype(np.float32),
      'weight': np.ones(rows, np.float32),
  }
  if schema.num_multi_hot:
    m, length = schema.num_multi_hot, schema.max_multi_hot_length
    ids = np.zeros((rows, m, length), np.int32)
    lengths = np.zeros((rows, m), np.int32)
    for j, f in enumerate(schema.multi_hot_fields):
      lengths[:, j] = rng.integers(1, f.max_length + 1, rows)
      ids[:, j, :f.max_length] = rng.integers(0, f.vocab_size, (rows, f.max_length))
      ids[:, j, :f.max_length] *= np.arange(f.max_length)[None, :] < lengths[:, j:j + 1]
    batch.update(multi_hot_ids=ids, multi_hot_lengths=lengths,
                 multi_hot_weights=rng.uniform(0.5, 1.5, (rows, m, length)).astype(np.float32))
  return batch


def init(model, batch, seed=0):
  """The model's real initial variables, unboxed."""
  keys = {'params': jax.random.key(seed), 'dropout': jax.random.key(seed + 1)}
  return nn.unbox(model.init(keys, batch, train=False))


def random_variables(model, batch, seed=1, scale=0.3):
  """Variables of the model's structure filled with N(0, scale) noise, so every term matters.

  Built from ``jax.eval_shape`` (no initialiser runs, which keeps the tests fast); BatchNorm
  running variances are made positive.
  """
  shapes = nn.unbox(jax.eval_shape(
      functools.partial(model.init, train=False), {'params': jax.random.key(0)}, batch))
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32), shapes)
  if 'batch_stats' in variables:
    variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])
  return variables


def np_embed(tables: dict, schema: FeatureSchema, batch: dict) -> np.ndarray:
  """Reference field embedding ``[B, F, d]`` in float64."""
  outs, oh, mh = [], 0, 0
  for f in schema.sparse:
    t = np.asarray(tables[f.name], np.float64)
    if not f.multi_hot:
      outs.append(t[batch['sparse'][:, oh]])
      oh += 1
      continue
    rows = []
    for b in range(len(batch['label'])):
      n = batch['multi_hot_lengths'][b, mh]
      ids = batch['multi_hot_ids'][b, mh, :n]
      w = batch['multi_hot_weights'][b, mh, :n].astype(np.float64)
      v = (w[:, None] * t[ids]).sum(0)
      rows.append(v / max(n, 1) if f.pooling == 'mean' else v)
    outs.append(np.stack(rows))
    mh += 1
  return np.stack(outs, 1)


def relu(x):
  return np.maximum(x, 0)


def np_mlp(params: dict, x: np.ndarray, batch_stats: dict | None = None, act=relu,
           out_act=None) -> np.ndarray:
  """Reference ``MLP`` in eval mode (BatchNorm with running averages)."""
  x = np.asarray(x, np.float64)
  i = 0
  while f'dense_{i}' in params:
    p = params[f'dense_{i}']
    x = x @ p['kernel'] + p.get('bias', 0)
    if f'bn_{i}' in params:
      s, bn = batch_stats[f'bn_{i}'], params[f'bn_{i}']
      x = (x - s['mean']) / np.sqrt(s['var'] + 1e-5) * bn['scale'] + bn['bias']
    x = act(x)
    i += 1
  if 'output' in params:
    x = x @ params['output']['kernel'] + params['output'].get('bias', 0)
    if out_act is not None:
      x = out_act(x)
  return x


def np_linear(params: dict, schema: FeatureSchema, batch: dict) -> np.ndarray:
  """Reference first-order term ``[B]``."""
  out = np_embed(params['embedding'], schema, batch)[..., 0].sum(1) + params.get('bias', 0.0)
  if schema.num_dense:
    out = out + batch['dense'].astype(np.float64) @ params['dense']['output']['kernel'][:, 0]
  return out


def np_pairwise_sum(emb: np.ndarray) -> np.ndarray:
  f = emb.shape[1]
  return sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(f) for j in range(i + 1, f))
