"""The user-item interaction graph as a ``jraph.GraphsTuple``.

Nodes ``0 .. U-1`` are users, ``U .. U+I-1`` items; every interaction (u, i) is two directed
edges, u -> U+i and U+i -> u, so the adjacency is symmetric and a node's in- and out-degree are
both its number of interactions. Node features are the node ids ``int32 [U + I]``; edges carry no
features.
"""

from __future__ import annotations

import jraph
import numpy as np


def interaction_graph(users: np.ndarray, items: np.ndarray, num_users: int,
                      num_items: int) -> jraph.GraphsTuple:
  """One bipartite graph from interactions ``users int [E]``, ``items int [E]`` (index pairs).

  Returns:
    A single-graph ``GraphsTuple`` with ``U + I`` nodes and ``2 E`` edges.

  Raises:
    ValueError: shapes differ, an index is out of range, or a (user, item) pair repeats.
  """
  users = np.asarray(users)
  items = np.asarray(items)
  if users.shape != items.shape or users.ndim != 1:
    raise ValueError(f'users {users.shape} and items {items.shape} must be equal 1-d shapes')
  for name, x, n in (('users', users, num_users), ('items', items, num_items)):
    if len(x) and (x.min() < 0 or x.max() >= n):
      bad = int(np.flatnonzero((x < 0) | (x >= n))[0])
      raise ValueError(f'{name}[{bad}] = {x[bad]} is outside [0, {n})')
  pairs = users.astype(np.int64) * num_items + items
  if len(np.unique(pairs)) != len(pairs):
    _, first = np.unique(pairs, return_index=True)
    dup = int(np.setdiff1d(np.arange(len(pairs)), first)[0])
    raise ValueError(f'interaction {dup} (user {users[dup]}, item {items[dup]}) is a duplicate')
  u = users.astype(np.int32)
  i = items.astype(np.int32) + num_users
  n_nodes = num_users + num_items
  return jraph.GraphsTuple(
      nodes=np.arange(n_nodes, dtype=np.int32), edges=None,
      senders=np.concatenate([u, i]), receivers=np.concatenate([i, u]),
      n_node=np.array([n_nodes], np.int32), n_edge=np.array([2 * len(u)], np.int32),
      globals=None)


def node_degrees(graph: jraph.GraphsTuple) -> np.ndarray:
  """In-degree of every node, ``int [N]`` (equal to the out-degree for this symmetric graph)."""
  return np.bincount(np.asarray(graph.receivers), minlength=int(np.sum(graph.n_node)))
