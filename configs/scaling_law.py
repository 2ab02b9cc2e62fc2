"""The scaling-law study (scripts/scaling_law.py): data, optimisation and one size ladder per model.

    python scripts/scaling_law.py --preset full --out docs/scaling_law
    python scripts/scaling_law.py --preset reduced --out /tmp/scaling   # seconds (the test's)

Presets:

* ``full``: 8 one-hot fields (vocab 50 down to 10, Zipf 1.05 ids), no dense features, a teacher
  of dimension 4 whose logit draws most of its variance from order-3 and order-4 interactions
  (logit standard deviations 0.5 / 1.0 / 1.5 / 1.5 for orders 1-4; 16 planted triples and
  quadruples), positive rate 0.25; 300,000 training rows streamed once (batch 256, Adam 3e-3, no
  regularisation: no row is seen twice, so nothing can overfit), 50,000 test rows; embedding dim
  16 for every model. Ladders from about 1e4 to 1.2e6 forward FLOPs per example (two orders of
  magnitude; DLRM's starts lower):

  - Wukong: ``upscale`` of a 1-layer base (nF = nL = k = 4, FMB MLP [32], top MLP [64]) by width
    factors 0.5 ... 4.5 with 1 to 3 layers;
  - DLRM: dot interaction, top MLP widened and deepened ([16] ... [512, 512, 512]);
  - DCNv2: parallel structure with the low-rank mixture cross network (2 experts), cross layers
    1 -> 3, rank 2 -> 64, DNN [16] -> [512, 512, 512].

  About 20 minutes on 2 loaded CPU cores; raise ``num_train`` (and the ladders) on an
  accelerator.
* ``reduced``: the same data and optimisation, 16,384 training and 4,096 test rows, two small
  sizes per model: the test's seconds-long version of the same pipeline.
"""

import ml_collections

from jaxrec.models.wukong import upscale

WUKONG_BASE = dict(num_layers=1, num_fm_embeddings=4, num_lcb_embeddings=4, fm_rank=4,
                   fmb_mlp_units=(32,), top_mlp_units=(64,))


def _wukong(steps) -> list:
  return [upscale(WUKONG_BASE, factor, depth) for factor, depth in steps]


def _dlrm(steps) -> list:
  return [dict(interaction='dot', top_mlp_units=(width,) * depth) for width, depth in steps]


def _dcnv2(steps) -> list:
  return [dict(model_structure='parallel', use_low_rank_mixture=True, num_experts=2,
               num_cross_layers=layers, low_rank=rank, parallel_dnn_hidden_units=(width,) * depth)
          for layers, rank, width, depth in steps]


def get_config(preset: str = 'full') -> ml_collections.ConfigDict:
  """The study's settings; ``preset`` is ``'full'`` or ``'reduced'``."""
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.embedding_dim = 16
  c.batch_size = 256
  c.learning_rate = 3e-3
  c.max_grad_norm = 10.0
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      seed=0, num_sparse=8, num_dense=0, min_vocab=10, max_vocab=50, vocab_exponent=1.0,
      zipf_exponent=1.05, teacher_dim=4, weight_order1=0.5, weight_dense=0.0,
      weight_order2=1.0, weight_order3=1.5, weight_order4=1.5, positive_rate=0.25))
  c.num_train = 300_000
  c.num_test = 50_000
  c.models = ml_collections.ConfigDict(dict(
      wukong=_wukong([(0.5, 1), (1, 1), (1.5, 2), (2, 2), (3, 3), (4.5, 3)]),
      dlrm=_dlrm([(16, 1), (64, 1), (128, 2), (256, 2), (384, 3), (512, 3)]),
      dcnv2=_dcnv2([(1, 2, 16, 1), (1, 8, 32, 1), (2, 16, 64, 2), (2, 32, 128, 2),
                    (3, 64, 256, 3), (3, 64, 512, 3)]),
  ))
  if preset == 'reduced':
    c.num_train = 16384
    c.num_test = 4096
    c.models = ml_collections.ConfigDict(dict(
        wukong=_wukong([(0.5, 1), (1, 2)]),
        dlrm=_dlrm([(16, 1), (64, 2)]),
        dcnv2=_dcnv2([(1, 2, 16, 1), (2, 4, 64, 2)]),
    ))
  elif preset != 'full':
    raise ValueError(f"configs/scaling_law.py: preset must be 'full' or 'reduced', got {preset!r}")
  return c
