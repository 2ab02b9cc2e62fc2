"""The interaction graph as a jraph GraphsTuple."""

import numpy as np
import pytest

from jaxrec.retrieval.graph import interaction_graph, node_degrees


def test_bipartite_graph_with_both_directions():
  g = interaction_graph(np.array([0, 0, 2]), np.array([1, 0, 1]), num_users=3, num_items=2)
  assert int(g.n_node[0]) == 5 and int(g.n_edge[0]) == 6
  np.testing.assert_array_equal(g.nodes, np.arange(5))
  edges = set(zip(g.senders.tolist(), g.receivers.tolist()))
  assert edges == {(0, 4), (0, 3), (2, 4), (4, 0), (3, 0), (4, 2)}
  np.testing.assert_array_equal(node_degrees(g), [2, 0, 1, 1, 2])


@pytest.mark.parametrize('users,items,match', [
    ([0, 3], [0, 0], r'users\[1\] = 3 is outside \[0, 3\)'),
    ([0, 1], [0, -1], r'items\[1\] = -1 is outside \[0, 2\)'),
    ([1, 0, 1], [1, 0, 1], r'interaction 2 \(user 1, item 1\) is a duplicate'),
    ([0], [0, 1], 'must be equal 1-d shapes'),
])
def test_bad_interactions_are_named(users, items, match):
  with pytest.raises(ValueError, match=match):
    interaction_graph(np.array(users), np.array(items), 3, 2)
