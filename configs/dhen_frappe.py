"""DHEN on Frappe_x1 with BARS-protocol settings.

    python scripts/train.py --config configs/dhen_frappe.py --workdir runs/dhen_frappe \
        --config.data_dir=../shared/data/frappe

BARS protocol as the baselines (docs/bars_frappe_hparams.md): batch 4096,
Adam 1e-3, validation AUC every epoch, lr x0.1 on a non-improving epoch, stop after 2, seed 2021.
DHEN publishes no public-dataset configuration; this is a Frappe-sized one (10 fields): two
layers, the first ensembling AdvancedDLRM (dot), self-attention (2 heads of width 16) and linear
modules, the second dot, DCN cross and linear, each module producing 10 embeddings, concatenated,
with a projection shortcut and LayerNorm; a top MLP [400, 400, 400] with BatchNorm and dropout
0.4 and embedding_regularizer 0.1 like BARS's DLRM, and embedding_dim 64 as Wukong's, not BARS's
10 (seed 2021: valid AUC 0.9819 with BARS DeepFM's dropout 0.2 and regularizer 0.05 at d = 10,
0.9832 with these at d = 10, 0.9848 at d = 16, 0.9874 at d = 32, 0.9889 at d = 64;
docs/wukong_dhen.md).
"""

import ml_collections

from jaxrec.train.config import frappe_config


def get_config() -> ml_collections.ConfigDict:
  c = frappe_config(
      'dhen',
      layers=(('dot', 'attention', 'linear'), ('dot', 'cross', 'linear')),
      num_embeddings=10,
      ensemble='concat',
      shortcut='projection',
      num_heads=2,
      ffn_units=40,
      cross_layers=1,
      top_mlp_units=(400, 400, 400),
      dropout_rate=0.4,
      batch_norm=True,
      activation='relu')
  c.embedding_regularizer = 0.1
  c.embedding_dim = 64
  return c
