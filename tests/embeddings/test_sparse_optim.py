"""Sparse optimizers against dense-gradient optax on the touched rows; untouched rows unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.embeddings import EmbeddingBagConfig, KeyedJagged
from jaxrec.embeddings.collection import pooled_lookup
from jaxrec.embeddings.sparse_optim import (SparseOptimizer, apply_row_grads, gather_feature_rows,
                                            init_states, pool_feature_rows)
from tests.embeddings.common import assert_close_rel

TABLES = (EmbeddingBagConfig('t', 40, 4, ('a', 'b'), pooling='mean', weighted=True),)
LR = 0.1


def _batch():
  # Duplicate ids within a bag and across features; an empty bag; a weight-0 slot (id 9: touched,
  # zero gradient); id 45 out of range (not touched).
  values = [3, 3, 7, 9, 45, 3, 20, 21]
  lengths = [3, 0, 2, 3]  # a: [3 3 7], []; b: [9 45], [3 20 21]
  weights = [1.0, 0.5, 2.0, 0.0, 1.0, -1.0, 0.3, 1.5]
  return KeyedJagged.from_lengths(('a', 'b'), values, lengths, max_length=3, weights=weights)


def _loss(pooled):
  return jnp.sum(jnp.sin(pooled['a']) + jnp.square(pooled['b']) * 2.0)


def _sparse_step(opt, params, state, kjt):
  rows = gather_feature_rows(params, kjt, TABLES)
  g = jax.grad(lambda r: _loss(pool_feature_rows(r, kjt, TABLES)))(rows)
  return apply_row_grads(opt, params, state, kjt, TABLES, g)


def _dense_grad(params, kjt):
  return jax.grad(lambda p: _loss(pooled_lookup(p, kjt, TABLES)))(params)['t']


TOUCHED = np.array(sorted({3, 7, 9, 20, 21}))
UNTOUCHED = np.setdiff1d(np.arange(40), TOUCHED)


@pytest.mark.parametrize('kind,tx', [('sgd', optax.sgd(LR)), ('adagrad', optax.adagrad(LR)),
                                     ('adam', optax.adam(LR))])
def test_matches_optax_on_touched_rows(kind, tx):
  rng = np.random.default_rng(0)
  params = {'t': jnp.asarray(rng.normal(size=(40, 4)), jnp.float32)}
  opt = SparseOptimizer(kind, learning_rate=LR)
  state = init_states(opt, params, TABLES)
  dense_params, dense_state = params['t'], tx.init(params['t'])
  kjt = _batch()
  for _ in range(2):  # the second step starts from a non-trivial state
    before = params['t']
    params, state = jax.jit(_sparse_step, static_argnums=0)(opt, params, state, kjt)
    g = _dense_grad({'t': dense_params}, kjt)
    upd, dense_state = tx.update(g, dense_state, dense_params)
    dense_params = optax.apply_updates(dense_params, upd)
    np.testing.assert_array_equal(params['t'][UNTOUCHED], before[UNTOUCHED])
    assert_close_rel(params['t'][TOUCHED] - before[TOUCHED],
                     (dense_params - before)[TOUCHED], 1e-6, f'{kind} update')
    dense_params = params['t']  # the dense reference continues from the sparse table
  assert not np.allclose(params['t'][TOUCHED], before[TOUCHED])


def test_rowwise_adagrad_matches_reference():
  rng = np.random.default_rng(1)
  table = rng.normal(size=(40, 4)).astype(np.float32)
  opt = SparseOptimizer('rowwise_adagrad', learning_rate=LR)
  params = {'t': jnp.asarray(table)}
  state = init_states(opt, params, TABLES)
  kjt = _batch()
  acc = np.zeros(40, np.float32)
  for _ in range(2):
    g = np.asarray(_dense_grad(params, kjt))
    params_ref = np.asarray(params['t']).copy()
    acc[TOUCHED] += np.mean(g[TOUCHED] ** 2, axis=1)
    params_ref[TOUCHED] -= (LR / (np.sqrt(acc[TOUCHED]) + 1e-8))[:, None] * g[TOUCHED]
    before = np.asarray(params['t'])
    params, state = _sparse_step(opt, params, state, kjt)
    assert_close_rel(params['t'] - before, params_ref - before, 1e-6, 'rowwise update')
    np.testing.assert_allclose(state['t']['acc'], acc, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state['t']['acc'])[UNTOUCHED], 0.0)


def test_bad_kind_is_an_error():
  with pytest.raises(ValueError, match="kind must be one of"):
    SparseOptimizer('lamb')
