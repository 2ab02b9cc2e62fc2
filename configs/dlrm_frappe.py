"""DLRM on Frappe_x1 with the BARS leaderboard hyperparameters.

    python scripts/train.py --config configs/dlrm_frappe.py --workdir runs/dlrm_frappe \
        --config.data_dir=../shared/data/frappe

BARS run ``DLRM_frappe_x1_006_216831a3`` (FuxiCTR 1.2.1), from reczoo/BARS
``ranking/ctr/DLRM/DLRM_frappe_x1/`` (README.md log; ``DLRM_frappe_x1_tuner_config_02.csv``):
embedding_dim 10, interaction ``cat`` (flattened embeddings, not dot products), top MLP
[400, 400, 400] ReLU with dropout 0.4, BatchNorm on, no bottom MLP (``bottom_mlp_units: None``;
Frappe has no dense features), embedding_regularizer 0.1, net_regularizer 0, batch 4096,
Adam 1e-3, monitor AUC, seed 2021.
Reported test AUC 0.983995 / logloss 0.144441.
See docs/bars_frappe_hparams.md.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config(
      'dlrm',
      top_mlp_units=(400, 400, 400),
      bottom_mlp_units=(),  # BARS None; unused since Frappe has no dense features
      activation='relu',  # BARS top_mlp_activations = bottom_mlp_activations = ReLU
      top_dropout_rate=0.4,
      bottom_dropout_rate=0.0,
      interaction='cat',
      batch_norm=True)
  c.embedding_regularizer = 0.1
  return c
