"""ResNet-20 on Fashion-MNIST trained with SMC-2 (jaxrec.train.recipes.SMC): the recipe of
configs/resnet_fashion_mnist.py plus self-distillation from the other channel's held soft labels,
T = 1.5, alpha = 0.9 reached on a cosine ramp, independently augmented channels (the paper's
semantics; ``--config.smc.views=identical`` gives the released code's).

    python scripts/train.py --config configs/resnet_fashion_mnist_smc.py \
        --workdir runs/resnet_fmnist_smc --config.data_dir=../shared/data/fashion-mnist
"""

import os
import runpy

import ml_collections

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resnet_fashion_mnist.py')


def get_config() -> ml_collections.ConfigDict:
  c = runpy.run_path(_BASE)['get_config']()
  c.recipe = 'smc'
  c.smc.channels = 2
  c.smc.views = 'independent'
  c.smc.alpha = 0.9
  c.smc.temperature = 1.5
  return c
