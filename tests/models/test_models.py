"""Behaviour common to every baseline model, and each model against a numpy reference."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrec.layers import LOGICAL_AXIS_NAMES
from jaxrec.models import MODELS, build_model

# The BARS baselines; Wukong and DHEN have their own tests (tests/models/test_wukong_dhen.py).
BASELINES = ('dcnv2', 'deepfm', 'dlrm', 'fm', 'lr')
from tests.models.tiny import (MIXED, SPARSE, init, make_batch, np_embed, np_linear, np_mlp,
                               np_pairwise_sum, random_variables)

RTOL, ATOL = 1e-5, 1e-5
D = 3  # embedding dim

SMALL = {
    'lr': {},
    'fm': {},
    'deepfm': dict(hidden_units=(8, 8)),
    # tanh: a ReLU bottom MLP with random parameters can be dead for every row of a tiny batch.
    'dlrm': dict(top_mlp_units=(8, 8), bottom_mlp_units=(8,), activation='tanh'),
    'dcnv2': dict(num_cross_layers=2, parallel_dnn_hidden_units=(8, 8)),
}
# Dropout and BatchNorm switched on (the models that have a DNN).
NOISY = {
    'deepfm': dict(dropout_rate=0.5, batch_norm=True),
    'dlrm': dict(top_dropout_rate=0.5, bottom_dropout_rate=0.5, batch_norm=True),
    'dcnv2': dict(dropout_rate=0.5, batch_norm=True),
}


def _model(name, noisy=False, **kw):
  return build_model(name, MIXED, embedding_dim=D,
                     **{**SMALL[name], **(NOISY.get(name, {}) if noisy else {}), **kw})


def _apply(model, variables, batch, train, seed=0):
  return model.apply(variables, batch, train, rngs={'dropout': jax.random.key(seed)},
                     mutable=['batch_stats'])


@pytest.mark.parametrize('name', BASELINES)
@pytest.mark.parametrize('schema', [MIXED, SPARSE], ids=['mixed', 'sparse'])
def test_shape_dtype_and_eval_determinism(name, schema):
  model = build_model(name, schema, embedding_dim=D, **SMALL[name], **NOISY.get(name, {}))
  batch = make_batch(schema)
  variables = random_variables(model, batch)
  out1, upd = _apply(model, variables, batch, train=False, seed=1)
  out2, _ = _apply(model, variables, batch, train=False, seed=2)
  assert out1.shape == (8,) and out1.dtype == np.float32
  assert np.all(np.isfinite(out1))
  np.testing.assert_array_equal(out1, out2)
  # Eval mode leaves the BatchNorm statistics alone.
  jax.tree.map(np.testing.assert_array_equal, upd.get('batch_stats', {}),
               variables.get('batch_stats', {}))


@pytest.mark.parametrize('name', sorted(NOISY))
def test_dropout_changes_train_outputs_and_batch_stats_update(name):
  model = _model(name, noisy=True)
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  ev, _ = _apply(model, variables, batch, train=False)
  t1, upd = _apply(model, variables, batch, train=True, seed=1)
  t2, _ = _apply(model, variables, batch, train=True, seed=2)
  assert not np.allclose(t1, ev) and not np.allclose(t1, t2)
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(upd['batch_stats'])
  assert len(new) == len(old) > 0
  for a, b in zip(old, new):
    assert np.all(np.asarray(a) != np.asarray(b))


@pytest.mark.parametrize('name', ['lr', 'fm'])
def test_models_without_dnn_are_the_same_in_train_mode(name):
  model = _model(name)
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  np.testing.assert_array_equal(_apply(model, variables, batch, True)[0],
                                _apply(model, variables, batch, False)[0])


@pytest.mark.parametrize('name', BASELINES)
def test_uses_dense_and_multi_hot_but_not_padding(name):
  model = _model(name)
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  base, _ = _apply(model, variables, batch, False)
  changed = dict(batch, dense=batch['dense'] + 1.0)
  assert not np.array_equal(_apply(model, variables, changed, False)[0], base)
  ids = batch['multi_hot_ids'].copy()
  ids[:, 0, 0] = (ids[:, 0, 0] + 1) % 6  # first bag entry is always valid (length >= 1)
  assert not np.array_equal(_apply(model, variables, dict(batch, multi_hot_ids=ids), False)[0],
                            base)
  ids = batch['multi_hot_ids'].copy()
  lengths = batch['multi_hot_lengths']
  pad = np.arange(3)[None, :] >= lengths[:, 0:1]  # padded slots of the 'tags' bags
  ids[:, 0, :][pad] = 5
  np.testing.assert_array_equal(_apply(model, variables, dict(batch, multi_hot_ids=ids), False)[0],
                                base)


@pytest.mark.parametrize('name', BASELINES)
def test_missing_dense_features_raise(name):
  model = _model(name)
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  with pytest.raises(ValueError, match='dense'):
    model.apply(variables, {k: v for k, v in batch.items() if k != 'dense'}, False)
  with pytest.raises(ValueError, match=r"features\['dense'\]"):
    model.apply(variables, dict(batch, dense=batch['dense'][:, :1]), False)


@pytest.mark.parametrize('name', BASELINES)
def test_every_parameter_has_documented_logical_axes(name):
  model = _model(name, noisy=True, **({'use_low_rank_mixture': True} if name == 'dcnv2' else {}))
  batch = make_batch(MIXED)
  boxed = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, batch,
                                             train=False))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == len(leaf.value.shape)
    assert set(leaf.names) <= set(LOGICAL_AXIS_NAMES), leaf.names
  # Embedding tables, and nothing else, carry 'vocab'.
  tables = [l for l in leaves if 'vocab' in l.names]
  assert len(tables) == MIXED.num_fields * (2 if name in ('fm', 'deepfm') else 1)


# ---- each model against a numpy reference (eval mode, random parameters) ----


def _ref_setup(name, **kw):
  model = _model(name, **kw)
  batch = make_batch(MIXED, seed=3)
  variables = random_variables(model, batch)
  out, _ = _apply(model, variables, batch, False)
  return out, variables['params'], variables.get('batch_stats'), batch


def test_lr_matches_numpy():
  out, p, _, batch = _ref_setup('lr')
  np.testing.assert_allclose(out, np_linear(p['linear'], MIXED, batch), rtol=RTOL, atol=ATOL)


def test_fm_matches_numpy():
  out, p, _, batch = _ref_setup('fm')
  emb = np_embed(p['embedding'], MIXED, batch)
  ref = np_linear(p['linear'], MIXED, batch) + np_pairwise_sum(emb)
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_deepfm_matches_numpy():
  out, p, stats, batch = _ref_setup('deepfm', batch_norm=True)
  assert 'bias' not in p['linear']  # FuxiCTR: one bias, on the DNN output
  emb = np_embed(p['embedding'], MIXED, batch)
  dnn_in = np.concatenate([emb.reshape(8, -1), batch['dense']], 1)
  ref = (np_linear(p['linear'], MIXED, batch) + np_pairwise_sum(emb)
         + np_mlp(p['dnn'], dnn_in, stats['dnn'])[:, 0])
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('interaction', ['dot', 'cat'])
def test_dlrm_matches_numpy(interaction):
  out, p, _, batch = _ref_setup('dlrm', interaction=interaction)
  emb = np_embed(p['embedding'], MIXED, batch)
  dense_emb = np_mlp(p['bottom_mlp'], batch['dense'], act=np.tanh, out_act=np.tanh)  # [B, d]
  fields = np.concatenate([emb, dense_emb[:, None]], 1)  # dense embedding is the last field
  n = fields.shape[1]
  if interaction == 'dot':
    pairs = [(fields[:, i] * fields[:, j]).sum(-1) for i in range(n) for j in range(i + 1, n)]
    top_in = np.concatenate([np.stack(pairs, 1), dense_emb], 1)
    assert p['top_mlp']['dense_0']['kernel'].shape[0] == n * (n - 1) // 2 + D
  else:
    top_in = fields.reshape(8, -1)
  ref = np_mlp(p['top_mlp'], top_in, act=np.tanh)[:, 0]
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_dlrm_without_dense_has_no_bottom_mlp():
  model = build_model('dlrm', SPARSE, embedding_dim=D, **SMALL['dlrm'])
  params = random_variables(model, make_batch(SPARSE))['params']
  assert set(params) == {'embedding', 'top_mlp'}
  assert params['top_mlp']['dense_0']['kernel'].shape[0] == 3  # 3 fields -> 3 pairs


def _np_cross(p, x0, num_layers):
  x = x0
  for i in range(num_layers):
    q = p[f'cross_{i}']
    x = x0 * (x @ q['kernel'] + q['bias']) + x
  return x


@pytest.mark.parametrize('structure', ['crossnet_only', 'stacked', 'parallel',
                                       'stacked_parallel'])
def test_dcnv2_matches_numpy(structure):
  out, p, stats, batch = _ref_setup('dcnv2', model_structure=structure, batch_norm=True,
                                    stacked_dnn_hidden_units=(5,))
  emb = np_embed(p['embedding'], MIXED, batch)
  x0 = np.concatenate([emb.reshape(8, -1), batch['dense']], 1)
  cross = _np_cross(p['crossnet'], x0, 2)
  stacked = lambda: np_mlp(p['stacked_dnn'], cross, stats['stacked_dnn'])
  parallel = lambda: np_mlp(p['parallel_dnn'], x0, stats['parallel_dnn'])
  final = {'crossnet_only': lambda: cross,
           'stacked': stacked,
           'parallel': lambda: np.concatenate([cross, parallel()], 1),
           'stacked_parallel': lambda: np.concatenate([stacked(), parallel()], 1)}[structure]()
  ref = final @ p['fc']['output']['kernel'][:, 0] + p['fc']['output']['bias'][0]
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_dcnv2_low_rank_mixture_matches_numpy():
  out, p, _, batch = _ref_setup('dcnv2', use_low_rank_mixture=True, low_rank=2, num_experts=3)
  emb = np_embed(p['embedding'], MIXED, batch)
  x0 = np.concatenate([emb.reshape(8, -1), batch['dense']], 1)
  x = x0
  for i in range(2):
    q = p['crossnet'][f'cross_{i}']
    z = x @ q['gate']
    g = np.exp(z - z.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    new = x.copy()
    for e in range(3):
      h = np.tanh(np.tanh(x @ q['V'][e]) @ q['C'][e])
      new += g[:, e:e + 1] * x0 * (h @ q['U'][e] + q['bias'])
    x = new
  final = np.concatenate([x, np_mlp(p['parallel_dnn'], x0)], 1)
  ref = final @ p['fc']['output']['kernel'][:, 0] + p['fc']['output']['bias'][0]
  np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


# ---- construction ----


def test_build_model_rejects_unknown_names_and_hyperparameters():
  with pytest.raises(ValueError, match=r"unknown model 'wide'.*'dcnv2'.*'lr'"):
    build_model('wide', SPARSE)
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['hidden'\].*hidden_units"):
    build_model('deepfm', SPARSE, hidden=(4,))
  with pytest.raises(ValueError, match='model_structure'):
    build_model('dcnv2', SPARSE, model_structure='serial')
  with pytest.raises(ValueError, match='interaction'):
    build_model('dlrm', SPARSE, interaction='sum')
  assert set(MODELS) == {'lr', 'fm', 'deepfm', 'dlrm', 'dcnv2', 'wukong', 'dhen', 'cnn', 'resnet',
                         'decoder_lm'}
  with pytest.raises(ValueError, match="'cnn' is an image model .*ImageSchema.*the data has a "
                     "FeatureSchema"):
    build_model('cnn', SPARSE)
  with pytest.raises(ValueError, match="'decoder_lm' is a token-sequence model"):
    build_model('decoder_lm', SPARSE)
  with pytest.raises(ValueError, match='embedding_dim'):
    build_model('fm', SPARSE, embedding_dim=0)
  model = build_model('dcnv2', SPARSE, embedding_dim=4, num_cross_layers=1,
                      parallel_dnn_hidden_units=[8, 8])
  assert isinstance(model, MODELS['dcnv2']) and model.embedding_dim == 4
  assert model.parallel_dnn_hidden_units == (8, 8)
  hash(model)


def test_initialisation_follows_fuxictr():
  model = build_model('deepfm', SPARSE, embedding_dim=16, hidden_units=(300,))
  p = init(model, make_batch(SPARSE))['params']
  for table in list(p['embedding'].values()) + list(p['linear']['embedding'].values()):
    assert np.abs(table).max() < 1e-3  # N(0, 1e-4)
  kernel = p['dnn']['dense_0']['kernel']  # [48, 300]
  assert abs(kernel.std() / np.sqrt(2 / (48 + 300)) - 1) < 0.05
  np.testing.assert_array_equal(p['dnn']['dense_0']['bias'], 0)
  lr = init(build_model('lr', SPARSE), make_batch(SPARSE))['params']
  np.testing.assert_array_equal(lr['linear']['bias'], 0)
