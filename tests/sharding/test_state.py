"""Sharded state: created already sharded, checkpoints that restore on fewer devices, and host
offload of parameters and optimizer state."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrec.models.dcnv2 import DCNv2
from jaxrec.sharding.fsdp import ShardingConfig
from jaxrec.sharding.mesh import make_mesh
from jaxrec.train.sharded_trainer import ShardedTrainer
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from tests.sharding import common

MODEL = DCNv2(common.SCHEMA, embedding_dim=8, num_cross_layers=1,
              parallel_dnn_hidden_units=(16,))
FSDP = {'data': 1, 'fsdp': -1, 'tensor': 1}
TX = state_lib.make_optimizer(common.OPTIM)


def trainer_on(devices, strategy='FULL_SHARD', **kwargs):
  batch = common.make_batches(1)[0]
  return ShardedTrainer(MODEL, TX, common.OPTIM, make_mesh(FSDP, devices),
                        ShardingConfig(strategy, **kwargs), batch)


def test_init_is_created_sharded_and_equals_the_unsharded_init():
  trainer = trainer_on(jax.devices())
  state, mask = trainer.init_state()
  ref, ref_mask = state_lib.create_train_state(MODEL, common.make_batches(1)[0], TX, 0)
  assert mask == ref_mask
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=0)
  table = state.params['embedding']['d']  # [40, 8]: 5 rows per device
  assert table.sharding.spec == P('fsdp', None)
  assert {s.data.shape for s in table.addressable_shards} == {(5, 8)}
  assert len({s.device for s in table.addressable_shards}) == 8


def _random_state(seed=0):
  """The initial state with every float leaf (params and Adam slots) random."""
  initial = state_lib.create_train_state(MODEL, common.make_batches(1)[0], TX, 0)[0]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype)
                      if np.issubdtype(x.dtype, np.floating) else np.asarray(x),
                      jax.device_get(initial))


def test_checkpoint_from_8_devices_restores_on_4_and_1(tmp_path):
  want = _random_state()
  saved = trainer_on(jax.devices()).place_state(want)
  ckpts = RunCheckpoints(str(tmp_path))
  ckpts.save('latest', 7, saved, {'epoch': 1})
  ckpts.close()
  for n, strategy in ((4, 'FULL_SHARD'), (1, 'NO_SHARD')):
    trainer = trainer_on(jax.devices()[:n], strategy)
    ckpts = RunCheckpoints(str(tmp_path))
    restored, meta = ckpts.restore('latest', trainer.abstract_state())
    ckpts.close()
    assert meta == {'epoch': 1}
    for got, exp, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(want),
                                  jax.tree.leaves(trainer.plan.state)):
      assert got.sharding == sharding
      np.testing.assert_array_equal(np.asarray(got), exp)
    rows = {s.data.shape[0] for s in restored.params['embedding']['d'].addressable_shards}
    assert rows == {40 // n}


@pytest.fixture(scope='module')
def reference():
  batches = common.make_batches(5)
  return (batches,) + common.reference_run(MODEL, batches)


def test_offload_keeps_state_in_host_memory_and_matches(reference):
  batches, want, initial = reference
  got, trainer, _ = common.sharded_run(
      MODEL, make_mesh(FSDP), ShardingConfig('FULL_SHARD', offload_params=True,
                                             offload_opt_state=True), batches, initial)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  kinds = {s.memory_kind for s in jax.tree.leaves(trainer.plan.state.params)}
  kinds |= {s.memory_kind for s in jax.tree.leaves(trainer.plan.state.opt_state)}
  assert kinds == {'pinned_host'}
  state = trainer.place_state(initial)
  state, _ = trainer.train_step(state, batches[0])
  assert state.params['embedding']['a'].sharding.memory_kind == 'pinned_host'
  assert state.step.sharding.memory_kind != 'pinned_host'
