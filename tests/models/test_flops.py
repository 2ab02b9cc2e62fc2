"""The analytic FLOP counter against XLA's cost analysis of each model's compiled forward.

Per-example XLA FLOPs are the difference between batch sizes 32 and 16 divided by 16 (so work
that does not scale with the batch drops out; at batch 8 XLA's CPU fusion choices differ), counting ``flops + transcendentals`` (the counter counts
a transcendental as one FLOP). Stated tolerances:

* every model with a dense network, at its Frappe config: 1% relative;
* the same models in small configurations covering every option (dense features, multi-hot bags,
  dot interaction, low-rank mixture, projected FM, all DHEN modules and ensembles): 4% relative;
  at these sizes XLA's own extra work is visible (index arithmetic of the embedding gathers,
  elementwise producers such as a LayerNorm recomputed inside each consumer fusion);
* LR and FM (no matmuls): XLA's count exceeds the model arithmetic by the gathers' index
  arithmetic only: ``0 <= xla - analytic <= 20`` FLOPs per looked-up id and table.
"""

import functools
import os
import runpy

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.data.schema import one_hot_schema
from jaxrec.models import build_model
from jaxrec.models.flops import (config_flops, flops_breakdown, optimized_fm, per_example_flops,
                                 training_config_flops, wukong_layer)
from jaxrec.models.wukong import upscale
from tests.models.tiny import MIXED, make_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRAPPE = one_hot_schema([f'f{i}' for i in range(10)], [50] * 10)  # Frappe_x1's 10 fields
FEATURES = ('sparse', 'dense', 'multi_hot_ids', 'multi_hot_lengths', 'multi_hot_weights')


def xla_flops(model, schema) -> float:
  """Per-example FLOPs + transcendentals of the compiled eval-mode forward (batch 32 minus 16)."""
  totals = []
  for rows in (16, 32):
    batch = {k: v for k, v in make_batch(schema, rows=rows).items() if k in FEATURES}
    variables = nn.unbox(jax.eval_shape(functools.partial(model.init, train=False),
                                        {'params': jax.random.key(0)}, batch))
    forward = jax.jit(lambda v, b: model.apply(v, b, train=False))
    cost = forward.lower(variables, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    totals.append(cost.get('flops', 0.0) + cost.get('transcendentals', 0.0))
  return (totals[1] - totals[0]) / 16


def _frappe_model(name):
  config = runpy.run_path(os.path.join(REPO, 'configs', f'{name}_frappe.py'))['get_config']()
  return build_model(name, FRAPPE, embedding_dim=config.embedding_dim,
                     **dict(config.model_kwargs)), config


@pytest.mark.parametrize('name', ['deepfm', 'dlrm', 'dcnv2', 'wukong', 'dhen'])
def test_frappe_configs_match_xla_within_1_percent(name):
  model, config = _frappe_model(name)
  analytic = per_example_flops(model)
  assert analytic == training_config_flops(config, FRAPPE)
  np.testing.assert_allclose(analytic, xla_flops(model, FRAPPE), rtol=0.01)


COVERAGE = [
    ('deepfm', dict(hidden_units=(64, 64), batch_norm=True)),
    ('dlrm', dict(top_mlp_units=(64, 64), bottom_mlp_units=(8,), interaction='dot',
                  batch_norm=True)),
    ('dcnv2', dict(num_cross_layers=2, use_low_rank_mixture=True, low_rank=4, num_experts=3,
                   model_structure='stacked_parallel', stacked_dnn_hidden_units=(32,),
                   parallel_dnn_hidden_units=(64,))),
    ('wukong', dict(num_layers=2, num_fm_embeddings=4, num_lcb_embeddings=4, fm_rank=4,
                    fm_projection='projected', fmb_mlp_units=(64,), top_mlp_units=(64,),
                    dense_mlp_units=(8,), num_dense_embeddings=2, batch_norm=True)),
    ('dhen', dict(layers=(('dot', 'attention', 'cross', 'linear', 'conv'), ('dot', 'linear')),
                  num_embeddings=4, ensemble='weighted_sum', num_heads=2, top_mlp_units=(64,),
                  dense_mlp_units=(8,))),
    ('dhen', dict(layers=(('attention', 'conv'), ('cross', 'linear')), num_embeddings=4,
                  ensemble='sum', num_heads=2, top_mlp_units=(64,))),
]


@pytest.mark.parametrize('name, kwargs', COVERAGE,
                         ids=[f'{n}-{i}' for i, (n, _) in enumerate(COVERAGE)])
def test_every_option_matches_xla_within_4_percent(name, kwargs):
  model = build_model(name, MIXED, embedding_dim=16, **kwargs)
  np.testing.assert_allclose(per_example_flops(model), xla_flops(model, MIXED), rtol=0.04)


@pytest.mark.parametrize('name', ['lr', 'fm'])
def test_models_without_matmuls_differ_only_by_gather_index_arithmetic(name):
  schema = MIXED  # one-hot and multi-hot fields, dense features
  model = build_model(name, schema, embedding_dim=10)
  analytic, xla = per_example_flops(model), xla_flops(model, schema)
  ids = schema.num_sparse + sum(f.max_length for f in schema.multi_hot_fields)
  tables = 1 if name == 'lr' else 2  # FM looks each id up in its first-order and d-dim tables
  assert 0 <= xla - analytic <= 20 * ids * tables, (analytic, xla)


def test_closed_forms_and_breakdown():
  schema = one_hot_schema(['a', 'b', 'c'], [5, 5, 5])
  # LR: 3 lookups summed + bias; FM adds 3 F d + 3 d + d + 1 for its second-order term.
  assert config_flops('lr', schema) == 3 + 1
  assert config_flops('fm', schema, embedding_dim=4) == 4 + (3 * 3 * 4 + 3 * 4) + 4 + 1
  # DCNv2 crossnet_only, one full-rank layer on D = 3 * 4: 2 D^2 + 3 D, then the 1-wide fc.
  d = 12
  assert config_flops('dcnv2', schema, embedding_dim=4, model_structure='crossnet_only',
                      num_cross_layers=1) == 2 * d * d + 3 * d + 2 * d + 1
  assert optimized_fm(10, 8, 4, projected=False) == 4 * 10 * 8 * 4
  model = build_model('wukong', schema, embedding_dim=4, num_layers=3)
  parts = flops_breakdown(model)
  assert set(parts) == {'embedding', 'layer_0', 'layer_1', 'layer_2', 'top_mlp'}
  assert sum(parts.values()) == per_example_flops(model)
  # Layers after the first keep nF + nL = 16 embeddings: the same cost, no projection residual.
  assert parts['layer_1'] == parts['layer_2'] == wukong_layer(16, 4, 8, 8, 8, (64, 64), False,
                                                              'relu')
  assert parts['layer_0'] == wukong_layer(3, 4, 8, 8, 8, (64, 64), False, 'relu')
  assert wukong_layer(3, 4, 8, 8, 8, (), False, None) - wukong_layer(
      16, 4, 8, 8, 8, (), False, None) == (
          optimized_fm(3, 4, 8, False) - optimized_fm(16, 4, 8, False)  # FM on 3 vs 16
          + 7 * (3 * 8 - 16 * 8)  # FMB LayerNorm over n k
          + 2 * 3 * 8 * 32 - 2 * 16 * 8 * 32  # MLP output layer: n k -> nF d = 32
          + 2 * 3 * 8 * 4 - 2 * 16 * 8 * 4  # LCB
          + 2 * 3 * 16 * 4)  # projection residual 3 -> 16, layer 0 only


def test_upscaling_wukong_grows_its_flops():
  model = build_model('wukong', FRAPPE, embedding_dim=8, fmb_mlp_units=(32,),
                      top_mlp_units=(32,))
  sizes = [per_example_flops(upscale(model, f, depth_factor=g))
           for f, g in ((1, 1), (2, 1), (2, 2), (4, 2))]
  assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]


def test_unsupported_model_raises():
  with pytest.raises(TypeError, match='no FLOP counter for Dense; supported'):
    per_example_flops(nn.Dense(3))


def test_one_counter_serves_every_registered_model():
  """flops_breakdown covers the image classifiers and the decoder LM too (their own counters)."""
  from jaxrec.data.schema import ImageSchema, SequenceSchema  # pylint: disable=g-import-not-at-top
  from jaxrec.models.mixed_modal_lm import mixed_modal_lm_flops  # pylint: disable=g-import-not-at-top
  from jaxrec.models.vision_flops import vision_flops  # pylint: disable=g-import-not-at-top
  resnet = build_model('resnet', ImageSchema(28, 28, 1, 10))
  assert per_example_flops(resnet) == vision_flops(resnet)
  seq = SequenceSchema(seq_len=64, images_per_sequence=1, text_vocab_size=27, codebook_size=32)
  lm = build_model('decoder_lm', seq, untie='mot')
  assert per_example_flops(lm) == mixed_modal_lm_flops(lm.lm(), 64)
  assert per_example_flops(lm) == per_example_flops(build_model('decoder_lm', seq))  # dense
