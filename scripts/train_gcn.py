"""Train the LightGCN retriever on the MovieLens-100K retrieval graph and report Recall/NDCG@20.

    python scripts/train_gcn.py --data_dir ../shared/data/movielens-100k --workdir runs/gcn

Writes ``gcn_embeddings.npz`` (``node_emb [U + I, D]``, ``num_users``) and ``gcn_results.json``
to the workdir. The graph is the ``graph`` part's positive interactions (see
:mod:`jaxrec.data.ml_prompts`). Two evaluations: ``heldout`` ranks all items but the user's
graph interactions against all later positives; ``test`` ranks all items but every earlier
interaction against the test positives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from jaxrec.data.ml_prompts import SplitSizes, load_prompt_data
from jaxrec.retrieval.lightgcn import LightGCNConfig
from jaxrec.retrieval.pipeline import gcn_embeddings, gcn_metrics


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data_dir', default='../shared/data/movielens-100k')
  p.add_argument('--workdir', required=True)
  for f in dataclasses.fields(LightGCNConfig):
    p.add_argument(f'--{f.name}', type=type(f.default), default=f.default)
  p.add_argument('--train_per_user', type=int, default=SplitSizes.train_per_user)
  p.add_argument('--valid_per_user', type=int, default=SplitSizes.valid_per_user)
  p.add_argument('--test_per_user', type=int, default=SplitSizes.test_per_user)
  a = p.parse_args()
  config = LightGCNConfig(**{f.name: getattr(a, f.name)
                             for f in dataclasses.fields(LightGCNConfig)})
  data = load_prompt_data(a.data_dir, SplitSizes(a.train_per_user, a.valid_per_user,
                                                 a.test_per_user))
  t = time.perf_counter()
  emb = gcn_embeddings(data, config, lambda e, l: print(f'epoch {e}: bpr {l:.4f}', flush=True))
  secs = time.perf_counter() - t
  metrics = gcn_metrics(data, emb)
  os.makedirs(a.workdir, exist_ok=True)
  np.savez(os.path.join(a.workdir, 'gcn_embeddings.npz'), node_emb=emb, num_users=data.num_users)
  res = {'config': dataclasses.asdict(config), 'train_seconds': secs, **metrics}
  with open(os.path.join(a.workdir, 'gcn_results.json'), 'w') as f:
    json.dump(res, f, indent=2)
  print(json.dumps(res, indent=2))


if __name__ == '__main__':
  main()
