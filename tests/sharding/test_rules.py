"""The rules table, per-strategy layouts, indivisible dimensions, the unsharded guardrail and the
config checks (all from jax.eval_shape: nothing is compiled)."""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.data.schema import ImageSchema, SequenceSchema, one_hot_schema
from jaxrec.layers import LOGICAL_AXIS_NAMES
from jaxrec.layers import decoder as decoder_lib
from jaxrec.layers import dhen as dhen_lib
from jaxrec.layers import wukong as wukong_lib
from jaxrec.models import MODELS, build_model, model_hyperparameters
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.transformer import FieldTransformer
from jaxrec.sharding import offload, rules
from jaxrec.sharding.fsdp import MixedPrecision, ShardingConfig, Strategy, plan_state
from jaxrec.sharding.guardrail import check_unsharded, unsharded_report
from jaxrec.train import evaluation
from jaxrec.train import state as state_lib
from tests.sharding import common

DCN = DCNv2(common.SCHEMA, embedding_dim=8, num_cross_layers=1, use_low_rank_mixture=True,
            low_rank=8, num_experts=2, parallel_dnn_hidden_units=(32,))
FLAT_FSDP = {'data': 1, 'fsdp': -1, 'tensor': 1}


def plan(model, strategy, axes=FLAT_FSDP, hosts=0, **kwargs):
  tx = state_lib.make_optimizer(common.OPTIM)
  if isinstance(model.schema, SequenceSchema):
    batch = evaluation.example_batch(model.schema)
  elif isinstance(model.schema, ImageSchema):
    batch = {'image': np.zeros((8,) + model.schema.shape, np.float32),
             'label': np.zeros(8, np.int32), 'weight': np.ones(8, np.float32)}
  else:
    batch = common.make_batches(1, 8, schema=model.schema)[0]
  boxed = jax.eval_shape(functools.partial(state_lib.init_boxed_state, model, batch, tx, 0))
  return plan_state(boxed, common.mesh_for(axes, hosts), ShardingConfig(strategy, **kwargs))


def test_every_logical_name_has_a_rule():
  transformer_names = ('heads', 'kv', 'layers', 'length', 'batch')
  rules.check_names_covered(LOGICAL_AXIS_NAMES + transformer_names + wukong_lib.AXIS_NAMES +
                            dhen_lib.AXIS_NAMES + decoder_lib.AXIS_NAMES, 'all names')


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_registered_model_plans_under_full_shard(name):
  """Every model's parameters have rules (Wukong / DHEN add their own axis names; image models
  their conv axes)."""
  if 'embedding_dim' in model_hyperparameters(MODELS[name]):
    model = build_model(name, common.SCHEMA, embedding_dim=4)
  elif name == 'decoder_lm':
    model = build_model(name, SequenceSchema(seq_len=64, images_per_sequence=1,
                                             text_vocab_size=27, codebook_size=32))
  else:
    model = build_model(name, ImageSchema(28, 28, 1, 10))
  plan(model, 'FULL_SHARD', indivisible='replicate')


  class Odd(nn.Module):
    schema: Any

    @nn.compact
    def __call__(self, features, train):
      w = self.param('w', nn.with_logical_partitioning(nn.initializers.ones, ('foo',)), (8,))
      return features['sparse'][:, 0] * w[0]

  with pytest.raises(ValueError, match=r"model parameters: logical axis name\(s\) \['foo'\]"):
    plan(Odd(common.SCHEMA), 'FULL_SHARD')


def test_full_shard_layouts_of_dcnv2():
  p = plan(DCN, 'FULL_SHARD')
  dims = p.param_dims
  assert dims['embedding']['a'] == (('fsdp',), ())  # [vocab, embed]: rows over fsdp
  cross = dims['crossnet']['cross_0']
  assert cross['V'] == ((), ('fsdp',), ())  # [expert, cross_in, rank]
  assert cross['U'] == ((), (), ('fsdp',))  # [expert, rank_in, cross]
  assert cross['C'] == ((), (), ())  # small: left whole
  assert dims['parallel_dnn']['dense_0']['kernel'] == (('fsdp',), ('tensor',))
  assert dims['fc']['output']['kernel'] == (('fsdp',), ())
  assert p.grad_dims == p.param_dims
  # Adam's mu / nu follow their parameters; count and learning rate are replicated.
  adam = p.state.opt_state[1]
  assert adam.inner_state[0].mu['embedding']['a'].spec == jax.sharding.PartitionSpec('fsdp', None)
  assert adam.hyperparams['learning_rate'].spec == jax.sharding.PartitionSpec()
  assert p.batch_axes == ('data', 'fsdp') and p.batch_divisor == 8


def test_strategy_roles():
  no = plan(DCN, 'NO_SHARD', {'data': -1, 'fsdp': 1, 'tensor': 1})
  used = lambda tree: {a for d in jax.tree.leaves(tree) for t in d for a in t}
  assert 'fsdp' not in used(no.param_dims) | used(no.grad_dims)
  sgo = plan(DCN, 'SHARD_GRAD_OP')
  assert 'fsdp' not in used(sgo.param_dims) and 'fsdp' in used(sgo.grad_dims)
  assert sgo.state.opt_state[1].inner_state[0].nu['embedding']['a'].spec[0] == 'fsdp'
  hybrid = plan(DCN, 'HYBRID_SHARD', hosts=2)
  assert hybrid.param_dims['embedding']['a'] == (('fsdp',), ())  # replicated over 'host'
  assert hybrid.batch_axes == ('host', 'data', 'fsdp')
  full_h = plan(DCN, 'FULL_SHARD', {'data': 1, 'fsdp': -1}, hosts=2)
  assert full_h.param_dims['embedding']['a'] == (('host', 'fsdp'), ())
  with pytest.raises(ValueError, match='HYBRID_SHARD needs the hierarchical'):
    plan(DCN, 'HYBRID_SHARD')


def test_transformer_layouts():
  model = FieldTransformer(common.SCHEMA, embedding_dim=16, num_layers=2, num_heads=2,
                           head_dim=8, mlp_dim=32)
  p = plan(model, 'FULL_SHARD', {'data': 1, 'fsdp': 4, 'tensor': 2})
  layer = p.param_dims['stack']['layers']
  assert layer['query']['kernel'] == ((), ('fsdp',), ('tensor',), ())  # [L, embed, heads, kv]
  assert layer['out']['kernel'] == ((), ('tensor',), (), ('fsdp',))  # [L, heads, kv, embed]
  assert layer['mlp_out']['kernel'] == ((), ('tensor',), ('fsdp',))  # [L, mlp, embed]
  assert layer['ln_attn']['scale'] == ((), ('fsdp',))
  assert p.param_names['stack']['layers']['query']['kernel'] == ('layers', 'embed', 'heads', 'kv')


def test_indivisible_dimension_is_named():
  schema = one_hot_schema(['a', 'b'], [16, 17])
  model = DCNv2(schema, embedding_dim=8, num_cross_layers=1, parallel_dnn_hidden_units=(16,))
  with pytest.raises(ValueError, match=r"params/embedding/b: dimension 0 \(logical axis 'vocab', "
                                       r"size 17\) does not divide mesh axes \('fsdp',\) \(size 8\)"):
    plan(model, 'FULL_SHARD')
  # 'replicate' keeps it whole, and the guardrail reports it.
  p = plan(model, 'FULL_SHARD', indivisible='replicate', max_unsharded_fraction=1.0)
  assert p.param_dims['embedding']['b'] == ((), ())
  report = unsharded_report(p)
  assert ('embedding/b', (17, 8), 136) in report.unsharded
  assert report.total == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p.abstract.params))


def test_guardrail_fails_above_the_allowed_fraction():
  schema = one_hot_schema(['a', 'b'], [9, 17])  # both tables indivisible by 8
  model = DCNv2(schema, embedding_dim=8, num_cross_layers=1, parallel_dnn_hidden_units=(16,))
  p = plan(model, 'FULL_SHARD', indivisible='replicate', max_unsharded_fraction=0.05)
  with pytest.raises(ValueError, match=r'too many parameters left unsharded[\s\S]*embedding/b'):
    check_unsharded(p)
  # NO_SHARD replicates by design: never flagged.
  q = plan(model, 'NO_SHARD', {'data': -1, 'fsdp': 1, 'tensor': 1}, max_unsharded_fraction=0.0)
  assert check_unsharded(q).fraction == 1.0


@pytest.mark.parametrize('make,match', [
    (lambda: ShardingConfig('FULLSHARD'), 'unknown FSDP strategy'),
    (lambda: ShardingConfig('NO_SHARD', implementation='shard_map'), 'implements FULL_SHARD'),
    (lambda: ShardingConfig(remat_policy='some'), 'not a remat policy'),
    (lambda: ShardingConfig(indivisible='zero'), 'indivisible'),
    (lambda: ShardingConfig(max_unsharded_fraction=2.0), 'max_unsharded_fraction'),
    (lambda: MixedPrecision('float17'), 'not a dtype'),
])
def test_sharding_config_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_mixed_precision_defaults_follow_param_dtype():
  mp = MixedPrecision('bfloat16')
  assert mp.reduce_dtype == mp.compute_dtype == np.dtype('bfloat16')
  assert MixedPrecision('bfloat16', 'float32').reduce_dtype == np.dtype('float32')
  assert ShardingConfig('full_shard').strategy is Strategy.FULL_SHARD


def test_offload_needs_memory_kinds():
  @dataclasses.dataclass(frozen=True)
  class NoMemories:
    id: int = 0
    process_index: int = 0
    platform: str = 'fake'

    def addressable_memories(self):
      return []

  with pytest.raises(ValueError, match="needs the 'pinned_host' and 'device' memory kinds"):
    offload.check_offload_supported([NoMemories()])
  offload.check_offload_supported(jax.devices())  # the CPU backend has them
