"""Shared helpers of the embedding tests: random tables, batches and plans."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxrec.embeddings import EmbeddingBagConfig, KeyedJagged
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding

NUM_HOSTS, PER_HOST = 2, 4

# One table per sharding type (plus a shared table and a 4-wide one), on a 2 x 4 mesh.
ALL_TYPES_TABLES = (
    EmbeddingBagConfig('dp', 23, 8, ('f_dp',), pooling='mean', weighted=True),
    EmbeddingBagConfig('tw', 37, 8, ('f_tw0', 'f_tw1'), pooling='sum', weighted=True),
    EmbeddingBagConfig('rw', 50, 8, ('f_rw',), pooling='mean'),
    EmbeddingBagConfig('cw', 31, 8, ('f_cw',), pooling='sum', weighted=True),
    EmbeddingBagConfig('twrw', 29, 4, ('f_twrw',), pooling='sum', weighted=True),
    EmbeddingBagConfig('twcw', 19, 8, ('f_twcw',), pooling='mean', weighted=True),
    EmbeddingBagConfig('grid', 41, 8, ('f_grid0', 'f_grid1'), pooling='sum', weighted=True),
    EmbeddingBagConfig('tw4', 17, 4, ('f_tw4',), pooling='sum'),
    EmbeddingBagConfig('rw_small', 5, 8, ('f_rws',), pooling='sum'),  # 3 empty row shards
)
ALL_TYPES_PLAN = EmbeddingPlan({
    'dp': TableSharding('data_parallel'),
    'tw': TableSharding('table_wise', devices=(5,)),
    'rw': TableSharding('row_wise'),
    'cw': TableSharding('column_wise', devices=(2, 7)),
    'twrw': TableSharding('table_row_wise', hosts=(1,)),
    'twcw': TableSharding('table_column_wise', devices=(1, 3)),
    'grid': TableSharding('grid', hosts=(1, 0)),
    'tw4': TableSharding('table_wise', devices=(0,)),
    'rw_small': TableSharding('row_wise'),
}, num_hosts=NUM_HOSTS, devices_per_host=PER_HOST)


def random_batch(rng: np.random.Generator, tables, batch_size: int, max_length: int,
                 out_of_range: bool = False) -> KeyedJagged:
  """Random bags (some empty, full-length ones too), random weights, optional bad ids."""
  keys = tuple(f for t in tables for f in t.feature_names)
  rows = [t.num_embeddings for t in tables for _ in t.feature_names]
  lens = rng.integers(0, max_length + 1, size=(len(keys), batch_size))
  vals = []
  for f, r in enumerate(rows):
    hi = r + 5 if out_of_range else r
    # Few distinct ids so that bags and samples repeat rows (duplicates in the sparse update).
    vals.append(rng.integers(-2 if out_of_range else 0, hi, size=lens[f].sum()))
  values = np.concatenate(vals)
  weights = rng.normal(size=values.size).astype(np.float32)
  weights[rng.random(values.size) < 0.1] = 0.0  # weight-0 slots are still touched
  return KeyedJagged.from_lengths(keys, values, lens.reshape(-1), max_length, weights)


def random_params(rng: np.random.Generator, tables) -> dict:
  return {t.name: jnp.asarray(rng.normal(size=(t.num_embeddings, t.embedding_dim)), jnp.float32)
          for t in tables}


def assert_close_rel(actual, expected, rel: float = 1e-6, what: str = ''):
  """``max |a - e| <= rel * max(1, max |e|)``: relative to the array's scale."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
  err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
  assert err <= rel * scale, f'{what}: max error {err:.3g} > {rel} x scale {scale:.3g}'
