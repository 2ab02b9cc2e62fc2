"""A Mixture-of-Transformers decoder LM (every non-embedding parameter untied by modality,
one global causal attention) on the mixed-modal data: Frappe app descriptions
interleaved with Fashion-MNIST images as 4x4-patch codes (docs/mot.md). Size 's' of
``jaxrec.train.config.MIXED_MODAL_SIZES``; ``--config.model_kwargs.*`` overrides.

    python scripts/train.py --config configs/mot_mixed_modal.py --workdir runs/mot_mixed_modal
"""

import ml_collections

from jaxrec.train.config import mixed_modal_config


def get_config() -> ml_collections.ConfigDict:
  return mixed_modal_config('mot', 's')
