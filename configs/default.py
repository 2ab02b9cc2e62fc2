"""The main job: DCNv2 on the embedded synthetic CTR data (no files needed), minutes on 2 CPUs.

    python scripts/train.py --config configs/default.py --workdir runs/default

The data: 8 one-hot fields (vocab 100 down to 12, Zipf ids) and 8 dense features, labelled by a
planted teacher of dimension 4 whose logit mixes interactions of order 1 to 4
(jaxrec/data/synthetic.py); 1,000,000 fresh training rows, so five epochs do not overfit. The run
prints the Bayes-optimal metrics (the teacher's true click probabilities, ``bayes_optimal_valid``
and ``bayes_optimal_test``) beside the model's; README.md states the figures it reaches.

Every config starts from :func:`jaxrec.train.config.base_config` and overrides what differs.
"""

import ml_collections

from jaxrec.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options.synthetic.update(dict(
      num_train=1_000_000, num_valid=50_000, num_test=50_000, seed=0,
      num_sparse=8, num_dense=8, max_vocab=100, teacher_dim=4))
  c.model = 'dcnv2'
  c.embedding_dim = 16
  c.model_kwargs = ml_collections.ConfigDict(dict(
      model_structure='parallel', num_cross_layers=3, parallel_dnn_hidden_units=(256, 256),
      dropout_rate=0.0, batch_norm=False))
  c.batch_size = 2048
  c.learning_rate = 4e-3
  c.num_epochs = 5
  return c
