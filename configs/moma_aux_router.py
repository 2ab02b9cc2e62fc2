"""MoMa's second phase (docs/moma.md): train the auxiliary routers of a trained
configs/moma_mixed_modal.py run (same variant after ``:``), everything else frozen, and score
validation with causal routing (each token routed by the auxiliary routers alone).

    python scripts/train.py --config configs/moma_aux_router.py:moma --workdir runs/moma_aux \
        --fork_from runs/moma
"""

import ml_collections

from jaxrec.train.config import aux_router_config


def get_config(variant: str = 'moma') -> ml_collections.ConfigDict:
  return aux_router_config(variant or 'moma', 's')
