"""Sparse (fused) optimizers for embedding tables: only the rows a batch touched are updated.

fbgemm's idea: differentiate the loss with respect to the *looked-up rows* (``[N, d]``, one per
id in the batch) instead of the table, sum the gradients of equal ids (``segment_sum`` over the
unique ids), and scatter the optimizer's update into those rows of the table and of its state. The
dense ``[R, d]`` gradient of the table is never built. Dense parameters stay on optax.

Optimizers (``SparseOptimizer.kind``), per touched row with summed gradient ``g``:
  * ``'sgd'``:             ``w -= lr g``                                       (= ``optax.sgd``)
  * ``'adagrad'``:         ``a += g^2; w -= lr g / sqrt(a + eps)``   (= ``optax.adagrad``: a starts
    at ``initial_accumulator_value``)
  * ``'rowwise_adagrad'``: one accumulator per row, ``a += mean(g^2); w -= lr g / (sqrt(a) + eps)``
    (fbgemm's ``EXACT_ROWWISE_ADAGRAD``, the DLRM standard)
  * ``'adam'``:            lazy Adam: ``m, v`` of touched rows only, bias correction with the
    global step count (= ``optax.adam`` on the touched rows)

A row counts as touched when one of its ids sits in a bag (inside its length, in range), even with
per-sample weight 0 (its gradient is then 0, as in TorchRec).

Usage (unsharded)::

  rows = gather_feature_rows(params, kjt, tables)        # {feature: [B, L, d]}
  loss, (g_dense, g_rows) = jax.value_and_grad(loss_fn, (0, 1))(dense, rows)  # pools inside
  params, states = apply_row_grads(opt, params, states, kjt, tables, g_rows)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxrec.embeddings.collection import (  # pylint: disable=unused-import (re-exported)
    gather_feature_rows, pool_feature_rows, valid_slots)
from jaxrec.embeddings.config import EmbeddingBagConfig
from jaxrec.embeddings.jagged import KeyedJagged

KINDS = ('sgd', 'adagrad', 'rowwise_adagrad', 'adam')


@dataclasses.dataclass(frozen=True)
class SparseOptimizer:
  """A row-sparse optimizer (see the module docstring for the update rules).

  Attributes:
    kind: one of ``KINDS``.
    learning_rate: step size.
    eps: epsilon (defaults: optax's for adagrad 1e-7 and adam 1e-8; fbgemm's 1e-8 row-wise).
    initial_accumulator_value: Adagrad's starting accumulator (optax's 0.1; row-wise: 0).
    b1, b2: Adam's decay rates.
  """
  kind: str
  learning_rate: float = 0.01
  eps: float | None = None
  initial_accumulator_value: float | None = None
  b1: float = 0.9
  b2: float = 0.999

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'sparse optimizer kind must be one of {KINDS}, got {self.kind!r}')
    # A traced learning rate (the trainer decays it on plateau inside the jitted step) is not
    # checked here; the trainer checks the configured value.
    if isinstance(self.learning_rate, (int, float)) and self.learning_rate <= 0:
      raise ValueError(f'sparse optimizer {self.kind!r}: learning_rate must be > 0, got '
                       f'{self.learning_rate}')

  @property
  def _eps(self) -> float:
    if self.eps is not None:
      return self.eps
    return 1e-7 if self.kind == 'adagrad' else 1e-8

  @property
  def _acc0(self) -> float:
    if self.initial_accumulator_value is not None:
      return self.initial_accumulator_value
    return 0.1 if self.kind == 'adagrad' else 0.0

  def init(self, table: jnp.ndarray) -> dict:
    """The state of one table ``[R, d]`` (row-shaped leaves ``[R, ...]`` plus scalars)."""
    r = table.shape[0]
    if self.kind == 'adagrad':
      return {'acc': jnp.full(table.shape, self._acc0, jnp.float32)}
    if self.kind == 'rowwise_adagrad':
      return {'acc': jnp.full((r,), self._acc0, jnp.float32)}
    if self.kind == 'adam':
      return {'m': jnp.zeros(table.shape, jnp.float32), 'v': jnp.zeros(table.shape, jnp.float32),
              'count': jnp.zeros((), jnp.int32)}
    return {}

  def update_rows(self, w: jnp.ndarray, g: jnp.ndarray, st: dict,
                  count: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """New ``w [U, d]`` and row state from summed gradients ``g [U, d]`` (``count``: Adam step)."""
    lr = self.learning_rate
    if self.kind == 'sgd':
      return w - lr * g, st
    if self.kind == 'adagrad':
      acc = st['acc'] + jnp.square(g)
      upd = jnp.where(acc > 0, jax.lax.rsqrt(acc + self._eps), 0.0) * g
      return w - lr * upd, {'acc': acc}
    if self.kind == 'rowwise_adagrad':
      acc = st['acc'] + jnp.mean(jnp.square(g), axis=-1)
      return w - (lr / (jnp.sqrt(acc) + self._eps))[:, None] * g, {'acc': acc}
    m = self.b1 * st['m'] + (1 - self.b1) * g
    v = self.b2 * st['v'] + (1 - self.b2) * jnp.square(g)
    c = count.astype(jnp.float32)
    m_hat = m / (1 - self.b1 ** c)
    v_hat = v / (1 - self.b2 ** c)
    return w - lr * (m_hat / (jnp.sqrt(v_hat) + self._eps)), {'m': m, 'v': v}

  def apply(self, table: jnp.ndarray, state: dict, ids: jnp.ndarray, row_grads: jnp.ndarray,
            touched: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """Updates the touched rows of ``table`` and ``state``.

    Args:
      table: ``[R, d]``.
      state: from ``init``.
      ids: ``int [N]`` row of each looked-up slot.
      row_grads: ``[N, d]`` gradient of the loss w.r.t. each looked-up row.
      touched: ``bool [N]``: which slots are real lookups (others are ignored).

    Returns:
      (table, state) with only the touched rows changed (and Adam's step count).
    """
    r, n = table.shape[0], ids.shape[0]
    idx = jnp.where(touched, ids, r)  # r: sentinel, dropped by the scatter
    uniq, inv = jnp.unique(idx, size=n, fill_value=r, return_inverse=True)  # [N], [N]
    g = jax.ops.segment_sum(jnp.where(touched[:, None], row_grads, 0).astype(jnp.float32),
                            inv.reshape(-1), num_segments=n)  # [N, d], summed per unique id
    safe = jnp.clip(uniq, 0, r - 1)
    row_state = {k: v[safe] for k, v in state.items() if k != 'count'}
    count = state['count'] + 1 if 'count' in state else jnp.zeros((), jnp.int32)
    new_w, new_st = self.update_rows(table[safe].astype(jnp.float32), g, row_state, count)
    table = table.at[uniq].set(new_w.astype(table.dtype), mode='drop')
    state = {k: (state[k].at[uniq].set(v, mode='drop')) for k, v in new_st.items()}
    if self.kind == 'adam':
      state['count'] = count
    return table, state


def init_states(opt: SparseOptimizer, params: dict,
                tables: Sequence[EmbeddingBagConfig]) -> dict:
  """``{table name: state}``."""
  return {t.name: opt.init(params[t.name]) for t in tables}


def apply_row_grads(opt: SparseOptimizer, params: dict, states: dict, kjt: KeyedJagged,
                    tables: Sequence[EmbeddingBagConfig], row_grads: dict) -> tuple[dict, dict]:
  """Applies ``{feature: [B, L, d]}`` row gradients to each table's touched rows."""
  params, states = dict(params), dict(states)
  for t in tables:
    ids, grads, touched = [], [], []
    for f in t.feature_names:
      col = kjt.index(f)
      ids.append(kjt.ids[:, col].reshape(-1))
      grads.append(row_grads[f].reshape(-1, t.embedding_dim))
      touched.append(valid_slots(kjt, col, t.num_embeddings).reshape(-1))
    params[t.name], states[t.name] = opt.apply(params[t.name], states[t.name],
                                               jnp.concatenate(ids), jnp.concatenate(grads),
                                               jnp.concatenate(touched))
  return params, states
