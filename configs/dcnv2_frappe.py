"""DCNv2 on Frappe_x1 with the BARS leaderboard hyperparameters.

    python scripts/train.py --config configs/dcnv2_frappe.py --workdir runs/dcnv2_frappe \
        --config.data_dir=../shared/data/frappe

BARS run ``DCNv2_frappe_x1_007_c207b717`` (FuxiCTR 1.1.0), from reczoo/BARS
``ranking/ctr/DCNv2/DCNv2_frappe_x1/`` (README.md log and
``DCNv2_frappe_x1_tuner_config_03/model_config.yaml``): parallel structure, 4 full-rank cross
layers, DNN [400, 400, 400] ReLU with BatchNorm and dropout 0.4, embedding_dim 10,
embedding_regularizer 0.05, net_regularizer 0, batch 4096, Adam 1e-3, monitor AUC, seed 2021.
Reported test AUC 0.984478 / logloss 0.149149 (seed 2021; 5-run mean 0.983824 / 0.152036).
``stacked_dnn_hidden_units``, ``low_rank`` and ``num_experts`` are unused by this structure but
kept as BARS set them. See docs/bars_frappe_hparams.md.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config(
      'dcnv2',
      model_structure='parallel',
      num_cross_layers=4,
      use_low_rank_mixture=False,
      low_rank=32,
      num_experts=4,
      stacked_dnn_hidden_units=(500, 500, 500),
      parallel_dnn_hidden_units=(400, 400, 400),
      activation='relu',
      dropout_rate=0.4,
      batch_norm=True)
  c.embedding_regularizer = 0.05
  return c
