"""Top-N similar-user retrieval with ``jax.lax.top_k``, and the evidence it yields for a prompt.

For a query (user u, target item i) the evidence is the ratings of the target by the ``n`` users
most similar to u (cosine of user embeddings) among those who rated it in the retrieval corpus
(``ratings [U, I]``, 0 = not rated), u excluded. If nobody but u rated i, the target's nearest
neighbour item (cosine of item embeddings) among the rated ones stands in for it. The same code
serves every retriever; they differ in where the embeddings come from:

* :class:`GCNRetriever`: LightGCN user and item embeddings, a table lookup at query time.
* :class:`jaxrec.retrieval.lm_retriever.LMRetriever`: text-encoder embeddings of user histories
  and item texts; the query user's history is encoded at query time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Evidence:
  """Retrieved evidence for ``Q`` queries.

  Attributes:
    users: similar users ``int32 [Q, n]`` (most similar first; -1 where ``valid`` is False).
    ratings: their ratings of ``item`` ``float32 [Q, n]`` (0 where not valid).
    valid: ``bool [Q, n]``.
    item: the rated item ``int32 [Q]``: the target, or its neighbour when nobody else rated the
      target (-1 when there is no rated item at all).
    scores: cosine similarities ``float32 [Q, n]`` (-inf where not valid).
  """
  users: np.ndarray
  ratings: np.ndarray
  valid: np.ndarray
  item: np.ndarray
  scores: np.ndarray

  def ratings_of(self, q: int) -> list[float]:
    return self.ratings[q][self.valid[q]].tolist()


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of ``x [N, D]`` scaled to unit L2 norm."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=('n',))
def similar_raters(query_emb: jax.Array, user_emb: jax.Array, ratings: jax.Array,
                   items: jax.Array, exclude: jax.Array, n: int):
  """The ``n`` users most similar to each query among the raters of its item.

  Args:
    query_emb: ``[Q, D]`` unit rows; user_emb: ``[U, D]`` unit rows.
    ratings: ``int8 [U, I]`` (0 = not rated).
    items: ``int32 [Q]``; exclude: the query's own user index ``int32 [Q]`` (never returned).
    n: users per query.

  Returns:
    ``(scores [Q, n], users [Q, n], item ratings [Q, n])``; scores are -inf past the raters.
  """
  sim = query_emb @ user_emb.T  # [Q, U]
  col = jnp.take(ratings, items, axis=1).T  # [Q, U]
  ok = (col != 0) & (jnp.arange(user_emb.shape[0])[None, :] != exclude[:, None])
  scores, idx = jax.lax.top_k(jnp.where(ok, sim, -jnp.inf), n)
  return scores, idx, jnp.take_along_axis(col, idx, axis=1)


@jax.jit
def nearest_rated_items(item_emb: jax.Array, items: jax.Array, rated: jax.Array) -> jax.Array:
  """For each ``items [Q]``, the most similar other item with ``rated [I]`` True: ``int32 [Q]``
  (-1 if none)."""
  sim = item_emb[items] @ item_emb.T  # [Q, I]
  ok = rated[None, :] & (jnp.arange(item_emb.shape[0])[None, :] != items[:, None])
  score, idx = jax.lax.top_k(jnp.where(ok, sim, -jnp.inf), 1)
  return jnp.where(jnp.isfinite(score[:, 0]), idx[:, 0], -1)


@functools.partial(jax.jit, static_argnames=('n',))
def retrieve_arrays(query_emb: jax.Array, user_emb: jax.Array, item_emb: jax.Array,
                    ratings: jax.Array, raters: jax.Array, users: jax.Array, items: jax.Array,
                    n: int):
  """The whole retrieval of the module docstring as one jitted function.

  Args:
    query_emb: ``[Q, D]`` unit rows; user_emb ``[U, D]`` and item_emb ``[I, D']`` unit rows.
    ratings: ``int8 [U, I]``; raters: raters per item ``int32 [I]`` (``(ratings != 0).sum(0)``).
    users, items: the queries ``int32 [Q]``; n: users per query.

  Returns:
    ``(users [Q, n], ratings [Q, n], valid [Q, n], item [Q], scores [Q, n])`` as in
    :class:`Evidence`.
  """
  own = (ratings[users, items] != 0).astype(raters.dtype)
  neighbour = nearest_rated_items(item_emb, items, raters > 0)
  item = jnp.where(raters[items] - own > 0, items, neighbour)
  scores, idx, rates = similar_raters(query_emb, user_emb, ratings, jnp.maximum(item, 0), users, n)
  valid = jnp.isfinite(scores) & (item[:, None] >= 0)
  return (jnp.where(valid, idx, -1), jnp.where(valid, rates, 0).astype(jnp.float32), valid, item,
          jnp.where(valid, scores, -jnp.inf))


def _evidence(arrays) -> Evidence:
  users, ratings, valid, item, scores = jax.device_get(arrays)
  return Evidence(users.astype(np.int32), ratings, valid, item.astype(np.int32), scores)


@dataclasses.dataclass
class Index:
  """A retrieval corpus: unit user / item embeddings and the ratings behind the evidence.

  Attributes:
    user_emb: ``float32 [U, D]``, unit rows.
    item_emb: ``float32 [I, D']``, unit rows (finds a neighbour item).
    ratings: ``int8 [U, I]``.
  """
  user_emb: jax.Array
  item_emb: jax.Array
  ratings: jax.Array

  def __post_init__(self):
    u, i = self.ratings.shape
    if self.user_emb.shape[0] != u or self.item_emb.shape[0] != i:
      raise ValueError(f'ratings {self.ratings.shape} do not match user_emb '
                       f'{self.user_emb.shape} / item_emb {self.item_emb.shape}')
    self.raters = jnp.sum(self.ratings != 0, axis=0, dtype=jnp.int32)  # [I]

  def retrieve(self, query_emb: jax.Array, users: np.ndarray, items: np.ndarray,
               n: int) -> Evidence:
    """Evidence for queries (``users``, ``items`` ``int [Q]``) with embeddings ``[Q, D]``."""
    return _evidence(retrieve_arrays(query_emb, self.user_emb, self.item_emb, self.ratings,
                                     self.raters, jnp.asarray(users, jnp.int32),
                                     jnp.asarray(items, jnp.int32), n))


@functools.partial(jax.jit, static_argnames=('n',))
def _gcn_retrieve(user_emb, item_emb, ratings, raters, users, items, n):
  return retrieve_arrays(user_emb[users], user_emb, item_emb, ratings, raters, users, items, n)


@dataclasses.dataclass
class GCNRetriever:
  """Similar users by LightGCN embeddings: the query embedding is a row of the index, so a query
  is one jitted lookup + search."""
  index: Index

  @classmethod
  def from_embeddings(cls, node_emb: jax.Array, num_users: int,
                      ratings: np.ndarray) -> 'GCNRetriever':
    """From LightGCN node embeddings ``[U + I, D]`` (users first) and ``ratings [U, I]``."""
    node_emb = jnp.asarray(node_emb, jnp.float32)
    return cls(Index(normalize(node_emb[:num_users]), normalize(node_emb[num_users:]),
                     jnp.asarray(ratings, jnp.int8)))

  def retrieve(self, users: np.ndarray, items: np.ndarray, n: int) -> Evidence:
    ix = self.index
    return _evidence(_gcn_retrieve(ix.user_emb, ix.item_emb, ix.ratings, ix.raters,
                                   jnp.asarray(users, jnp.int32), jnp.asarray(items, jnp.int32), n))


def time_per_query(retrieve: Callable[[np.ndarray, np.ndarray], Evidence], users: np.ndarray,
                   items: np.ndarray, batch_size: int, repeats: int = 3) -> float:
  """Median over ``repeats`` of the wall-clock seconds per query of ``retrieve`` on all queries
  in batches of ``batch_size`` (after one warm-up pass that compiles)."""
  def run():
    for s in range(0, len(users), batch_size):
      ev = retrieve(users[s:s + batch_size], items[s:s + batch_size])
      _ = ev.users  # host arrays: the work is done
  run()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return float(np.median(times)) / len(users)


def evidence_lists(ev: Evidence) -> list[list[float]]:
  """Per query, the valid ratings in similarity order."""
  return [ev.ratings_of(q) for q in range(len(ev.item))]


def batched(fn: Callable[[np.ndarray, np.ndarray], Evidence], users: Sequence[int],
            items: Sequence[int], batch_size: int = 512) -> Evidence:
  """``fn`` over all queries in batches, concatenated."""
  users, items = np.asarray(users), np.asarray(items)
  parts = [fn(users[s:s + batch_size], items[s:s + batch_size])
           for s in range(0, len(users), batch_size)]
  return Evidence(*(np.concatenate([getattr(p, f.name) for p in parts])
                    for f in dataclasses.fields(Evidence)))
