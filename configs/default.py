"""The main job: DCNv2 on the embedded synthetic CTR data (no files needed), a few minutes on 2 CPUs.

    python scripts/train.py --config configs/default.py --workdir runs/default

Every config starts from :func:`jaxrec.train.config.base_config` and overrides what differs.
"""

import ml_collections

from jaxrec.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options = ml_collections.ConfigDict(dict(
      num_train=400_000, num_valid=50_000, num_test=50_000, seed=0))
  c.model = 'dcnv2'
  c.embedding_dim = 16
  c.model_kwargs = ml_collections.ConfigDict(dict(
      model_structure='parallel', num_cross_layers=3, parallel_dnn_hidden_units=(256, 256),
      dropout_rate=0.0, batch_norm=False))
  c.num_epochs = 3
  c.early_stop_patience = 1
  return c
