"""MoMa and its baselines on the mixed-modal data (docs/moma.md): a decoder LM whose FFNs are
expert-choice mixtures of modality-aware experts (2 text + 2 image), size 's' of
``jaxrec.train.config.MIXED_MODAL_SIZES``. The argument after ``:`` picks a variant of
``jaxrec.train.config.MOMA_VARIANTS``: dense, mot, moe (4 modality-blind experts), moe_mod,
moma (default), moma_mod (mixture-of-depths on every second layer).

    python scripts/train.py --config configs/moma_mixed_modal.py:moma --workdir runs/moma

Causal inference needs the auxiliary routers trained afterwards: configs/moma_aux_router.py.
"""

import ml_collections

from jaxrec.train.config import moma_config


def get_config(variant: str = 'moma') -> ml_collections.ConfigDict:
  return moma_config(variant or 'moma', 's')
