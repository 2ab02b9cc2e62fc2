"""Each model, from its real initialisation, fits 64 rows of a learnable rule with Adam."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.data.schema import one_hot_schema
from jaxrec.models import MODELS, build_model

# The BARS baselines; Wukong and DHEN have their own tests (tests/models/test_wukong_dhen.py).
BASELINES = ('dcnv2', 'deepfm', 'dlrm', 'fm', 'lr')

SCHEMA = one_hot_schema(['a', 'b', 'c'], [8, 8, 8], dense=['x'])
ROWS, STEPS = 64, 300
CONFIGS = {
    'lr': {},
    'fm': {},
    'deepfm': dict(hidden_units=(32, 32), batch_norm=True),
    'dlrm': dict(top_mlp_units=(32, 32), bottom_mlp_units=(16,)),
    'dcnv2': dict(num_cross_layers=2, parallel_dnn_hidden_units=(32, 32), batch_norm=True),
}


def _data():
  """Label = 1 iff an additive score of the three ids and the dense value is above its median."""
  rng = np.random.default_rng(0)
  sparse = rng.integers(0, 8, (ROWS, 3)).astype(np.int32)
  dense = rng.normal(size=(ROWS, 1)).astype(np.float32)
  tables = rng.normal(size=(3, 8))
  score = tables[np.arange(3)[None, :], sparse].sum(1) + dense[:, 0]
  label = (score > np.median(score)).astype(np.float32)
  return {'sparse': sparse, 'dense': dense, 'label': label, 'weight': np.ones(ROWS, np.float32)}


def _auc(label, score):
  """Probability that a random positive outranks a random negative (ties count half)."""
  pos, neg = score[label == 1], score[label == 0]
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@functools.partial(jax.jit, static_argnums=0)
def _fit(model, batch, key):
  keys = {'params': key, 'dropout': key}
  variables = model.init(keys, batch, train=False)
  params, stats = variables['params'], variables.get('batch_stats', {})
  opt = optax.adam(1e-2)

  def loss_fn(params, stats, key):
    logits, upd = model.apply({'params': params, 'batch_stats': stats}, batch, True,
                              rngs={'dropout': key}, mutable=['batch_stats'])
    return optax.sigmoid_binary_cross_entropy(logits, batch['label']).mean(), upd

  def step(carry, key):
    params, stats, opt_state = carry
    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, key)
    updates, opt_state = opt.update(grads, opt_state)
    return (optax.apply_updates(params, updates), upd.get('batch_stats', {}), opt_state), loss

  (params, stats, _), losses = jax.lax.scan(step, (params, stats, opt.init(params)),
                                            jax.random.split(key, STEPS))
  logits = model.apply({'params': params, 'batch_stats': stats}, batch, False)
  return logits, losses


@pytest.mark.parametrize('name', BASELINES)
def test_overfits_64_rows(name):
  batch = _data()
  model = build_model(name, SCHEMA, embedding_dim=4, **CONFIGS[name])
  logits, losses = _fit(model, batch, jax.random.key(0))
  losses = np.asarray(losses)
  assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
  assert _auc(batch['label'], np.asarray(logits)) > 0.97
