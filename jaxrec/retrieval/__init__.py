"""Retrieval for OptiRAG-Rec: the user-item graph (jraph), LightGCN, top-N similar users.

* :mod:`~jaxrec.retrieval.graph`: interactions -> a bipartite ``jraph.GraphsTuple``.
* :mod:`~jaxrec.retrieval.lightgcn`: LightGCN propagation (``jraph.GraphConvolution``), BPR
  training, Recall@k / NDCG@k.
* :mod:`~jaxrec.retrieval.retriever`: the evidence of a query (the target's ratings by the most
  similar users, ``jax.lax.top_k``) and the GCN retriever.
* :mod:`~jaxrec.retrieval.lm_retriever`: the text-encoder retriever baseline.
* :mod:`~jaxrec.retrieval.pipeline`: the above on MovieLens prompt data
  (:mod:`jaxrec.data.ml_prompts`).
"""
