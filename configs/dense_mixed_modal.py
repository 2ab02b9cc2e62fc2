"""A dense decoder LM on the mixed-modal data: Frappe app descriptions
interleaved with Fashion-MNIST images as 4x4-patch codes (docs/mot.md). Size 's' of
``jaxrec.train.config.MIXED_MODAL_SIZES``; ``--config.model_kwargs.*`` overrides.

    python scripts/train.py --config configs/dense_mixed_modal.py --workdir runs/dense_mixed_modal
"""

import ml_collections

from jaxrec.train.config import mixed_modal_config


def get_config() -> ml_collections.ConfigDict:
  return mixed_modal_config('none', 's')
