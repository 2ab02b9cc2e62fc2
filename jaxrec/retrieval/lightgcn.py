"""LightGCN (He et al., SIGIR 2020) on a jraph interaction graph, trained with BPR.

Propagation: ``E^{k+1} = D^{-1/2} A D^{-1/2} E^k`` (no weights, no nonlinearity, no self loops),
which is ``jraph.GraphConvolution`` with the identity update and symmetric normalisation; the
final embedding is the mean of ``E^0 .. E^K``. The score of (u, i) is ``<e_u, e_i>``.

BPR: for (u, i+, i-) with i+ an observed item and i- a uniformly drawn unobserved one,
``-log sigmoid(s(u, i+) - s(u, i-))`` averaged over the batch, plus
``l2 / 2 * (|e0_u|^2 + |e0_i+|^2 + |e0_i-|^2) / batch`` on the layer-0 rows (as in LightGCN).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class LightGCNConfig:
  """Hyperparameters (LightGCN's defaults: 64 dims, 3 layers, Adam 1e-3, l2 1e-4, batch 2048)."""
  dim: int = 64
  num_layers: int = 3
  learning_rate: float = 1e-3
  l2: float = 1e-4
  batch_size: int = 2048
  epochs: int = 200
  seed: int = 0


def init_embeddings(key: jax.Array, num_nodes: int, dim: int) -> jax.Array:
  """Layer-0 node embeddings ``[N, dim]``, Xavier-uniform as LightGCN (``nn.init.xavier_uniform_``
  on each table; here one bound over the node count)."""
  bound = float(np.sqrt(6.0 / (num_nodes + dim)))
  return jax.random.uniform(key, (num_nodes, dim), jnp.float32, -bound, bound)


def propagate(graph: jraph.GraphsTuple, emb: jax.Array, num_layers: int) -> jax.Array:
  """Mean of ``emb`` and its ``num_layers`` propagations over ``graph``: ``[N, D]``."""
  conv = jraph.GraphConvolution(update_node_fn=lambda x: x, symmetric_normalization=True)
  g = graph._replace(nodes=emb)
  total = emb
  for _ in range(num_layers):
    g = conv(g)
    total = total + g.nodes
  return total / (num_layers + 1)


def bpr_loss(final: jax.Array, ego: jax.Array, users: jax.Array, pos: jax.Array, neg: jax.Array,
             l2: float) -> jax.Array:
  """BPR loss of node-index triples (items already offset by the user count)."""
  u, p, n = final[users], final[pos], final[neg]  # [B, D]
  diff = jnp.sum(u * p, -1) - jnp.sum(u * n, -1)
  reg = (jnp.sum(ego[users] ** 2) + jnp.sum(ego[pos] ** 2) + jnp.sum(ego[neg] ** 2)) / 2
  return -jnp.mean(jax.nn.log_sigmoid(diff)) + l2 * reg / users.shape[0]


def sample_negatives(rng: np.random.Generator, users: np.ndarray, seen: np.ndarray,
                     num_items: int) -> np.ndarray:
  """One uniformly drawn item per user that the user has not interacted with (``seen`` is a
  ``bool [U, I]`` matrix); redraws collisions until none is left."""
  neg = rng.integers(0, num_items, len(users))
  bad = seen[users, neg]
  while bad.any():
    neg[bad] = rng.integers(0, num_items, int(bad.sum()))
    bad = seen[users, neg]
  return neg


def train_lightgcn(graph: jraph.GraphsTuple, num_users: int, num_items: int,
                   config: LightGCNConfig = LightGCNConfig(),
                   log: Optional[Callable[[int, float], None]] = None) -> jax.Array:
  """Trains LightGCN with BPR on the graph's user->item edges.

  Returns:
    The final (layer-mean) node embeddings ``[U + I, dim]``: users first, then items.
  """
  senders = np.asarray(graph.senders)
  receivers = np.asarray(graph.receivers)
  is_ui = senders < num_users
  users, items = senders[is_ui], receivers[is_ui] - num_users
  if not len(users):
    raise ValueError('the graph has no user->item edges to train on')
  seen = np.zeros((num_users, num_items), bool)
  seen[users, items] = True
  graph = jax.tree.map(jnp.asarray, graph)
  key = jax.random.PRNGKey(config.seed)
  ego = init_embeddings(key, num_users + num_items, config.dim)
  tx = optax.adam(config.learning_rate)
  opt_state = tx.init(ego)

  @jax.jit
  def step(ego, opt_state, u, p, n):
    def loss_fn(e):
      return bpr_loss(propagate(graph, e, config.num_layers), e, u, p, n, config.l2)
    loss, grads = jax.value_and_grad(loss_fn)(ego)
    updates, opt_state = tx.update(grads, opt_state, ego)
    return optax.apply_updates(ego, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  bs = config.batch_size
  for epoch in range(config.epochs):
    order = rng.permutation(len(users))
    neg = sample_negatives(rng, users[order], seen, num_items)
    losses = []
    for s in range(0, max(len(order) - bs, 0) + 1, bs):  # full batches (one if fewer edges)
      idx = order[s:s + bs]
      ego, opt_state, loss = step(ego, opt_state, jnp.asarray(users[idx]),
                                  jnp.asarray(items[idx] + num_users),
                                  jnp.asarray(neg[s:s + bs] + num_users))
      losses.append(loss)
    if log is not None:
      log(epoch, float(jnp.mean(jnp.stack(losses))))
  return propagate(graph, ego, config.num_layers)


@functools.partial(jax.jit, static_argnames=('k',))
def _topk_scores(user_emb, item_emb, exclude, k):
  scores = jnp.where(exclude, -jnp.inf, user_emb @ item_emb.T)
  return jax.lax.top_k(scores, k)[1]


def recall_ndcg(user_emb: jax.Array, item_emb: jax.Array, exclude: np.ndarray,
                held_out: np.ndarray, k: int = 20, batch: int = 256) -> dict[str, float]:
  """Recall@k and NDCG@k averaged over users with at least one held-out item.

  Args:
    user_emb: ``[U, D]``; item_emb: ``[I, D]``.
    exclude: ``bool [U, I]``, items never ranked for a user (the known interactions).
    held_out: ``bool [U, I]``, the relevant items.
  """
  users = np.flatnonzero(held_out.any(1))
  if not len(users):
    raise ValueError('no user has a held-out item')
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  recalls, ndcgs = [], []
  for s in range(0, len(users), batch):
    u = users[s:s + batch]
    top = np.asarray(_topk_scores(user_emb[u], item_emb, jnp.asarray(exclude[u]), k))
    hits = np.take_along_axis(held_out[u], top, 1).astype(np.float64)  # [b, k]
    n_rel = held_out[u].sum(1)
    recalls.append(hits.sum(1) / n_rel)
    ideal = np.array([discounts[:min(n, k)].sum() for n in n_rel])
    ndcgs.append((hits * discounts).sum(1) / ideal)
  return {f'recall@{k}': float(np.mean(np.concatenate(recalls))),
          f'ndcg@{k}': float(np.mean(np.concatenate(ndcgs))), 'users': int(len(users))}
