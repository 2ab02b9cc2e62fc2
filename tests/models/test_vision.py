"""The vision models (CNN, ResNet) and their analytic FLOP counts.

FLOPs are checked against XLA's cost analysis of the compiled eval forward, per example as the
difference between batch sizes 32 and 16 divided by 16 (as tests/models/test_flops.py), counting
``flops + transcendentals``: within 3% for both models at their default size (measured: CNN -0.5%,
ResNet-20 -1.0%; the gap is eval-mode BatchNorm, which XLA counts as 3 FLOPs per element and the
convention as 2, and elementwise producers XLA fuses into two consumers).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.data.schema import ImageSchema
from jaxrec.layers import conv as conv_lib
from jaxrec.models.vision import CNN, ResNet
from jaxrec.models.vision_flops import (basic_block, conv2d, conv_taps, vision_flops,
                                        vision_flops_breakdown)
from jaxrec.sharding import rules

MNIST = ImageSchema(height=28, width=28, channels=1, num_classes=10)
CIFAR = ImageSchema(height=32, width=32, channels=3, num_classes=7)  # 7: nothing assumes 10
MODELS = (CNN, ResNet)


def images(schema: ImageSchema, rows: int, seed: int = 0) -> dict:
  x = jax.random.normal(jax.random.key(seed), (rows,) + schema.shape, jnp.float32)
  return {'image': x}


def init(model, batch):
  return model.init({'params': jax.random.key(0)}, batch, train=False)


def apply_train(model, variables, batch, seed: int = 1):
  return model.apply(variables, batch, train=True, rngs={'dropout': jax.random.key(seed)},
                     mutable=['batch_stats'])


def num_params(model, schema) -> int:
  shapes = jax.eval_shape(functools.partial(init, model), images(schema, 1))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes['params'])))


# ---- shapes, dtypes, construction ----


@pytest.mark.parametrize('cls', MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize('schema', [MNIST, CIFAR], ids=['28x28x1', '32x32x3'])
def test_output_shapes_and_dtypes(cls, schema):
  model = cls(schema=schema)
  batch = images(schema, 4)
  variables = init(model, batch)
  logits, updates = apply_train(model, variables, batch)
  assert logits.shape == (4, schema.num_classes) and logits.dtype == jnp.float32
  assert set(updates) == {'batch_stats'}
  logits = model.apply(variables, batch, train=False)
  assert logits.shape == (4, schema.num_classes) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('cls, first', [(CNN, 'conv_0'), (ResNet, 'stem_conv')],
                         ids=['CNN', 'ResNet'])
def test_bfloat16_activations_float32_params(cls, first):
  model = cls(schema=MNIST, dtype=jnp.bfloat16)
  batch = images(MNIST, 2)
  variables = init(model, batch)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype(jnp.float32)}
  logits, state = model.apply(variables, batch, train=False, capture_intermediates=True,
                              mutable=['intermediates'])
  assert logits.dtype == jnp.float32
  assert state['intermediates'][first]['__call__'][0].dtype == jnp.bfloat16


def test_build_model_style_construction_is_hashable():
  kwargs = {'channels': [8, 16], 'hidden': 32, 'dropout': 0.25}  # a list, as a config gives
  model = CNN(schema=MNIST, **kwargs)
  assert model.channels == (8, 16)
  hash(model)
  hash(ResNet(schema=CIFAR, blocks_per_stage=1, width=4))


# ---- parameters ----


def test_resnet20_parameter_count_by_hand():
  # Kernels k*k*C_in*C_out (no conv biases), BatchNorm 2*C, classifier 64*10 + 10.
  #   stem:     3*3*1*16 = 144, BN 32                                          ->     176
  #   stage 1:  3 blocks x (2 * 3*3*16*16 = 4608, BN 2*32 = 64)                ->  14,016
  #   stage 2:  block 1: 3*3*16*32 = 4608 + 3*3*32*32 = 9216 + BN 128
  #                      + projection 1*1*16*32 = 512 + BN 64 = 14,528;
  #             blocks 2, 3: 2 x (2 * 9216 + 128) = 37,120                     ->  51,648
  #   stage 3:  block 1: 3*3*32*64 = 18,432 + 3*3*64*64 = 36,864 + BN 256
  #                      + projection 32*64 = 2048 + BN 128 = 57,728;
  #             blocks 2, 3: 2 x (2 * 36,864 + 256) = 147,968                  -> 205,696
  #   classifier: 64*10 + 10                                                   ->     650
  #   total                                                                    -> 272,186
  assert num_params(ResNet(schema=MNIST), MNIST) == 272_186
  # RGB input changes only the stem kernel (3*3*3*16 = 432, +288); 7 classes the classifier
  # (64*7 + 7 = 455, -195).
  assert num_params(ResNet(schema=CIFAR), CIFAR) == 272_186 + 288 - 195
  # ResNet-32: 2 more blocks per stage, each 2 convs + 2 BNs of its stage's width.
  extra = 2 * (4608 + 64) + 2 * (18_432 + 128) + 2 * (73_728 + 256)
  assert num_params(ResNet(schema=MNIST, blocks_per_stage=5), MNIST) == 272_186 + extra


def test_cnn_parameter_count_by_hand():
  # conv 3*3*1*32 + BN 64; conv 3*3*32*64 + BN 128; dense 7*7*64*128 + 128; dense 128*10 + 10.
  expected = (288 + 64) + (18_432 + 128) + (3136 * 128 + 128) + (128 * 10 + 10)
  assert expected == 421_738
  assert num_params(CNN(schema=MNIST), MNIST) == expected


@pytest.mark.parametrize('cls', MODELS, ids=lambda c: c.__name__)
def test_every_parameter_is_logically_partitioned_with_covered_names(cls):
  model = cls(schema=MNIST)
  boxed = jax.eval_shape(functools.partial(init, model), images(MNIST, 1))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  names = set()
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf.names
    names |= set(leaf.names)
  assert names <= set(conv_lib.AXIS_NAMES), names
  rules.check_names_covered(names, cls.__name__)
  # Conv kernels and BatchNorm parameters are never sharded.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ('data', 'fsdp', 'tensor'))
  for name in conv_lib.CONV_AXES:
    assert rules.logical_to_mesh_axes((name,), mesh) == ((),), name


# ---- BatchNorm ----


@pytest.mark.parametrize('cls', MODELS, ids=lambda c: c.__name__)
def test_batch_stats_update_in_train_mode_only(cls):
  model = cls(schema=MNIST)
  batch = images(MNIST, 4)
  variables = init(model, batch)
  stats = variables['batch_stats']
  _, updates = apply_train(model, variables, batch)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         stats, updates['batch_stats'])
  assert all(jax.tree.leaves(changed)), changed  # every BatchNorm's mean and var moved
  _, updates = model.apply(variables, batch, train=False, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, stats, updates['batch_stats'])
  # Eval mode uses the running averages: an example's logits do not depend on its batch.
  together = model.apply(variables, batch, train=False)
  alone = model.apply(variables, {'image': batch['image'][:1]}, train=False)
  np.testing.assert_allclose(alone, together[:1], rtol=1e-5, atol=1e-6)


# ---- FLOPs ----


def xla_flops(model, schema) -> float:
  """Per-example FLOPs + transcendentals of the compiled eval-mode forward (batch 32 minus 16)."""
  totals = []
  for rows in (16, 32):
    batch = {'image': jnp.zeros((rows,) + schema.shape, jnp.float32)}
    variables = nn.unbox(jax.eval_shape(functools.partial(init, model), batch))
    forward = jax.jit(lambda v, b: model.apply(v, b, train=False))
    cost = forward.lower(variables, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    totals.append(cost.get('flops', 0.0) + cost.get('transcendentals', 0.0))
  return (totals[1] - totals[0]) / 16


@pytest.mark.parametrize('cls', MODELS, ids=lambda c: c.__name__)
def test_flops_match_xla_within_3_percent(cls):
  model = cls(schema=MNIST)
  np.testing.assert_allclose(vision_flops(model), xla_flops(model, MNIST), rtol=0.03)


def test_conv_flops_closed_forms():
  # Along an axis of 28 a 3x3 stride-1 conv reads 28*3 - 2 real pixels (one padding tap at each
  # end); with stride 2 (14 outputs at 2o - 1 + j) only the first output's first tap is padding.
  assert conv_taps(28, 3, 1) == 82 and conv_taps(28, 3, 2) == 41 and conv_taps(28, 1, 2) == 14
  assert conv2d(28, 28, 16, 32, 3, 1) == 2 * 82 * 82 * 16 * 32
  assert conv2d(28, 28, 16, 32, 3, 1, count_padding=True) == 2 * 28 * 28 * 9 * 16 * 32
  assert conv2d(28, 28, 16, 32, 1, 2) == conv2d(28, 28, 16, 32, 1, 2, count_padding=True)
  # Identity block on [7, 7, 64]: 2 convs, 2 BatchNorms, the add and the last ReLU.
  n = 7 * 7 * 64
  assert basic_block(7, 7, 64, 64) == 2 * (2 * 19 * 19 * 64 * 64) + 2 * (2 * n) + n + n + n
  # count_padding only moves the conv terms (CNN: two 3x3 convs on 28x28x1 and 14x14x32).
  model = CNN(schema=MNIST)
  assert vision_flops(model, count_padding=True) - vision_flops(model) == (
      2 * 32 * (9 * 28 * 28 - 82 * 82) + 2 * 32 * 64 * (9 * 14 * 14 - 40 * 40))


def test_breakdowns():
  cnn = vision_flops_breakdown(CNN(schema=MNIST))
  n0, n1 = 28 * 28 * 32, 14 * 14 * 64
  assert cnn == {'conv_0': 2 * 82 * 82 * 1 * 32 + 3 * n0, 'pool_0': 3 * 14 * 14 * 32,
                 'conv_1': 2 * 40 * 40 * 32 * 64 + 3 * n1, 'pool_1': 3 * 7 * 7 * 64,
                 'hidden': 2 * 3136 * 128 + 128 + 128, 'classifier': 2 * 128 * 10 + 10}
  model = ResNet(schema=CIFAR)
  parts = vision_flops_breakdown(model)
  assert list(parts) == ['stem', 'stage_1', 'stage_2', 'stage_3', 'pool', 'classifier']
  assert sum(parts.values()) == vision_flops(model)
  assert parts['pool'] == 8 * 8 * 64 and parts['classifier'] == 2 * 64 * 7 + 7
  assert parts['stage_1'] == 3 * basic_block(32, 32, 16, 16)
  assert parts['stage_3'] == basic_block(16, 16, 32, 64, 2) + 2 * basic_block(8, 8, 64, 64)
  with pytest.raises(TypeError, match='no vision FLOP counter for Dense; supported'):
    vision_flops(nn.Dense(3))


# ---- training ----

STEPS = 5


@pytest.mark.parametrize('cls, kwargs', [(CNN, {'dropout': 0.25}), (ResNet, {})],
                         ids=['CNN', 'ResNet'])
def test_adam_steps_reduce_the_loss(cls, kwargs):
  model = cls(schema=MNIST, **kwargs)
  batch = images(MNIST, 8, seed=3)
  labels = jax.random.randint(jax.random.key(4), (8,), 0, MNIST.num_classes)
  variables = nn.unbox(init(model, batch))
  optimizer = optax.adam(1e-3)

  def loss_fn(params, stats, key):
    logits, updates = model.apply({'params': params, 'batch_stats': stats}, batch, train=True,
                                  rngs={'dropout': key}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates['batch_stats']

  @jax.jit
  def step(params, stats, opt_state, key):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  params, stats = variables['params'], variables['batch_stats']
  measure = jax.random.key(STEPS)  # the same dropout mask before and after
  initial, _ = loss_fn(params, stats, measure)
  opt_state = optimizer.init(params)
  for i in range(STEPS):
    params, stats, opt_state, _ = step(params, stats, opt_state, jax.random.key(i))
  final, _ = loss_fn(params, stats, measure)
  assert np.isfinite(float(final))
  assert float(final) < 0.5 * float(initial), (float(initial), float(final))


# ---- validation ----


@pytest.mark.parametrize('make, field', [
    (lambda: CNN(schema=MNIST, channels=()), 'channels'),
    (lambda: CNN(schema=MNIST, channels=(32, 0)), r'channels\[1\]'),
    (lambda: CNN(schema=MNIST, channels=(8.5,)), r'channels\[0\]'),
    (lambda: CNN(schema=MNIST, hidden=0), 'hidden'),
    (lambda: CNN(schema=MNIST, dropout=1.0), 'dropout'),
    (lambda: CNN(schema=MNIST, dropout=-0.1), 'dropout'),
    (lambda: CNN(schema=MNIST, channels=(4,) * 5), 'channels'),  # 28 -> 0 after 5 pools
    (lambda: ResNet(schema=MNIST, width=0), 'width'),
    (lambda: ResNet(schema=MNIST, width=1.5), 'width'),
    (lambda: ResNet(schema=MNIST, blocks_per_stage=0), 'blocks_per_stage'),
    (lambda: ResNet(schema=MNIST, blocks_per_stage=True), 'blocks_per_stage'),
    (lambda: ResNet(schema=None), 'schema'),
])
def test_bad_hyperparameters_raise_naming_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()


@pytest.mark.parametrize('cls', MODELS, ids=lambda c: c.__name__)
def test_image_that_does_not_match_the_schema_raises(cls):
  model = cls(schema=MNIST)
  with pytest.raises(ValueError, match='image shape'):
    init(model, images(CIFAR, 2))
  with pytest.raises(ValueError, match="no 'image' entry"):
    init(model, {'pixels': images(MNIST, 2)['image']})
