"""Sharded embedding tables in the one trainer: the unsharded trajectory on 8 emulated devices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.models import build_model
from jaxrec.sharding.embedding_plan import SHARDING_TYPES
from jaxrec.train import state as state_lib
from jaxrec.train.table_trainer import EmbeddingConfigError, TableShardedTrainer, resolve_plan
from tests.embeddings.common import assert_close_rel
from tests.models.tiny import make_batch

# Vocabularies larger and smaller than the 8 devices; one-hot and multi-hot (mean and sum).
SCHEMA = FeatureSchema(
    (SparseField('user', 23), SparseField('tags', 17, max_length=3, pooling='mean'),
     SparseField('item', 31), SparseField('ctx', 5, max_length=2, pooling='sum')),
    dense=('age', 'price'))
D = 4
B = 32  # 4 rows per device
STEPS = 20
RTOL = 1e-5
SMALL = {
    'lr': {},
    'fm': {},
    'deepfm': dict(hidden_units=(8, 8)),
    'dlrm': dict(top_mlp_units=(8, 8), bottom_mlp_units=(8,), activation='tanh'),
    'dcnv2': dict(num_cross_layers=2, parallel_dnn_hidden_units=(8, 8)),
    'wukong': dict(num_layers=2, num_fm_embeddings=2, num_lcb_embeddings=3, fm_rank=2,
                   fmb_mlp_units=(6,), top_mlp_units=(8, 8), num_dense_embeddings=2,
                   dense_mlp_units=(5,), activation='tanh'),
    'dhen': dict(layers=(('dot', 'cross', 'linear'), ('dot', 'linear')), num_embeddings=3,
                 num_heads=2, ffn_units=6, conv_channels=2, top_mlp_units=(8, 8),
                 num_dense_embeddings=2, dense_mlp_units=(5,), activation='tanh'),
}
# Every model and every sharding type at least once (7 x 7 paired by rotation).
PAIRS = list(zip(sorted(SMALL), SHARDING_TYPES))
OPTIM = state_lib.OptimConfig(learning_rate=0.05, max_grad_norm=1.0, embedding_regularizer=1e-3,
                              net_regularizer=1e-4)


def _batches(n=STEPS, seed=0):
  out = []
  for i in range(n):
    b = make_batch(SCHEMA, rows=B, seed=seed + i)
    b['weight'][::7] = 0.0  # padding rows
    out.append(b)
  return out


def _unsharded_losses(model, batches, optim=OPTIM, tx=None):
  tx = tx or state_lib.make_optimizer(optim)
  state, mask = state_lib.create_train_state(model, batches[0], tx, seed=3)
  step = jax.jit(state_lib.make_train_step(model, tx, mask, optim))
  losses = []
  for b in batches:
    state, m = step(state, b)
    losses.append(float(m['loss']))
  return np.array(losses), state


def _sharded(model, plan, optimizer='dense', optim=OPTIM, **kw):
  tx = state_lib.make_optimizer(optim)
  return TableShardedTrainer(model, SCHEMA, tx, optim, _batches(1)[0], plan, optimizer=optimizer,
                             hosts=2, seed=3, **kw)


def _losses(trainer, batches, state=None):
  if state is None:
    state, _ = trainer.init_state()
  losses = []
  for b in batches:
    state, m = trainer.train_step(state, b)
    losses.append(float(m['loss']))
  return np.array(losses), state


@pytest.mark.parametrize('name,kind', PAIRS)
def test_sharded_tables_give_the_unsharded_trajectory(name, kind):
  model = build_model(name, SCHEMA, embedding_dim=D, **SMALL[name])
  batches = _batches()
  ref, ref_state = _unsharded_losses(model, batches)
  trainer = _sharded(model, kind)
  got, state = _losses(trainer, batches)
  np.testing.assert_allclose(got, ref, rtol=RTOL)
  merged = trainer.merge_params(jax.device_get(state.params))
  # Parameters after 20 Adam steps: Adam divides by sqrt(nu), so float32 reduction-order noise in
  # a near-zero gradient moves a weight by up to ~lr * 1e-4; compared relative to each array's
  # scale (max |w|, at least 1).
  jax.tree.map(lambda a, b: assert_close_rel(a, b, 1e-4), merged, jax.device_get(ref_state.params))
  # Evaluation of the trained state equals the unsharded model's logits.
  logits = trainer.eval_step(state, batches[0])
  ref_logits = model.apply({'params': ref_state.params}, state_lib.features(batches[0]),
                           train=False)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-6)


def test_fm_first_order_weights_are_their_own_tables():
  model = build_model('fm', SCHEMA, embedding_dim=D)
  trainer = _sharded(model, 'row_wise')
  names = sorted(t.config.name for t in trainer.tables)
  assert names == sorted([f'embedding/{f}' for f in ('user', 'tags', 'item', 'ctx')]
                         + [f'linear/embedding/{f}' for f in ('user', 'tags', 'item', 'ctx')])
  dims = {t.config.name: t.config.embedding_dim for t in trainer.tables}
  assert dims['linear/embedding/user'] == 1 and dims['embedding/user'] == D


# Row-wise Adagrad keeps one accumulator per row of each column shard (as fbgemm), so its
# reference equals the unsharded optimizer only on plans that do not split columns.
@pytest.mark.parametrize('kind,plan', [('rowwise_adagrad', 'table_row_wise'), ('adam', 'grid')])
def test_sparse_optimizer_in_the_train_step_matches_reference(kind, plan):
  # Dense part: optax Adam without clipping; tables: the sparse optimizer on the touched rows
  # (reference: the unsharded model with optax applied to the dense params and the sparse
  # optimizer to the full tables' rows via jaxrec.embeddings.sparse_optim).
  optim = state_lib.OptimConfig(learning_rate=0.05, max_grad_norm=0.0)
  model = build_model('dlrm', SCHEMA, embedding_dim=D, **SMALL['dlrm'])
  batches = _batches(5)
  trainer = _sharded(model, plan, optimizer=kind, optim=optim, table_learning_rate=0.1)
  got, state = _losses(trainer, batches)

  from jaxrec.embeddings.collection import gather_feature_rows, pool_feature_rows
  from jaxrec.embeddings.sparse_optim import apply_row_grads, init_states
  tables = [t.config for t in trainer.tables]
  opt = SparseOptimizer(kind, 0.1)
  tx = state_lib.make_optimizer(optim)
  state0, _ = state_lib.create_train_state(model, batches[0], tx, seed=3)
  split = trainer._split(state0.params)  # pylint: disable=protected-access
  params = split['model']
  tparams = trainer.ebc.unshard(split['tables'])
  tstates = init_states(opt, tparams, tables)
  opt_state = tx.init(params)
  ref = []
  for b in batches:
    feats = state_lib.features(b)
    kjt = trainer._kjt(feats)  # pylint: disable=protected-access

    def loss_fn(p, rows, feats=feats, kjt=kjt, b=b):
      pooled = pool_feature_rows(rows, kjt, tables)
      logits = trainer._apply({'model': p}, {}, feats, pooled, False)  # pylint: disable=protected-access
      return state_lib.weighted_bce(logits, b['label'], b['weight'])

    rows = gather_feature_rows(tparams, kjt, tables)
    loss, (gp, gr) = jax.value_and_grad(loss_fn, (0, 1))(params, rows)
    upd, opt_state = tx.update(gp, opt_state, params)
    params = optax.apply_updates(params, upd)
    tparams, tstates = apply_row_grads(opt, tparams, tstates, kjt, tables, gr)
    ref.append(float(loss))
  np.testing.assert_allclose(got, ref, rtol=RTOL)
  got_tables = trainer.ebc.unshard(state.params['tables'])
  for name, v in tparams.items():
    np.testing.assert_allclose(got_tables[name], v, rtol=1e-4, atol=1e-6, err_msg=name)


def test_resolve_plan_falls_back_and_balances():
  model = build_model('fm', SCHEMA, embedding_dim=D)
  trainer = _sharded(model, 'column_wise')
  plan = trainer.plan
  for t in trainer.tables:  # the 1-wide first-order tables cannot split their columns
    kind = plan.tables[t.config.name].sharding_type
    assert kind == ('table_wise' if t.config.embedding_dim == 1 else 'column_wise'), t
  assert 'device 0' in trainer.describe(B)
  # Whole tables go to the least loaded device: DLRM's 4 tables on 4 different devices, and a
  # 9th..12th table would fill the emptiest devices first.
  dlrm = _sharded(build_model('dlrm', SCHEMA, embedding_dim=D, **SMALL['dlrm']), 'table_wise')
  devices = [dlrm.plan.tables[t.config.name].devices[0] for t in dlrm.tables]
  assert len(set(devices)) == 4


def test_plan_file_and_bad_input(tmp_path):
  model = build_model('dlrm', SCHEMA, embedding_dim=D, **SMALL['dlrm'])
  tables = [t.config for t in _sharded(model, 'table_wise').tables]
  plan = resolve_plan('row_wise', tables, 2, 4)
  path = tmp_path / 'plan.json'
  path.write_text(plan.to_json())
  assert _sharded(model, str(path)).plan == plan
  bad = plan.to_dict()
  bad['tables']['nope'] = {'type': 'row_wise'}
  path.write_text(json.dumps(bad))
  with pytest.raises(EmbeddingConfigError, match="tables that do not exist: \\['nope'\\]"):
    _sharded(model, str(path))
  with pytest.raises(EmbeddingConfigError, match="unknown value 'diagonal'"):
    _sharded(model, 'diagonal')
  with pytest.raises(EmbeddingConfigError, match='device .* over its memory cap'):
    _sharded(model, 'data_parallel', memory_cap_bytes=1000)
  with pytest.raises(EmbeddingConfigError, match='config.embedding.optimizer'):
    _sharded(model, 'row_wise', optimizer='lamb')
  with pytest.raises(EmbeddingConfigError, match='embedding_regularizer'):
    _sharded(model, 'row_wise', optimizer='adam')  # OPTIM has an embedding regularizer
  trainer = _sharded(model, 'row_wise', id_check='error')
  state, _ = trainer.init_state()
  batch = _batches(1)[0]
  batch['sparse'][3, 0] = 23  # user has 23 rows
  with pytest.raises(ValueError, match="table 'embedding/user'.*sample 3 has id 23"):
    trainer.train_step(state, batch)
  with pytest.raises(EmbeddingConfigError, match='batch_size=12 does not split over the 8'):
    trainer.check_batch_size(12)


def test_loop_with_sharded_tables_equals_unsharded_and_resumes(tmp_path):
  # The one loop (BARS protocol, checkpoints, results) with DeepFM's tables row-wise on 8
  # devices: the unsharded run's validation metrics; a run stopped by max_steps and resumed ends
  # on the same results; evaluation restores the sharded checkpoint.
  from jaxrec.train import loop  # pylint: disable=g-import-not-at-top
  from jaxrec.train.evaluation import restore_for_inference  # pylint: disable=g-import-not-at-top
  from tests.train.test_loop import tiny_config  # pylint: disable=g-import-not-at-top
  ref = loop.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path / 'ref'))
  config = tiny_config(num_epochs=2)
  config.embedding.plan = 'row_wise'
  config.embedding.hosts = 2
  stopped = loop.train_and_evaluate(dict_copy(config, max_steps=10), str(tmp_path / 'rw'))
  assert stopped == {'stopped_at_step': 10}
  got = loop.train_and_evaluate(config, str(tmp_path / 'rw'))
  for split in ('valid', 'test'):
    for k in ('auc', 'logloss'):
      np.testing.assert_allclose(got[split][k], ref[split][k], rtol=1e-5, err_msg=(split, k))
  plan = json.loads((tmp_path / 'rw' / 'embedding_plan.json').read_text())
  assert {v['type'] for v in plan['tables'].values()} == {'row_wise'}
  _, _, state, _ = restore_for_inference(str(tmp_path / 'rw'))
  assert 'embedding' in state.params and 'linear' in state.params  # the model's own tree


def dict_copy(config, **overrides):
  c = config.copy_and_resolve_references()
  for k, v in overrides.items():
    c[k] = v
  return c


def test_small_tables_stay_whole_in_a_mixed_plan():
  model = build_model('dlrm', SCHEMA, embedding_dim=D, **SMALL['dlrm'])
  tables = [t.config for t in _sharded(model, 'table_wise').tables]
  plan = resolve_plan('row_wise', tables, 2, 4, table_wise_below_bytes=23 * D * 4)
  kinds = {name: s.sharding_type for name, s in plan.tables.items()}
  # user (23 rows) and item (31) reach the threshold; tags (17) and ctx (5) stay whole.
  assert kinds == {'embedding/user': 'row_wise', 'embedding/item': 'row_wise',
                   'embedding/tags': 'table_wise', 'embedding/ctx': 'table_wise'}


@pytest.mark.parametrize('optimizer', ['dense', 'rowwise_adagrad'])
def test_full_shard_dense_parameters_beside_sharded_tables(optimizer):
  # FULL_SHARD: the dense parameters split over the 8 devices of the tables' mesh (GSPMD gathers
  # them, reduce-scatters their gradients); the unsharded trajectory at rtol 1e-5.
  model = build_model('dlrm', SCHEMA, embedding_dim=8, top_mlp_units=(32, 16),
                      bottom_mlp_units=(16,), activation='tanh')
  optim = OPTIM if optimizer == 'dense' else state_lib.OptimConfig(learning_rate=0.05,
                                                                   max_grad_norm=1.0)
  batches = _batches()
  tx = state_lib.make_optimizer(optim)
  trainer = TableShardedTrainer(model, SCHEMA, tx, optim, batches[0], 'table_row_wise',
                                optimizer=optimizer, table_learning_rate=0.05, hosts=2, seed=3,
                                dense_strategy='FULL_SHARD')
  got, state = _losses(trainer, batches)
  # Every dense array with a dimension divisible by 8 is split 8 ways, not replicated.
  leaves = jax.tree.leaves(state.params['model'])
  divisible = [x for x in leaves if any(n % 8 == 0 for n in x.shape)]
  assert len(divisible) >= 4
  for x in divisible:
    assert len({str(s.index) for s in x.addressable_shards}) == 8, (x.shape, x.sharding)
  if optimizer == 'dense':
    ref, _ = _unsharded_losses(model, batches, optim)
  else:
    ref, _ = _losses(TableShardedTrainer(model, SCHEMA, tx, optim, batches[0], 'table_row_wise',
                                         optimizer=optimizer, table_learning_rate=0.05, hosts=2,
                                         seed=3), batches)
  np.testing.assert_allclose(got, ref, rtol=RTOL)
