"""Retrieval on :class:`jaxrec.data.ml_prompts.PromptData`: the GCN trained on its graph part,
Recall/NDCG of the GCN, and the retrievers built from its corpus."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from jaxrec.data.ml_prompts import PARTS, PromptData, user_history_text
from jaxrec.retrieval.graph import interaction_graph
from jaxrec.retrieval.lightgcn import LightGCNConfig, recall_ndcg, train_lightgcn
from jaxrec.retrieval.lm_retriever import LMRetriever, TextEncoder
from jaxrec.retrieval.retriever import GCNRetriever


def gcn_embeddings(data: PromptData, config: LightGCNConfig,
                   log: Optional[Callable[[int, float], None]] = None) -> np.ndarray:
  """LightGCN node embeddings ``[U + I, D]`` trained on the graph part's positive interactions."""
  users, items = data.graph_edges(positive_only=True)
  graph = interaction_graph(users, items, data.num_users, data.num_items)
  return np.asarray(train_lightgcn(graph, data.num_users, data.num_items, config, log))


def _matrix(data: PromptData, parts, positive_only: bool) -> np.ndarray:
  sel = np.isin(data.part, [PARTS.index(p) for p in parts])
  if positive_only:
    sel &= data.label > 0
  out = np.zeros((data.num_users, data.num_items), bool)
  out[data.user[sel], data.item[sel]] = True
  return out


def gcn_metrics(data: PromptData, node_emb: np.ndarray, k: int = 20) -> dict:
  """Recall@k / NDCG@k of user-item scores ``<e_u, e_i>``.

  ``heldout``: every positive after the graph part is relevant, the graph interactions are not
  ranked. ``test``: the test positives are relevant, every earlier interaction is not ranked.
  """
  U = data.num_users
  user_emb, item_emb = node_emb[:U], node_emb[U:]
  return {
      'heldout': recall_ndcg(user_emb, item_emb, _matrix(data, ('graph',), False),
                             _matrix(data, ('train', 'valid', 'test'), True), k),
      'test': recall_ndcg(user_emb, item_emb, _matrix(data, ('graph', 'train', 'valid'), False),
                          _matrix(data, ('test',), True), k)}


def gcn_retriever(data: PromptData, node_emb: np.ndarray) -> GCNRetriever:
  """The GCN retriever over the graph part's ratings."""
  return GCNRetriever.from_embeddings(node_emb, data.num_users, data.graph_ratings())


def lm_retriever(data: PromptData, encoder: TextEncoder, history_length: int) -> LMRetriever:
  """The LM retriever: every user's graph-part history text and every item text encoded."""
  texts = [user_history_text(data, u, 'graph', history_length) for u in range(data.num_users)]
  return LMRetriever.build(encoder, texts, data.item_texts, data.graph_ratings())
