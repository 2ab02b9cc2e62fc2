"""Wukong and DHEN: the model contract of the baselines, and each model against numpy."""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from jaxrec.layers import LOGICAL_AXIS_NAMES
from jaxrec.layers import dhen as dhen_lib
from jaxrec.layers import wukong as wukong_lib
from jaxrec.models import MODELS, build_model
from jaxrec.models.wukong import Wukong, upscale
from tests.layers.test_dhen import _ln, _np_module
from tests.models.tiny import MIXED, SPARSE, make_batch, np_embed, np_mlp, random_variables

RTOL, ATOL = 1e-5, 1e-5
D = 4  # embedding dim (the DHEN module references in tests/layers/test_dhen.py use 4)

SMALL = {
    'wukong': dict(num_layers=2, num_fm_embeddings=2, num_lcb_embeddings=3, fm_rank=2,
                   fmb_mlp_units=(6,), top_mlp_units=(8, 8), num_dense_embeddings=2,
                   dense_mlp_units=(5,), activation='tanh'),
    'dhen': dict(layers=(('dot', 'attention', 'cross', 'linear', 'conv'), ('dot', 'linear')),
                 num_embeddings=3, num_heads=2, ffn_units=6, conv_channels=2,
                 top_mlp_units=(8, 8), num_dense_embeddings=2, dense_mlp_units=(5,),
                 activation='tanh'),
}
NOISY = dict(dropout_rate=0.5, batch_norm=True)
NAMES = sorted(SMALL)


def _model(name, schema=MIXED, **kw):
  return build_model(name, schema, embedding_dim=D, **{**SMALL[name], **kw})


def _apply(model, variables, batch, train, seed=0):
  return model.apply(variables, batch, train, rngs={'dropout': jax.random.key(seed)},
                     mutable=['batch_stats'])


def test_registered():
  assert MODELS['wukong'] is Wukong and MODELS['dhen'].__name__ == 'DHEN'


@pytest.mark.parametrize('name', NAMES)
def test_shape_dtype_and_eval_determinism(name):
  # Sparse-only schema here; the mixed one (dense + multi-hot) is covered by the numpy tests.
  model = _model(name, SPARSE, **NOISY)
  batch = make_batch(SPARSE)
  variables = random_variables(model, batch)
  out1, upd = _apply(model, variables, batch, False, seed=1)
  out2, _ = _apply(model, variables, batch, False, seed=2)
  assert out1.shape == (8,) and out1.dtype == np.float32 and np.all(np.isfinite(out1))
  np.testing.assert_array_equal(out1, out2)
  jax.tree.map(np.testing.assert_array_equal, upd['batch_stats'], variables['batch_stats'])


@pytest.mark.parametrize('name', NAMES)
def test_dropout_changes_train_outputs_and_batch_stats_update(name):
  model = _model(name, **NOISY, **({'fmb_dropout_rate': 0.5} if name == 'wukong' else {}))
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  ev, _ = _apply(model, variables, batch, False)
  t1, upd = _apply(model, variables, batch, True, seed=1)
  t2, _ = _apply(model, variables, batch, True, seed=2)
  assert not np.allclose(t1, ev) and not np.allclose(t1, t2)
  for a, b in zip(jax.tree.leaves(variables['batch_stats']), jax.tree.leaves(upd['batch_stats'])):
    assert np.all(np.asarray(a) != np.asarray(b))


@pytest.mark.parametrize('name', NAMES)
def test_every_parameter_has_documented_logical_axes(name):
  model = _model(name, **NOISY, **({'fm_projection': 'projected'} if name == 'wukong' else
                                   {'ensemble': 'weighted_sum'}))
  boxed = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, make_batch(MIXED),
                                            train=False))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  known = set(LOGICAL_AXIS_NAMES) | set(wukong_lib.AXIS_NAMES) | set(dhen_lib.AXIS_NAMES)
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), type(leaf)
    assert len(leaf.names) == len(leaf.value.shape)
    assert set(leaf.names) <= known, leaf.names
  assert len([l for l in leaves if 'vocab' in l.names]) == MIXED.num_fields


@pytest.mark.parametrize('name', NAMES)
def test_missing_dense_features_raise(name):
  model = _model(name)
  batch = make_batch(MIXED)
  variables = random_variables(model, batch)
  with pytest.raises(ValueError, match='dense'):
    model.apply(variables, {k: v for k, v in batch.items() if k != 'dense'}, False)


def _x0(p, batch):
  """Reference ``X0``: field embeddings then the dense embeddings (tanh MLP, linear output)."""
  emb = np_embed(p['embedding'], MIXED, batch)
  dense = np_mlp(p['dense_mlp'], batch['dense'], act=np.tanh).reshape(8, 2, D)
  return np.concatenate([emb, dense], 1)


def _top(p, stats, x):
  return np_mlp(p['top_mlp'], x.reshape(8, -1), stats['top_mlp'], act=np.tanh)[:, 0]


@pytest.mark.parametrize('projection', ['learned', 'projected'])
def test_wukong_matches_numpy(projection):
  model = _model('wukong', batch_norm=True, fm_projection=projection)
  batch = make_batch(MIXED, seed=3)
  variables = random_variables(model, batch)
  out, _ = _apply(model, variables, batch, False)
  p, stats = variables['params'], variables['batch_stats']
  x = _x0(p, batch)  # [8, 6, D]: 4 fields + 2 dense embeddings
  for i in range(2):
    q = p[f'layer_{i}']
    y = q['fmb']['fm_projection'] if projection == 'learned' else x @ q['fmb']['fm_projection']
    fm = (np.einsum('bnd,bmd->bnm', x, x) @ y).reshape(8, -1)
    fmb = np_mlp(q['fmb']['mlp'], _ln(fm, q['fmb']['norm']), act=np.tanh).reshape(8, 2, D)
    lcb = np.einsum('bnd,nm->bmd', x, q['lcb']['kernel'])
    # Layer 0 maps 6 -> 5 embeddings (projection residual); layer 1 keeps 5 (identity).
    res = np.einsum('bnd,nm->bmd', x, q['residual']['kernel']) if i == 0 else x
    assert ('residual' in q) == (i == 0)
    x = _ln(np.concatenate([fmb, lcb], 1) + res, q['norm'])
  np.testing.assert_allclose(out, _top(p, stats, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('ensemble', ['concat', 'sum', 'weighted_sum'])
def test_dhen_matches_numpy(ensemble):
  layers = (('dot', 'attention', 'cross', 'linear', 'conv'), ('dot', 'linear'))
  model = _model('dhen', batch_norm=True, ensemble=ensemble, layers=layers)
  batch = make_batch(MIXED, seed=3)
  variables = random_variables(model, batch)
  out, _ = _apply(model, variables, batch, False)
  p, stats = variables['params'], variables['batch_stats']
  x = _x0(p, batch)
  for i, kinds in enumerate(layers):
    q = p[f'layer_{i}']
    outs = [_np_module(k, q[f'{k}_{j}'], x, 3, act=np.tanh) for j, k in enumerate(kinds)]
    if ensemble == 'concat':
      y = np.concatenate(outs, 1)
    elif ensemble == 'sum':
      y = sum(outs)
    else:
      y = sum(w * o for w, o in zip(q['ensemble_weights'], outs))
    x = _ln(y + np.einsum('bnd,nm->bmd', x, q['shortcut']['kernel']), q['norm'])
  np.testing.assert_allclose(out, _top(p, stats, x), rtol=RTOL, atol=ATOL)


def test_build_from_a_json_config_and_bad_hyperparameters():
  kwargs = json.loads(json.dumps(SMALL['dhen']))  # nested lists, as config.json holds them
  model = build_model('dhen', SPARSE, embedding_dim=D, **kwargs)
  hash(model)
  assert model.layers == SMALL['dhen']['layers'] and model.conv_kernel == (3, 3)
  with pytest.raises(ValueError, match=r"layers\[1\]: unknown module\(s\) \['mlp'\]"):
    build_model('dhen', SPARSE, embedding_dim=D, layers=[['dot'], ['mlp']])
  with pytest.raises(ValueError, match='num_heads=3 must divide embedding_dim=4'):
    build_model('dhen', SPARSE, embedding_dim=D, num_heads=3)
  with pytest.raises(ValueError, match='ensemble'):
    build_model('dhen', SPARSE, ensemble='mean')
  with pytest.raises(ValueError, match='fm_projection'):
    build_model('wukong', SPARSE, fm_projection='attention')
  with pytest.raises(ValueError, match='fm_rank'):
    build_model('wukong', SPARSE, fm_rank=0)
  with pytest.raises(ValueError, match=r'unknown hyperparameter\(s\) \[.rank.\]'):
    build_model('wukong', SPARSE, rank=4)


def test_upscale_grows_widths_and_depth_together():
  base = dict(num_layers=2, num_fm_embeddings=4, num_lcb_embeddings=3, fm_rank=2,
              fmb_mlp_units=(8, 6), top_mlp_units=(10,), dropout_rate=0.1)
  up = upscale(base, 2.0, depth_factor=1.5)
  assert up == dict(num_layers=3, num_fm_embeddings=8, num_lcb_embeddings=6, fm_rank=4,
                    fmb_mlp_units=(16, 12), top_mlp_units=(20,), dropout_rate=0.1)
  model = upscale(build_model('wukong', SPARSE, embedding_dim=D, **base), 0.5)
  assert (model.num_fm_embeddings, model.fm_rank, model.fmb_mlp_units, model.num_layers) == (
      2, 1, (4, 3), 2)
  config = ml_collections.ConfigDict(dict(model='wukong', model_kwargs=base))
  grown = upscale(config, 3.0)
  assert grown.model_kwargs.num_fm_embeddings == 12 and config.model_kwargs.num_fm_embeddings == 4
  assert upscale({}, 2.0)['fm_rank'] == 2 * Wukong.fm_rank  # defaults fill missing fields
  with pytest.raises(ValueError, match="not 'wukong'"):
    upscale(ml_collections.ConfigDict(dict(model='dlrm', model_kwargs={})), 2.0)
  with pytest.raises(ValueError, match='factor'):
    upscale(base, 0.0)
