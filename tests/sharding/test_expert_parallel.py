"""Expert parallelism (jaxrec.sharding.expert_parallel) on 8 emulated devices: the all-to-all
dispatch equals ``moe.local_dispatch`` (values and gradients), its all-to-alls run over the expert
axis, a MoMa decoder LM trained through the sharded trainer on an ``expert`` mesh follows the
single-device trajectory (losses and parameters, rtol 1e-5), and unsupported combinations fail
with a clear error."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.moe import local_dispatch
from jaxrec.models.mixed_modal_lm import DecoderLM
from jaxrec.sharding import hlo
from jaxrec.sharding.expert_parallel import expert_parallel_dispatch, with_expert_parallel
from jaxrec.sharding.fsdp import ShardingConfig
from jaxrec.sharding.mesh import make_mesh, mesh_from_config
from jaxrec.train import state as state_lib
from jaxrec.train.config import base_config
from jaxrec.train.sharded_trainer import ShardedTrainer
from tests.sharding import test_equivalence_mixed_modal as mixed_modal

# ---- the dispatch on its own ----


def dispatch_inputs(n, e, c, d=16, f=24, seed=0):
  """Tokens ``[n, d]``, each expert's top ``c`` of random scores (some tokens chosen by several
  experts, some by none) and random SwiGLU kernels."""
  keys = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(keys[0], (n, d))
  weight, index = jax.lax.top_k(jax.random.uniform(keys[1], (n, e)).T, c)  # [E, C]
  gate, up = (0.3 * jax.random.normal(k, (e, d, f)) for k in keys[2:4])
  down = 0.3 * jax.random.normal(keys[4], (e, f, d))
  return x, index, weight, gate, up, down


def _loss(dispatch):
  return lambda x, index, weight, *kernels: jnp.sum(jnp.sin(dispatch(x, index, weight, *kernels)))


# (mesh axes, (tokens, experts, capacity)): all 8 devices on the expert axis; expert x data
# replicas with a capacity the replicas do not divide (padded slots); three token axes.
DISPATCH_CASES = {
    'expert8': ({'expert': 8}, (64, 8, 8)),
    'data2_expert4': ({'data': 2, 'expert': 4}, (64, 8, 7)),
    'data2_fsdp2_expert2': ({'data': 2, 'fsdp': 2, 'expert': 2}, (48, 4, 10)),
}


@pytest.mark.parametrize('name', list(DISPATCH_CASES))
def test_dispatch_matches_local_dispatch(name):
  axes, (n, e, c) = DISPATCH_CASES[name]
  args = dispatch_inputs(n, e, c)
  counts = np.bincount(np.asarray(args[1]).ravel(), minlength=n)
  assert (counts == 0).any() and (counts > 1).any(), counts  # chosen by none / by several
  dispatch = expert_parallel_dispatch(make_mesh(axes))
  np.testing.assert_allclose(jax.jit(dispatch)(*args), jax.jit(local_dispatch)(*args),
                             rtol=1e-5, atol=1e-6)
  wrt = (0, 2, 3, 4, 5)  # x, weight and the kernels (index is an integer)
  got = jax.jit(jax.grad(_loss(dispatch), argnums=wrt))(*args)
  want = jax.jit(jax.grad(_loss(local_dispatch), argnums=wrt))(*args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_all_to_alls_run_over_the_expert_axis():
  mesh = make_mesh({'data': 2, 'expert': 4})
  args = dispatch_inputs(64, 8, 8)
  text = jax.jit(expert_parallel_dispatch(mesh)).lower(*args).compile().as_text()
  ops = [op for op in hlo.collectives(text) if op.kind == 'all-to-all']
  assert len(ops) == 2, ops  # dispatch and combine
  ids = np.vectorize(lambda dev: dev.id)(mesh.devices)  # [data, expert]
  expert_groups = {tuple(sorted(row)) for row in ids.tolist()}  # devices along the expert axis
  for op in ops:
    assert {tuple(sorted(g)) for g in op.replica_groups} == expert_groups, op


# ---- a MoMa decoder LM through the sharded trainer ----

STEPS = 4
# SGD, whose step is linear in the gradient, so that the parameters can be compared: Adam's
# g / (sqrt(v) + eps) turns float32 summation-order noise in a near-zero gradient element into a
# step of order the learning rate (with Adam the losses agree at rtol 1e-5 but 4 of the 8192
# elements of a `down` kernel differ by 3e-6 after 4 steps, while every gradient agrees to 1e-6
# of its scale).
OPTIM = state_lib.OptimConfig(learning_rate=0.05, optimizer='sgd', momentum=0.9,
                              max_grad_norm=10.0, embedding_regularizer=1e-3,
                              net_regularizer=1e-4)


def moma_model():
  return DecoderLM(mixed_modal.SCHEMA, num_layers=2, embed_dim=16, num_heads=2, head_dim=8,
                   mlp_dim=32, ffn='moe', experts_per_group=(8, 8))


@pytest.fixture(scope='module')
def reference():
  """(batches, single-device losses, initial state, final parameters)."""
  batches = mixed_modal.make_batches()[:STEPS]
  model, optim = moma_model(), OPTIM
  tx = state_lib.make_optimizer(optim)
  state, mask = state_lib.create_train_state(model, batches[0], tx, 0)
  initial = jax.device_get(state)
  step = jax.jit(state_lib.make_train_step(
      model, tx, mask, optim,
      state_lib.make_loss_and_grad(model, mask, optim, task=mixed_modal.TASK)))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return batches, np.array(losses), initial, jax.device_get(state.params)


# NO_SHARD with every device on the expert axis (the batch split over it too); FULL_SHARD over
# fsdp=2 with expert=4 (expert kernels split over both, expert replicas on the fsdp axis).
TRAINER_CASES = {
    'NO_SHARD_expert8': ('NO_SHARD', {'data': 1, 'fsdp': 1, 'expert': 8}),
    'FULL_SHARD_fsdp2_expert4': ('FULL_SHARD', {'data': 1, 'fsdp': 2, 'expert': 4}),
}


@pytest.mark.parametrize('name', list(TRAINER_CASES))
def test_moma_trains_like_single_device(reference, name):
  batches, want_losses, initial, want_params = reference
  strategy, axes = TRAINER_CASES[name]
  mesh = make_mesh(axes)
  trainer = ShardedTrainer(moma_model(), state_lib.make_optimizer(OPTIM), OPTIM, mesh,
                           ShardingConfig(strategy), batches[0], task=mixed_modal.TASK)
  assert trainer.plan.batch_axes[-1] == 'expert'
  gate = trainer.plan.param_dims['lm']['layers']['ffn']['group0']['gate']
  assert gate[1] == ('expert',), gate  # [layers, expert, embed, mlp]
  state = trainer.place_state(initial)
  compiled = trainer.lower_train_step(state, trainer.global_batch(batches[0])).compile()
  losses = []
  for batch in batches:
    state, metrics = compiled(state, trainer.global_batch(batch))
    losses.append(float(metrics['loss']))
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
               jax.device_get(state.params), want_params)
  kinds = {(op.kind, op.group_size) for op in hlo.collectives(compiled.as_text())}
  assert ('all-to-all', axes['expert']) in kinds, kinds


# ---- configuration and errors ----


def test_config_mesh_takes_an_expert_axis():
  cfg = base_config().sharding
  assert make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1}).shape == mesh_from_config(cfg).shape
  cfg.mesh.expert = 8  # what --config.sharding.mesh.expert=8 sets
  mesh = mesh_from_config(cfg)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'expert': 8, 'tensor': 1}


def test_dispatch_errors():
  args = dispatch_inputs(64, 4, 8)  # 4 experts
  with pytest.raises(ValueError, match='4 experts do not split over the 8 devices'):
    jax.eval_shape(expert_parallel_dispatch(make_mesh({'expert': 8})), *args)
  args = dispatch_inputs(60, 8, 8)  # 60 tokens
  with pytest.raises(ValueError, match='60 tokens do not split over the 8 devices'):
    jax.eval_shape(expert_parallel_dispatch(make_mesh({'expert': 8})), *args)
  with pytest.raises(ValueError, match="no expert axis 'expert'"):
    expert_parallel_dispatch(make_mesh({'data': 8}))
  with pytest.raises(ValueError, match=r"\['tensor'\] have more than one device"):
    expert_parallel_dispatch(make_mesh({'expert': 4, 'tensor': 2}))


class _ExpertsWithoutHook(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x @ self.param('w', nn.initializers.zeros, (8, 2))


def test_unsupported_combinations_are_errors(reference):
  batches = reference[0]
  optim, expert8 = OPTIM, make_mesh({'data': 1, 'fsdp': 1, 'expert': 8})
  tx = state_lib.make_optimizer(optim)
  dense = DecoderLM(mixed_modal.SCHEMA, num_layers=1, embed_dim=16, num_heads=2, head_dim=8,
                    mlp_dim=32)
  with pytest.raises(ValueError, match='the model has no expert parameters'):
    ShardedTrainer(dense, tx, optim, expert8, ShardingConfig('NO_SHARD'), batches[0],
                   task=mixed_modal.TASK)
  with pytest.raises(ValueError, match="implementation='shard_map' does not support"):
    ShardedTrainer(moma_model(), tx, optim, expert8,
                   ShardingConfig('FULL_SHARD', implementation='shard_map'), batches[0])
  names = {'w': ('embed', 'expert')}  # expert parameters, but no dispatch_fn to plug into
  with pytest.raises(ValueError, match='_ExpertsWithoutHook takes no dispatch_fn'):
    with_expert_parallel(_ExpertsWithoutHook(), expert8, names)
  # One expert device: nothing to do, any model passes unchanged.
  model = _ExpertsWithoutHook()
  assert with_expert_parallel(model, make_mesh({'data': 8}), names) is model
