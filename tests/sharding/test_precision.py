"""Mixed precision: parameters gathered in param_dtype, gradients reduced in reduce_dtype,
float32 masters; the sharded bfloat16 run follows the single-device bfloat16 run."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.transformer import FieldTransformer
from jaxrec.sharding import hlo
from jaxrec.sharding.fsdp import MixedPrecision, ShardingConfig
from jaxrec.train.sharded_trainer import single_device_mesh
from jaxrec.train import state as state_lib
from tests.sharding import common

MODEL = FieldTransformer(common.SCHEMA, embedding_dim=16, num_layers=2, num_heads=2, head_dim=8,
                         mlp_dim=32)
FSDP = {'data': 1, 'fsdp': -1, 'tensor': 1}


def _run_both(model, config, batches):
  """(1-device losses, 8-device losses, 8-device trainer) under the same mixed precision."""
  tx = state_lib.make_optimizer(common.OPTIM)
  initial = jax.device_get(state_lib.create_train_state(model, batches[0], tx, 0)[0])
  one = dataclasses.replace(config, strategy='NO_SHARD', implementation='gspmd')
  want, _, _ = common.sharded_run(model, single_device_mesh(), one, batches, initial)
  got, trainer, _ = common.sharded_run(model, common.mesh_for(FSDP), config, batches, initial)
  lowered = trainer.lower_train_step(trainer.abstract_state(),
                                     trainer.abstract_batch(common.ROWS, batches[0])).as_text()
  # Masters (and Adam's slots) stay float32.
  assert {a.dtype for a in jax.tree.leaves(trainer.plan.abstract.params)} == {
      np.dtype('float32')}
  assert {a.dtype for a in jax.tree.leaves(trainer.plan.abstract.opt_state)} <= {
      np.dtype('float32'), np.dtype('int32')}
  return want, got, trainer, lowered


def test_gspmd_gathers_parameters_in_bfloat16():
  batches = common.make_batches(5)
  config = ShardingConfig('FULL_SHARD', MixedPrecision('bfloat16', 'float32'))
  want, got, trainer, lowered = _run_both(MODEL, config, batches)
  # Every parameter is constrained to its compute layout as a bfloat16 value (the gather).
  constrained = re.findall(r'sdy.sharding_constraint .*: tensor<[0-9x]*x(bf16|f32)>', lowered)
  assert constrained.count('bf16') >= len(jax.tree.leaves(trainer.plan.abstract.params))
  # Same bf16 computation on 1 and 8 devices; float32 reductions differ in order only.
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_shard_map_gathers_and_reduces_in_bfloat16():
  batches = common.make_batches(5)
  config = ShardingConfig('FULL_SHARD', MixedPrecision('bfloat16', 'bfloat16'),
                          implementation='shard_map')
  model = MODEL.clone(dtype=jnp.bfloat16)  # activations in bfloat16 too
  want, got, _, lowered = _run_both(model, config, batches)
  # The explicit collectives as the program asks for them (XLA:CPU then runs them in f32).
  ops = hlo.lowered_collectives(lowered)
  assert {d for k, d in ops if k == 'all-gather'} == {'bf16'}
  assert {d for k, d in ops if k == 'reduce-scatter'} == {'bf16'}
  # bfloat16 activations and gradient sums (8 mantissa bits): a 1% band.
  np.testing.assert_allclose(got, want, rtol=1e-2)
