"""LR (logistic regression) on Frappe_x1 with the BARS leaderboard hyperparameters.

    python scripts/train.py --config configs/lr_frappe.py --workdir runs/lr_frappe \
        --config.data_dir=../shared/data/frappe

BARS run ``LR_frappe_x1_001_ff730f43`` (FuxiCTR 1.x), from reczoo/BARS
``ranking/ctr/LR/LR_frappe_x1/`` (README.md log and ``LR_frappe_x1_tuner_config_01/model_config.yaml``):
``regularizer: 1e-05``, which FuxiCTR's LR passes as both embedding_regularizer (the per-id weights)
and net_regularizer (the bias); batch 4096, Adam 1e-3, monitor AUC, 100 epochs, seed 2021.
Reported test AUC 0.935584 / logloss 0.307643 (it was still improving at epoch 100).
LR has no ``d``-dim embeddings; ``embedding_dim`` is left at the default and unused.
See docs/bars_frappe_hparams.md.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config('lr')
  c.embedding_regularizer = 1e-5  # FuxiCTR LR: regularizer=1e-5 -> embedding and net
  c.net_regularizer = 1e-5
  return c
