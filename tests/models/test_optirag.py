"""OptiRAG-Rec's prompted CTR model: heads on every layer, the partial fine-tune path and the
optimizer (per-head learning rates). The early-exit servers are tested in tests/serving."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.layers.bert import BertConfig
from jaxrec.layers.exit_heads import yes_no_margin
from jaxrec.models import optirag

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_layers=4, num_heads=2,
                    intermediate_size=32, max_position=12, dropout_rate=0.0)
B, T = 24, 10


@pytest.fixture(scope='module')
def model_and_batch():
  model = optirag.OptiRAGCTR(CONFIG, head_hidden=8)
  params = optirag.init_params(model, jax.random.PRNGKey(0))
  # scale up the head outputs so margins spread over several units (some exit early)
  params['heads']['kernel_2'] = params['heads']['kernel_2'] * 8.0
  rng = np.random.default_rng(0)
  ids = rng.integers(1, CONFIG.vocab_size, (B, T)).astype(np.int32)
  lengths = rng.integers(2, T + 1, B)
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
  ids = ids * mask
  logits = jax.jit(model.apply)({'params': params}, ids, mask)
  return model, params, ids, mask, np.asarray(logits)


def test_full_depth_margins_and_partial_path(model_and_batch):
  _, params, ids, mask, logits = model_and_batch
  assert logits.shape == (CONFIG.num_layers, B, 2)
  full = optirag.predict_margins(CONFIG, params, ids, mask, batch_size=16)  # 2 batches, padded
  np.testing.assert_allclose(full, yes_no_margin(logits), atol=1e-5, rtol=1e-5)
  for k in (0, 2):
    states = jax.jit(lambda p, i, m: optirag.frozen_states(CONFIG, p, i, m, k))(
        params['encoder'], ids, mask)
    assert states.shape == (max(k, 1), B, T, CONFIG.hidden_size)
    trainable, _ = optirag.split_trainable(params, k, CONFIG.num_layers)
    assert sorted(trainable['encoder']) == [f'layer_{i}' for i in range(k, CONFIG.num_layers)]
    upper = jax.jit(lambda p, s, m: optirag.upper_logits(CONFIG, p, s, m, k))(trainable, states,
                                                                            mask)
    np.testing.assert_allclose(upper, logits, atol=1e-5, rtol=1e-5)


def test_init_params_keeps_given_encoder_params(model_and_batch):
  model, params, _, _, _ = model_and_batch
  again = optirag.init_params(model, jax.random.PRNGKey(5), params['encoder'])
  assert again['encoder'] is params['encoder']
  assert jax.tree.map(np.shape, again['heads']) == jax.tree.map(np.shape, params['heads'])
  shapes = jax.tree.map(lambda x: x.shape, optirag.param_shapes(model))
  assert jax.tree.map(np.shape, params) == shapes
  with pytest.raises(ValueError, match='encoder_params do not match'):
    optirag.init_params(model, jax.random.PRNGKey(5), {'embeddings': params['encoder'][
        'embeddings']})


def test_multi_head_loss_is_the_weighted_sum():
  logits = jnp.array([[[1.0, 0.0], [0.0, 2.0]], [[0.5, 0.5], [3.0, -1.0]]])  # [2, 2, 2]
  labels = jnp.array([1.0, 0.0])
  w = jnp.array([0.25, 2.0])
  loss, per = optirag.multi_head_loss(logits, labels, w)
  m = np.array([[1.0, -2.0], [0.0, 4.0]])
  bce = np.log1p(np.exp(-m)) * [1, 0] + np.log1p(np.exp(m)) * [0, 1]  # per head, per sample
  np.testing.assert_allclose(per, bce.mean(1), rtol=1e-6)
  np.testing.assert_allclose(loss, (w * bce.mean(1)).sum(), rtol=1e-6)


def test_head_learning_rates_fall_with_depth():
  lrs = optirag.head_learning_rates(1e-3, 4, 3.0)
  np.testing.assert_allclose(lrs, 1e-3 * 3.0 ** (np.arange(3, -1, -1) / 3), rtol=1e-6)
  assert np.all(np.diff(lrs) < 0)


def test_optimizer_gives_shallower_heads_larger_steps():
  lrs = np.array([4e-3, 2e-3, 1e-3], np.float32)
  params = {'encoder': {'w': jnp.zeros((2,))}, 'heads': {'k': jnp.zeros((3, 2))}}
  tx = optirag.make_optimizer(5e-4, lrs, weight_decay=0.0, max_grad_norm=0.0)
  grads = {'encoder': {'w': jnp.ones((2,))}, 'heads': {'k': jnp.full((3, 2), 0.3)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves every coordinate by ~lr against the gradient sign
  np.testing.assert_allclose(updates['heads']['k'], -np.repeat(lrs[:, None], 2, 1), rtol=1e-4)
  np.testing.assert_allclose(updates['encoder']['w'], [-5e-4, -5e-4], rtol=1e-4)


def test_train_steps_fit_a_batch_and_leave_frozen_layers(model_and_batch):
  _, params, ids, mask, _ = model_and_batch
  k = 1
  labels = (np.arange(B) % 2).astype(np.float32)
  states = jax.jit(lambda p, i, m: optirag.frozen_states(CONFIG, p, i, m, k))(
      params['encoder'], ids, mask)
  trainable, frozen = optirag.split_trainable(params, k, CONFIG.num_layers)
  lrs = optirag.head_learning_rates(1e-2, CONFIG.num_layers, 2.0)
  tx = optirag.make_optimizer(1e-3, lrs)
  step = jax.jit(optirag.make_train_step(CONFIG, tx, k, [1.0] * CONFIG.num_layers))
  opt_state = tx.init(trainable)
  batch = {'states': states.astype(jnp.float16), 'attention_mask': mask, 'label': labels}
  first = None
  for s in range(25):
    trainable, opt_state, loss, per = step(trainable, opt_state, batch, jax.random.PRNGKey(s))
    first = float(loss) if first is None else first
  assert float(loss) < 0.5 * first
  merged = optirag.merge_params(trainable, frozen)
  np.testing.assert_array_equal(merged['encoder']['layer_0']['query']['kernel'],
                                params['encoder']['layer_0']['query']['kernel'])
  assert not np.allclose(merged['encoder']['layer_1']['query']['kernel'],
                         params['encoder']['layer_1']['query']['kernel'])
  with pytest.raises(ValueError, match='layer_weights must have 4 entries'):
    optirag.make_train_step(CONFIG, tx, k, [1.0])


def test_scale_by_layer_and_config():
  tx = optirag.scale_by_layer(np.array([1.0, 2.0]))
  u, _ = tx.update({'a': jnp.ones((2, 3))}, tx.init(None))
  np.testing.assert_array_equal(u['a'], [[-1.0] * 3, [-2.0] * 3])
  c = optirag.optirag_config('lm')
  assert c.retriever == 'lm' and len(c.layer_weights) == 6
  with pytest.raises(ValueError, match='retriever must be none, gcn or lm'):
    optirag.optirag_config('bm25')
