"""Wukong on Frappe_x1 with BARS-protocol settings.

    python scripts/train.py --config configs/wukong_frappe.py --workdir runs/wukong_frappe \
        --config.data_dir=../shared/data/frappe

BARS protocol as the baselines (docs/bars_frappe_hparams.md): batch 4096, Adam 1e-3,
validation AUC every epoch, lr x0.1 on a non-improving epoch, stop after 2, seed 2021; but
embedding_dim 64, not BARS's 10 (seed 2021: valid AUC 0.9880 at d = 64, 0.9867 at d = 32, 0.9844
at d = 16, 0.9826 at d = 10).
The Wukong paper publishes no per-dataset hyperparameters for Frappe; these are a small,
Frappe-sized configuration (10 fields): l = 2 layers of nF = nL = 10 embeddings (so every layer
after the first keeps 20 embeddings and an identity residual), rank k = 16 (learned Y), FMB MLP
[256] with dropout 0.2, and a top MLP [400, 400, 400] with BatchNorm and dropout 0.4 like BARS's
DLRM; embedding_regularizer 0.1 as BARS DLRM. Chosen on seed 2021 among the settings listed in
docs/wukong_dhen.md: the regularisation of BARS DeepFM (dropout 0.2, embedding_regularizer
0.05) or weaker overfits sooner.
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config(
      'wukong',
      num_layers=2,
      num_fm_embeddings=10,
      num_lcb_embeddings=10,
      fm_rank=16,
      fm_projection='learned',
      fmb_mlp_units=(256,),
      fmb_dropout_rate=0.2,
      top_mlp_units=(400, 400, 400),
      dropout_rate=0.4,
      batch_norm=True,
      activation='relu')
  c.embedding_regularizer = 0.1
  c.embedding_dim = 64
  return c
