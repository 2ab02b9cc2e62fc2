"""A plain CNN on Fashion-MNIST (validation carved from train): Adam 1e-3 on a cosine schedule,
batch 128, random crop (2 px padding) and horizontal flip, every epoch trained.

    python scripts/train.py --config configs/cnn_fashion_mnist.py --workdir runs/cnn_fmnist \
        --config.data_dir=../shared/data/fashion-mnist
"""

import ml_collections

from jaxrec.train.config import fashion_mnist_config


def get_config() -> ml_collections.ConfigDict:
  c = fashion_mnist_config('cnn', channels=(32, 64), hidden=128, dropout=0.0)
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  return c
