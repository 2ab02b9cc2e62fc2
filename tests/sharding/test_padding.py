"""``indivisible='pad'``: dimensions that do not divide their mesh axes are sharded zero-padded, and
the padded run is the unpadded model: the same losses and parameters as the single-device run
(rtol 1e-5, float32), with the padding of parameters and Adam slots exactly zero throughout."""

import functools

import jax
import numpy as np
import pytest

from jaxrec.data.schema import one_hot_schema
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.transformer import FieldTransformer
from jaxrec.sharding import padding
from jaxrec.sharding.fsdp import ShardingConfig, plan_state
from jaxrec.sharding.guardrail import check_unsharded
from jaxrec.train.sharded_trainer import ShardedTrainer
from jaxrec.train import state as state_lib
from tests.sharding import common

# No vocabulary divides 8; cross width 4 fields x 5 = 20 (-> 24), MLP widths 12 (-> 16).
SCHEMA = one_hot_schema(['a', 'b', 'c', 'd'], [9, 17, 23, 30])
# No BatchNorm: it zeroes the true gradient of the bias before it, and Adam turns the float32
# noise left there into full-size steps whose sign depends on the reduction order.
DCN = DCNv2(SCHEMA, embedding_dim=5, num_cross_layers=2, use_low_rank_mixture=True, low_rank=3,
            num_experts=2, parallel_dnn_hidden_units=(12, 12), dropout_rate=0.1)
DCN_PLAIN = DCN.clone(dropout_rate=0.0)  # shard_map: its dropout draws differ
# embed 12 (-> 16 over fsdp 8), 3 heads (-> 4 over tensor 2).
TRANSFORMER = FieldTransformer(SCHEMA, embedding_dim=12, num_layers=2, num_heads=3, head_dim=4,
                               mlp_dim=20)
STEPS = 4
FLAT_FSDP = {'data': 1, 'fsdp': -1, 'tensor': 1}


def _plan(model, strategy, axes=FLAT_FSDP, hosts=0, **kwargs):
  tx = state_lib.make_optimizer(common.OPTIM)
  batch = common.make_batches(1, 8, schema=SCHEMA)[0]
  boxed = jax.eval_shape(functools.partial(state_lib.init_boxed_state, model, batch, tx, 0))
  return plan_state(boxed, common.mesh_for(axes, hosts), ShardingConfig(strategy, **kwargs))


def test_padded_shape_and_round_trip():
  mesh = common.mesh_for({'data': 2, 'fsdp': 4, 'tensor': 1})
  assert padding.padded_shape((429, 429), (('fsdp',), ()), mesh) == (432, 429)
  assert padding.padded_shape((17, 3), (('data', 'fsdp'), ()), mesh) == (24, 3)
  x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
  padded = padding.pad_to(x, (4, 3))
  np.testing.assert_array_equal(padded[2:], 0.0)
  np.testing.assert_array_equal(padding.unpad_to(padded, (2, 3)), x)
  with pytest.raises(ValueError, match='smaller'):
    padding.pad_to(x, (1, 3))


def test_plan_pads_parameters_and_their_slots():
  p = _plan(DCN, 'FULL_SHARD', indivisible='pad')
  assert p.padded
  assert p.param_dims['embedding']['b'] == (('fsdp',), ())
  assert p.logical.params['embedding']['b'].shape == (17, 5)
  assert p.abstract.params['embedding']['b'].shape == (24, 5)
  kernel = p.abstract.params['parallel_dnn']['dense_1']['kernel']
  assert kernel.shape == (16, 12)  # [mlp_in 12 -> 16, mlp 12 (tensor of size 1)]
  adam = p.abstract.opt_state[1].inner_state[0]
  assert adam.mu['embedding']['b'].shape == adam.nu['embedding']['b'].shape == (24, 5)
  assert p.state.params['embedding']['b'].spec == jax.sharding.PartitionSpec('fsdp', None)
  # Only the mlp-side biases and the small expert matrices C stay whole.
  report = check_unsharded(p)
  assert report.fraction < 0.1
  assert all(path.endswith(('bias', '/C')) for path, _, _ in report.unsharded), report.format()
  # SHARD_GRAD_OP stores replicated parameters, padded like their (sharded) gradients.
  sgo = _plan(DCN, 'SHARD_GRAD_OP', indivisible='pad')
  assert sgo.abstract.params['embedding']['b'].shape == (24, 5)
  assert sgo.param_dims['embedding']['b'] == ((), ())
  # Nothing is padded where every dimension divides, or under NO_SHARD.
  assert not _plan(DCN, 'NO_SHARD', {'data': -1, 'fsdp': 1, 'tensor': 1}, indivisible='pad').padded


def _reference(model, batches):
  """Single device: losses, initial state (host), final state (host)."""
  tx = state_lib.make_optimizer(common.OPTIM)
  state, mask = state_lib.create_train_state(model, batches[0], tx, 0)
  initial = jax.device_get(state)
  step = jax.jit(state_lib.make_train_step(model, tx, mask, common.OPTIM))
  losses = []
  for b in batches:
    state, m = step(state, b)
    losses.append(float(m['loss']))
  return np.array(losses), initial, jax.device_get(state)


def _padding_is_zero(stored, logical):
  """Every element outside the logical shape of every padded leaf is exactly 0."""
  for x, shape in zip(jax.tree.leaves(stored), jax.tree.leaves(logical)):
    x = np.asarray(x)
    if x.shape == shape.shape:
      continue
    inside = np.zeros(x.shape, bool)
    inside[tuple(slice(0, s) for s in shape.shape)] = True
    assert np.all(x[~inside] == 0.0), shape


CASES = {  # name: (model, strategy, mesh axes, hosts, implementation, remat)
    'dcnv2/FULL_SHARD': (DCN, 'FULL_SHARD', FLAT_FSDP, 0, 'gspmd', 'none'),
    'dcnv2/SHARD_GRAD_OP': (DCN, 'SHARD_GRAD_OP', FLAT_FSDP, 0, 'gspmd', 'none'),
    'dcnv2/HYBRID_SHARD': pytest.param(DCN, 'HYBRID_SHARD', FLAT_FSDP, 2, 'gspmd', 'full',
                                       marks=pytest.mark.slow),
    'dcnv2/FULL_SHARD/shard_map': (DCN_PLAIN, 'FULL_SHARD', FLAT_FSDP, 0, 'shard_map', 'none'),
    # Scanned stack: per-layer gathers slice padded boxes inside the scan; fsdp x tensor.
    'transformer/FULL_SHARD': pytest.param(TRANSFORMER, 'FULL_SHARD',
                                           {'data': 1, 'fsdp': 4, 'tensor': 2}, 0, 'gspmd', 'none',
                                           marks=pytest.mark.slow),
}


@pytest.mark.parametrize('model,strategy,axes,hosts,implementation,remat', list(CASES.values()),
                         ids=list(CASES))
def test_padded_run_is_the_unpadded_model(model, strategy, axes, hosts, implementation, remat):
  batches = common.make_batches(STEPS, schema=SCHEMA)
  want, initial, final = _reference(model, batches)
  tx = state_lib.make_optimizer(common.OPTIM)
  config = ShardingConfig(strategy, implementation=implementation, remat_policy=remat,
                          indivisible='pad')
  trainer = ShardedTrainer(model, tx, common.OPTIM, common.mesh_for(axes, hosts), config,
                           batches[0])
  assert trainer.plan.padded and trainer.report.fraction < 0.1
  state = trainer.place_state(initial)
  losses = []
  for b in batches:
    state, m = trainer.train_step(state, b)
    losses.append(float(m['loss']))
  np.testing.assert_allclose(losses, want, rtol=1e-5)
  host = jax.device_get(state)
  _padding_is_zero(host.params, trainer.plan.logical.params)
  _padding_is_zero(host.opt_state, trainer.plan.logical.opt_state)
  got = jax.device_get(trainer.unpad_state(state))
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got.params)[0],
                          jax.tree.leaves(final.params)):
    name = '/'.join(k.key for k in path)
    if name.endswith('key/bias'):
      # Softmax ignores the key bias (its true gradient is 0): Adam steps on float32 noise.
      continue
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
  # Evaluation sees the unpadded model too.
  logits = trainer.eval_step(state, batches[0])
  ref = state_lib.make_eval_step(model)(final, batches[0])
  np.testing.assert_allclose(logits, np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_sharded_init_is_padded_with_zeros():
  batches = common.make_batches(1, schema=SCHEMA)
  tx = state_lib.make_optimizer(common.OPTIM)
  trainer = ShardedTrainer(DCN, tx, common.OPTIM, common.mesh_for(FLAT_FSDP),
                           ShardingConfig('FULL_SHARD', indivisible='pad'), batches[0])
  state, _ = trainer.init_state()
  host = jax.device_get(state)
  _padding_is_zero(host.params, trainer.plan.logical.params)
  want, _ = state_lib.create_train_state(DCN, batches[0], tx, 0)
  # The sharded init computes the same draws (to float32 rounding).
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6),
               jax.device_get(trainer.unpad_state(state)).params, jax.device_get(want.params))
