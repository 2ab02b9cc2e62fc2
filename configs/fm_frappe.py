"""FM (factorization machine) on Frappe_x1 with the BARS leaderboard hyperparameters.

    python scripts/train.py --config configs/fm_frappe.py --workdir runs/fm_frappe \
        --config.data_dir=../shared/data/frappe

BARS run ``FM_frappe_x1_001_6234f1e3`` (FuxiCTR 1.x), from reczoo/BARS
``ranking/ctr/FM/FM_frappe_x1/`` (``FM_frappe_x1_tuner_config_03/model_config.yaml``; the README
log is of the same settings under the older id ``FM_frappe_x1_001_b16e1650``): embedding_dim 10,
embedding_dropout 0, ``regularizer: 5e-06``, which FuxiCTR's FM passes as both
embedding_regularizer (first-order weights and the 10-dim tables) and net_regularizer (the bias);
batch 4096, Adam 1e-3, monitor AUC, 100 epochs, seed 2021.
Reported test AUC 0.967108 / logloss 0.206515 (still improving at epoch 100).
See docs/bars_frappe_hparams.md.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config('fm')  # FuxiCTR embedding_dropout=0: nothing to set
  c.embedding_regularizer = 5e-6  # FuxiCTR FM: regularizer=5e-6 -> embedding and net
  c.net_regularizer = 5e-6
  return c
