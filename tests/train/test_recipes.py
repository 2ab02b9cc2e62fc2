"""Recipes (jaxrec.train.recipes) against hand-written references of their losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import state as state_lib
from jaxrec.train.recipes import DLB, SMC, LabelSmoothing, PlainRecipe, dropout_key, with_next
from jaxrec.train.tasks import ClassificationTask, CTRTask, Task

C = 3
B = 8


class Linear(nn.Module):
  """logits = image.reshape(B, -1) @ W + b, optionally after a BatchNorm of the flat image."""
  batch_norm: bool = False

  @nn.compact
  def __call__(self, feats, train: bool = False):
    x = feats['image'].reshape(feats['image'].shape[0], -1)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(C)(x)


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(B, 4, 4, 1)).astype(np.float32),
           'label': rng.integers(0, C, B).astype(np.int32),
           'weight': np.r_[np.ones(B - 1), 0.0].astype(np.float32)} for _ in range(n)]


NO_AUG = ClassificationTask(num_classes=C, augment_padding=0, augment_flip=False)


def _run(recipe, batches, model=Linear(), task=NO_AUG, lr=0.1):
  """Steps over ``batches`` (each with the next as lookahead when the recipe asks);
  returns the states after each step and the metrics."""
  tx = optax.sgd(lr)
  state, mask = state_lib.create_train_state(model, batches[0], tx, 0, recipe)
  cfg = state_lib.OptimConfig()
  step = jax.jit(state_lib.make_train_step(
      model, tx, mask, cfg, state_lib.make_loss_and_grad(model, mask, cfg, task=task,
                                                         recipe=recipe)))
  states, metrics = [state], []
  for i in range(len(batches) - 1):
    batch = with_next(batches[i], batches[i + 1]) if recipe.lookahead else batches[i]
    state, m = step(state, batch)
    states.append(state)
    metrics.append(m)
  return states, metrics


def _logits(model, params, batch):
  return model.apply({'params': params}, {'image': batch['image']}, train=True)


def _wmean(x, w):
  return jnp.sum(x * w) / jnp.sum(w)


def _ce(logits, batch):
  return _wmean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
                batch['weight'])


def _kl(teacher, student, temp):
  pt = jax.nn.softmax(teacher / temp)
  return jnp.sum(pt * (jax.nn.log_softmax(teacher / temp) - jax.nn.log_softmax(student / temp)),
                 axis=-1)


def test_smc_two_steps_equal_the_hand_reference():
  batches = _batches(4)
  recipe = SMC(channels=2, alpha=0.9, temperature=1.5, ramp='constant', total_steps=10)
  states, metrics = _run(recipe, batches)
  model = Linear()
  p0 = states[0].params
  # Step 0: nothing held, plain CE; the held soft labels are batch 1's outputs at p0.
  g0 = jax.grad(lambda p: _ce(_logits(model, p, batches[0]), batches[0]))(p0)
  p1 = jax.tree.map(lambda p, g: p - 0.1 * g, p0, g0)
  np.testing.assert_allclose(np.asarray(states[1].recipe_state['teacher'][0]),
                             np.asarray(_logits(model, p0, batches[1])), rtol=1e-6, atol=1e-6)
  assert float(metrics[0]['distill_weight']) == 0.0
  # Step 1: (1 - a) CE + a KL(held || outputs / T), batch mean over weighted rows.
  held = _logits(model, p0, batches[1])

  def loss1(p):
    out = _logits(model, p, batches[1])
    return 0.1 * _ce(out, batches[1]) + 0.9 * _wmean(_kl(held, out, 1.5), batches[1]['weight'])

  np.testing.assert_allclose(float(metrics[1]['loss']), float(loss1(p1)), rtol=1e-6)
  g1 = jax.grad(loss1)(p1)
  p2 = jax.tree.map(lambda p, g: p - 0.1 * g, p1, g1)
  for got, want in zip(jax.tree.leaves(states[2].params), jax.tree.leaves(p2)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_smc_identical_views_distil_from_identical_inputs():
  """With a frozen model (lr 0) the identical channels' held outputs equal the student's, so the
  distillation term is 0; independent augmentations make it positive."""
  batches = _batches(3)
  task = ClassificationTask(num_classes=C, augment_padding=1, augment_flip=True)
  kl = {}
  for views in ('identical', 'independent'):
    recipe = SMC(channels=2, views=views, ramp='constant', total_steps=10)
    _, metrics = _run(recipe, batches, task=task, lr=0.0)
    kl[views] = float(metrics[1]['distill_loss'])
  assert abs(kl['identical']) < 1e-6
  assert kl['independent'] > 1e-3


def test_smc_batch_norm_statistics_come_from_the_held_channels():
  batches = _batches(3)
  model = Linear(batch_norm=True)
  recipe = SMC(channels=3, ramp='constant', total_steps=10)
  states, _ = _run(recipe, batches, model=model)
  s0 = states[0]
  stats = s0.batch_stats
  for _ in range(2):  # channels 2 and 3 run on batch 1 (no augmentation: the same input)
    _, upd = model.apply({'params': s0.params, 'batch_stats': stats},
                         {'image': batches[1]['image']}, train=True, mutable=['batch_stats'])
    stats = upd['batch_stats']
  for got, want in zip(jax.tree.leaves(states[1].batch_stats), jax.tree.leaves(stats)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  assert states[1].recipe_state['teacher'].shape == (2, B, C)


def test_smc_cosine_ramp():
  r = SMC(alpha=0.9, total_steps=100)
  np.testing.assert_allclose([float(r.weight(s)) for s in (0, 50, 100, 200)],
                             [0.0, 0.45, 0.9, 0.9], atol=1e-6)


def test_dlb_step_equals_the_hand_reference():
  batches = _batches(3)
  recipe = DLB(alpha=1.0, temperature=3.0)
  states, metrics = _run(recipe, batches)
  model = Linear()
  p0, p1 = states[0].params, states[1].params
  held = _logits(model, p0, batches[1])
  np.testing.assert_allclose(np.asarray(states[1].recipe_state['teacher'][0]), np.asarray(held),
                             rtol=1e-6, atol=1e-6)

  def loss1(p):
    both = {k: np.concatenate([batches[1][k], batches[2][k]]) for k in batches[1]}
    ce = _ce(_logits(model, p, both), both)
    kl = _wmean(_kl(held, _logits(model, p, batches[1]), 3.0), batches[1]['weight'])
    return ce + 9.0 * kl

  np.testing.assert_allclose(float(metrics[1]['loss']), float(loss1(p1)), rtol=1e-6)


def test_label_smoothing_equals_optax():
  batches = _batches(2)
  _, metrics = _run(LabelSmoothing(0.2), batches)
  states, _ = _run(PlainRecipe(), batches[:1] + batches[:1])
  model = Linear()
  out = _logits(model, states[0].params, batches[0])
  want = _wmean(optax.softmax_cross_entropy(
      out, optax.smooth_labels(jax.nn.one_hot(batches[0]['label'], C), 0.2)), batches[0]['weight'])
  np.testing.assert_allclose(float(metrics[0]['loss']), float(want), rtol=1e-6)


def test_plain_recipe_keeps_the_ctr_dropout_key():
  rng = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(np.asarray(dropout_key(rng, 7)),
                                np.asarray(jax.random.fold_in(rng, 7)))


def test_ctr_distillation_is_the_two_class_kl():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
  ctr = CTRTask().distill_row_loss(jnp.asarray(s), jnp.asarray(t), 1.5)
  two = ClassificationTask(num_classes=2).distill_row_loss(
      jnp.stack([jnp.zeros(16), s], -1), jnp.stack([jnp.zeros(16), t], -1), 1.5)
  np.testing.assert_allclose(np.asarray(ctr), np.asarray(two), rtol=1e-5, atol=1e-6)


def test_distillation_needs_soft_labels():

  class Ranking(Task):
    name = 'ranking'
    soft_labels = False

  for recipe in (SMC(), DLB()):
    with pytest.raises(ConfigError, match='soft labels'):
      recipe.check(Ranking())
  PlainRecipe().check(Ranking())


@pytest.mark.parametrize('kwargs,field', [({'channels': 1}, 'channels'),
                                          ({'views': 'same'}, 'views'),
                                          ({'alpha': 1.5}, 'alpha'),
                                          ({'temperature': 0.0}, 'temperature'),
                                          ({'ramp': 'linear'}, 'ramp')])
def test_smc_bad_settings_name_the_field(kwargs, field):
  with pytest.raises(ConfigError, match=f'config.smc.{field}'):
    SMC(**kwargs)
