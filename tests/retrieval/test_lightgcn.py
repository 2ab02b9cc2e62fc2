"""LightGCN propagation against the dense normalised adjacency, BPR, negatives and metrics."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.retrieval import lightgcn
from jaxrec.retrieval.graph import interaction_graph

USERS = np.array([0, 0, 1, 2, 2, 2, 3])
ITEMS = np.array([0, 1, 1, 1, 2, 3, 4])
U, I = 5, 5  # user 4 has no interaction


def test_propagation_matches_dense_lightgcn():
  g = interaction_graph(USERS, ITEMS, U, I)
  emb = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (U + I, 3)), np.float64)
  a = np.zeros((U + I, U + I))
  a[USERS, U + ITEMS] = a[U + ITEMS, USERS] = 1.0
  d = a.sum(1)
  inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1)), 0.0)
  norm = inv[:, None] * a * inv[None, :]
  layers = [emb]
  for _ in range(3):
    layers.append(norm @ layers[-1])
  want = np.mean(layers, axis=0)
  got = jax.jit(lightgcn.propagate, static_argnums=2)(g, jnp.asarray(emb, jnp.float32), 3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bpr_loss_matches_formula():
  rng = np.random.default_rng(0)
  final, ego = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  u, p, n = np.array([0, 1]), np.array([3, 4]), np.array([5, 3])
  diff = (final[u] * final[p]).sum(1) - (final[u] * final[n]).sum(1)
  reg = ((ego[u] ** 2).sum() + (ego[p] ** 2).sum() + (ego[n] ** 2).sum()) / 2
  want = np.mean(np.log1p(np.exp(-diff))) + 0.1 * reg / 2
  got = lightgcn.bpr_loss(jnp.asarray(final, jnp.float32), jnp.asarray(ego, jnp.float32), u, p,
                          n, 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_negatives_are_unseen():
  seen = np.zeros((3, 4), bool)
  seen[0, :3] = True  # user 0's only unseen item is 3
  seen[1, 1] = True
  users = np.array([0] * 50 + [1] * 50)
  neg = lightgcn.sample_negatives(np.random.default_rng(0), users, seen, 4)
  assert not seen[users, neg].any()
  assert (neg[:50] == 3).all()


def test_training_separates_two_communities():
  # users 0-3 like items 0-3, users 4-7 like items 4-7 (each misses one: the held-out item)
  users, items, held = [], [], np.zeros((8, 8), bool)
  for u in range(8):
    block = range(0, 4) if u < 4 else range(4, 8)
    for j, i in enumerate(block):
      if j == u % 4:
        held[u, i] = True
      else:
        users.append(u)
        items.append(i)
  g = interaction_graph(np.array(users), np.array(items), 8, 8)
  cfg = lightgcn.LightGCNConfig(dim=8, num_layers=2, learning_rate=0.05, l2=1e-4, batch_size=24,
                                epochs=40, seed=0)
  losses = []
  emb = lightgcn.train_lightgcn(g, 8, 8, cfg, log=lambda e, l: losses.append(l))
  assert losses[-1] < 0.5 * losses[0]
  exclude = np.zeros((8, 8), bool)
  exclude[users, items] = True
  m = lightgcn.recall_ndcg(emb[:8], emb[8:], exclude, held, k=1)
  assert m['recall@1'] == 1.0 and m['users'] == 8


def test_recall_and_ndcg_by_hand():
  user = jnp.array([[1.0, 0.0]])
  item = jnp.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.5, 0.0]])  # ranked 0, 1, 2, 3
  exclude = np.array([[True, False, False, False]])  # ranking: 1, 2, 3
  held = np.array([[False, False, True, True]])  # relevant 2 (rank 2), 3 (rank 3)
  m = lightgcn.recall_ndcg(user, item, exclude, held, k=2)
  assert m['recall@2'] == 0.5
  np.testing.assert_allclose(m['ndcg@2'], (1 / np.log2(3)) / (1 + 1 / np.log2(3)))
