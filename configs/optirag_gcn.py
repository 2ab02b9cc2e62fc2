"""OptiRAG-Rec on MovieLens-100K: evidence from the LightGCN retriever
(train the GCN first: scripts/train_gcn.py).

    python scripts/train_optirag.py --config configs/optirag_gcn.py --workdir runs/optirag_gcn \
        --gcn_embeddings runs/gcn/gcn_embeddings.npz

Settings: jaxrec.models.optirag.optirag_config (64-token prompts, 5 history items, 5 similar
users, embeddings + 2 lowest layers frozen, 4 upper layers and 6 exit heads fine-tuned for
one epoch over 5,000 of the 9,430 training prompts, batch 16); see docs/optirag.md.
"""

import ml_collections

from jaxrec.models.optirag import optirag_config


def get_config() -> ml_collections.ConfigDict:
  return optirag_config('gcn')
