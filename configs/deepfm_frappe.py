"""DeepFM on Frappe_x1 with the BARS leaderboard hyperparameters.

    python scripts/train.py --config configs/deepfm_frappe.py --workdir runs/deepfm_frappe \
        --config.data_dir=../shared/data/frappe

BARS run ``DeepFM_frappe_x1_001_4ae3a56e`` (FuxiCTR 1.1.0), from reczoo/BARS
``ranking/ctr/DeepFM/DeepFM_frappe_x1/`` (README.md log and
``DeepFM_frappe_x1_tuner_config_02/model_config.yaml``): embedding_dim 10, DNN [400, 400, 400]
ReLU with BatchNorm and dropout 0.2, embedding_regularizer 0.05, net_regularizer 0, batch 4096,
Adam 1e-3, monitor AUC, seed 2021.
Reported test AUC 0.984243 / logloss 0.148174 (seed 2021; 5-run mean 0.983947 / 0.149462).
See docs/bars_frappe_hparams.md.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config('deepfm', hidden_units=(400, 400, 400), activation='relu', dropout_rate=0.2,
                    batch_norm=True)
  c.embedding_regularizer = 0.05
  return c
