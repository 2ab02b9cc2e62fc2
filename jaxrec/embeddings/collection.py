"""Unsharded embedding collections: pooled bags (``EmbeddingBagCollection``) and sequences.

The functions here are the reference every sharded lookup is tested against, and the pieces the
sparse optimizers split the lookup into (gather the rows, then pool them):

  rows   = gather_rows(table, ids)                     # [B, L, d]
  w      = effective_weights(batch, col, config)       # [B, L]
  pooled = pool(rows, w, lengths, config.pooling)      # [B, d]

Ids out of range. With ``id_check='error'`` a negative id or one ``>= num_embeddings`` raises a
ValueError naming the table, the feature, the sample and the id (checked on the host for concrete
arrays, through ``jax.debug.callback`` under jit). Otherwise (``id_check='none'``, the default)
such an id contributes a zero row: it adds nothing to its bag, still counts in the bag length of
'mean' pooling, gets no gradient and is never updated; every sharding type behaves the same.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.embeddings.config import EmbeddingBagConfig, validate_configs
from jaxrec.embeddings.jagged import KeyedJagged

ID_CHECKS = ('none', 'error')
# FuxiCTR / BARS initialise embeddings with N(0, 1e-4) (as jaxrec.layers.embedding).
default_embedding_init = nn.initializers.normal(stddev=1e-4)


def valid_slots(kjt: KeyedJagged, col: int, num_rows: int) -> jnp.ndarray:
  """``bool [B, L]``: slots of feature column ``col`` that hold an id in ``[0, num_rows)``."""
  ids = kjt.ids[:, col]
  in_bag = jnp.arange(kjt.max_length)[None, :] < kjt.lengths[:, col, None]
  return in_bag & (ids >= 0) & (ids < num_rows)


def effective_weights(kjt: KeyedJagged, col: int, cfg: EmbeddingBagConfig) -> jnp.ndarray:
  """``float32 [B, L]``: the weight of each slot in its bag (0 for padding / out of range)."""
  w = kjt.weights[:, col] if cfg.weighted else jnp.ones(kjt.ids.shape[::2], jnp.float32)
  return jnp.where(valid_slots(kjt, col, cfg.num_embeddings), w, 0.0)


def gather_rows(table: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """``table [R, d]``, ``ids [...]`` -> ``[..., d]`` (ids clipped into range; mask them out)."""
  return jnp.take(table, jnp.clip(ids, 0, table.shape[0] - 1), axis=0)


def pool(rows: jnp.ndarray, weights: jnp.ndarray, lengths: jnp.ndarray,
         pooling: str) -> jnp.ndarray:
  """``rows [B, L, d]``, ``weights [B, L]``, ``lengths [B]`` -> ``[B, d]`` (sum or mean)."""
  pooled = jnp.einsum('bl,bld->bd', weights.astype(rows.dtype), rows)
  if pooling == 'mean':
    pooled = pooled / jnp.maximum(lengths, 1)[:, None].astype(rows.dtype)
  return pooled


def one_hot_lookup(table: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """``table [R, d]``, ``ids [B]`` -> ``[B, d]``; an id outside ``[0, R)`` gives a zero row."""
  valid = (ids >= 0) & (ids < table.shape[0])
  return jnp.where(valid[:, None], gather_rows(table, ids), 0)


def bag_lookup(table: jnp.ndarray, ids: jnp.ndarray, lengths: jnp.ndarray,
               weights: jnp.ndarray | None, pooling: str) -> jnp.ndarray:
  """One feature's pooled bags: ``ids [B, L]``, ``lengths [B]``, ``weights [B, L]`` -> ``[B, d]``.

  Slots past a bag's length and ids outside the table weigh 0; ``weights=None`` is all ones.
  """
  length = ids.shape[1]
  valid = ((jnp.arange(length)[None, :] < lengths[:, None]) & (ids >= 0)
           & (ids < table.shape[0]))
  w = jnp.ones(ids.shape, table.dtype) if weights is None else weights.astype(table.dtype)
  return pool(gather_rows(table, ids), jnp.where(valid, w, 0), lengths, pooling)


def check_ids(kjt: KeyedJagged, tables: Sequence[EmbeddingBagConfig]) -> None:
  """Raises ValueError for an id outside its table (naming table, feature, sample and id).

  On concrete arrays the check runs now; on traced ones it runs on the host when the program
  runs (the error then surfaces wrapped in JAX's runtime error, message included).
  """
  cols = [(kjt.index(f), t) for t in tables for f in t.feature_names]

  def host_check(ids, lengths):
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    for col, t in cols:
      in_bag = np.arange(ids.shape[2])[None, :] < lengths[:, col, None]
      bad = in_bag & ((ids[:, col] < 0) | (ids[:, col] >= t.num_embeddings))
      if bad.any():
        b, l = np.argwhere(bad)[0]
        raise ValueError(f'table {t.name!r}, feature {kjt.keys[col]!r}: sample {b} has id '
                         f'{ids[b, col, l]} outside [0, {t.num_embeddings})')

  if isinstance(kjt.ids, jax.core.Tracer) or isinstance(kjt.lengths, jax.core.Tracer):
    jax.debug.callback(host_check, kjt.ids, kjt.lengths)
  else:
    host_check(kjt.ids, kjt.lengths)


def gather_feature_rows(params: dict, kjt: KeyedJagged,
                        tables: Sequence[EmbeddingBagConfig]) -> dict[str, jnp.ndarray]:
  """``{feature: [B, L, d]}``: the rows looked up for each slot (the leaves to differentiate)."""
  return {f: gather_rows(params[t.name], kjt.ids[:, kjt.index(f)])
          for t in tables for f in t.feature_names}


def pool_feature_rows(rows: dict, kjt: KeyedJagged,
                      tables: Sequence[EmbeddingBagConfig]) -> dict[str, jnp.ndarray]:
  """``{feature: [B, d]}`` pooled from ``gather_feature_rows``."""
  out = {}
  for t in tables:
    for f in t.feature_names:
      col = kjt.index(f)
      out[f] = pool(rows[f], effective_weights(kjt, col, t), kjt.lengths[:, col], t.pooling)
  return out


def pooled_lookup(params: dict, kjt: KeyedJagged,
                  tables: Sequence[EmbeddingBagConfig]) -> dict[str, jnp.ndarray]:
  """``{table name: [R, d]}`` -> ``{feature: [B, d]}`` for every feature of ``tables``."""
  return pool_feature_rows(gather_feature_rows(params, kjt, tables), kjt, tables)


def sequence_lookup(params: dict, kjt: KeyedJagged,
                    tables: Sequence[EmbeddingBagConfig]) -> dict[str, jnp.ndarray]:
  """``{feature: [B, L, d]}``: each valid id's row, zeros at padding and out-of-range slots."""
  rows = gather_feature_rows(params, kjt, tables)  # {feature: [B, L, d]}
  return {f: jnp.where(valid_slots(kjt, kjt.index(f), t.num_embeddings)[..., None], rows[f], 0)
          for t in tables for f in t.feature_names}


def stack_features(pooled: dict, features: Sequence[str]) -> jnp.ndarray:
  """``{feature: [B, d]}`` -> ``[B, F, d]`` in ``features`` order (all ``d`` equal)."""
  return jnp.stack([pooled[f] for f in features], axis=1)


class _Tables(nn.Module):
  """Shared parameter creation: one ``('vocab', 'embed')`` table per config, named after it."""
  tables: Sequence[EmbeddingBagConfig]
  embedding_init: Callable = default_embedding_init
  dtype: jnp.dtype = jnp.float32
  id_check: str = 'none'

  def _params(self, kjt: KeyedJagged) -> dict:
    tables = validate_configs(self.tables)
    if self.id_check not in ID_CHECKS:
      raise ValueError(f'id_check must be one of {ID_CHECKS}, got {self.id_check!r}')
    if self.id_check == 'error':
      check_ids(kjt, tables)
    init = nn.with_logical_partitioning(self.embedding_init, ('vocab', 'embed'))
    return {t.name: self.param(t.name, init, (t.num_embeddings, t.embedding_dim),
                               jnp.float32).astype(self.dtype) for t in tables}


class EmbeddingBagCollection(_Tables):
  """Pooled lookups of several tables (TorchRec's ``EmbeddingBagCollection``).

  Attributes:
    tables: the ``EmbeddingBagConfig`` s; parameter ``t.name`` is ``float32 [rows, d]`` with
      logical axes ``('vocab', 'embed')``.
    embedding_init: initializer of the tables.
    dtype: computation dtype.
    id_check: 'none' or 'error' (see the module docstring).

  Call:
    kjt: ``KeyedJagged`` holding every feature of the tables (``[B, F, L]``).

  Returns:
    ``{feature: [B, d_table]}``.

  Example::

    ebc = EmbeddingBagCollection((EmbeddingBagConfig('t', 100, 8, ('a', 'b')),))
    variables = ebc.init(key, kjt)
    out = ebc.apply(variables, kjt)      # {'a': [B, 8], 'b': [B, 8]}
  """

  @nn.compact
  def __call__(self, kjt: KeyedJagged) -> dict[str, jnp.ndarray]:
    return pooled_lookup(self._params(kjt), kjt, self.tables)


class EmbeddingCollection(_Tables):
  """Unpooled (sequence) lookups: ``{feature: [B, L, d]}`` (TorchRec's ``EmbeddingCollection``).

  Padding slots and out-of-range ids give zero rows; ``pooling`` and ``weighted`` are ignored.
  Same attributes and parameters as ``EmbeddingBagCollection``.
  """

  @nn.compact
  def __call__(self, kjt: KeyedJagged) -> dict[str, jnp.ndarray]:
    return sequence_lookup(self._params(kjt), kjt, self.tables)
