"""ResNet-20 on Fashion-MNIST (validation carved from train), the SMC paper's CIFAR recipe scaled
to this CPU: SGD momentum 0.9, learning rate 0.1 on a cosine schedule, weight decay 5e-4 (coupled,
as PyTorch's SGD), batch 128, random crop (2 px padding) and horizontal flip; every epoch trained
(no early stop), the best validation accuracy's checkpoint kept.

    python scripts/train.py --config configs/resnet_fashion_mnist.py --workdir runs/resnet_fmnist \
        --config.data_dir=../shared/data/fashion-mnist
"""

import ml_collections

from jaxrec.train.config import fashion_mnist_config


def get_config() -> ml_collections.ConfigDict:
  c = fashion_mnist_config('resnet', blocks_per_stage=3, width=16)
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.net_regularizer = 5e-4
  c.lr_schedule = 'cosine'
  return c
