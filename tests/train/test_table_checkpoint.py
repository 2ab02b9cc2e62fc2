"""Checkpoints of sharded tables: orbax saves the buffers and their optimizer state, and a run
restored on another plan (another layout of the same 8 devices here; other device counts in
tests/train/test_table_resume.py) continues the trajectory of the run that saved them."""

import jax
import numpy as np
import pytest

from jaxrec.errors import RunDirError
from jaxrec.models import build_model
from jaxrec.train import reshard
from jaxrec.train import state as state_lib
from jaxrec.train.checkpoint import RunCheckpoints
from jaxrec.train.table_trainer import TableShardedTrainer
from tests.train.test_table_trainer import SCHEMA, SMALL, D, _batches, _losses

STEPS = 3
OPTIM = state_lib.OptimConfig(learning_rate=0.05, max_grad_norm=1.0)


def _model():
  return build_model('dlrm', SCHEMA, embedding_dim=D, **SMALL['dlrm'])


def _trainer(plan, optimizer):
  tx = state_lib.make_optimizer(OPTIM)
  return TableShardedTrainer(_model(), SCHEMA, tx, OPTIM, _batches(1)[0], plan,
                             optimizer=optimizer, hosts=2, seed=3)


def _run_model():
  return reshard.RunModel(_model(), SCHEMA, state_lib.make_optimizer(OPTIM), _batches(1)[0], 3)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.mark.parametrize('optimizer,kind', [('dense', 'data_parallel'),
                                            ('rowwise_adagrad', 'column_wise'),
                                            ('adam', 'grid')])
def test_layout_round_trip_through_the_unsharded_form(optimizer, kind):
  trainer = _trainer(kind, optimizer)
  _, state = _losses(trainer, _batches(2))
  host = _host(state)
  layout = reshard.TableLayout.of(trainer)
  assert sorted(layout.groups) == sorted(trainer.ebc.groups if trainer.ebc else {})
  unsharded = layout.to_unsharded(host)
  jax.tree.map(np.testing.assert_array_equal, unsharded.params,
               _host(trainer.merge_params(state.params)))
  if optimizer != 'dense':  # per table, as the collection's own unshard_states
    want = _host(trainer.ebc.unshard_states(state.table_opt_state['tables']))
    for table, st in want.items():
      for name, v in st.items():
        got = unsharded.table_opt_state['tables'][table][name]
        np.testing.assert_array_equal(got if v.ndim != 1 else got[:, -1], v, err_msg=table)
  back = layout.from_unsharded(unsharded)
  # Every real row comes back (padding rows of the buffers are zero).
  jax.tree.map(np.testing.assert_array_equal, layout.to_unsharded(back).params, unsharded.params)
  jax.tree.map(np.testing.assert_array_equal, back.opt_state, host.opt_state)


# Row-wise Adagrad keeps one accumulator per column shard: exact between plans that split the
# columns alike (and when shards merge); Adam's slots are per element, exact between any plans.
@pytest.mark.parametrize('optimizer,saved,restored', [
    ('dense', 'row_wise', 'data_parallel'),
    ('rowwise_adagrad', 'table_row_wise', 'table_wise'),
    ('adam', 'column_wise', 'row_wise'),
])
def test_restore_into_another_plan_continues_the_trajectory(tmp_path, optimizer, saved, restored):
  batches = _batches(2 * STEPS)
  a = _trainer(saved, optimizer)
  _, state = _losses(a, batches[:STEPS])
  ckpts = RunCheckpoints(str(tmp_path), layout=reshard.layout_record(a))
  ckpts.save('latest', STEPS, state, {'epoch': 0})
  ckpts.close()
  want, _ = _losses(a, batches[STEPS:], state)

  b = _trainer(restored, optimizer)
  assert b.plan != a.plan
  init, _ = b.init_state()
  ckpts = RunCheckpoints(str(tmp_path), read_only=True)
  got_state, meta = reshard.restore_state(ckpts, 'latest', b, init, _run_model(), str(tmp_path))
  ckpts.close()
  assert meta == {'epoch': 0} and int(got_state.step) == STEPS
  got, _ = _losses(b, batches[STEPS:], got_state)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_the_same_plan_restores_directly_and_exactly(tmp_path):
  a = _trainer('table_row_wise', 'rowwise_adagrad')
  _, state = _losses(a, _batches(2))
  ckpts = RunCheckpoints(str(tmp_path), layout=reshard.layout_record(a))
  ckpts.save('latest', 2, state, {})
  ckpts.close()
  ckpts = RunCheckpoints(str(tmp_path), read_only=True)
  assert ckpts.saved_layout('latest') == {'embedding_plan': a.plan.to_dict(),
                                          'embedding_optimizer': 'rowwise_adagrad'}
  got, _ = reshard.restore_state(ckpts, 'latest', a, a.init_state()[0], _run_model())
  ckpts.close()
  jax.tree.map(np.testing.assert_array_equal, _host(got), _host(state))
  assert got.params['tables'][next(iter(a.ebc.groups))].sharding == next(
      iter(a.ebc.shardings().values()))


def test_another_table_optimizer_is_refused(tmp_path):
  a = _trainer('row_wise', 'adam')
  ckpts = RunCheckpoints(str(tmp_path), layout=reshard.layout_record(a))
  ckpts.save('latest', 0, a.init_state()[0], {})
  ckpts.close()
  b = _trainer('row_wise', 'sgd')
  ckpts = RunCheckpoints(str(tmp_path), read_only=True)
  with pytest.raises(RunDirError, match="optimizer 'adam', this run uses 'sgd'"):
    reshard.restore_state(ckpts, 'latest', b, b.init_state()[0], _run_model(), str(tmp_path))
  ckpts.close()


@pytest.mark.slow
def test_loop_moves_a_run_between_unsharded_and_sharded_tables(tmp_path):
  # plan none for 5 steps, row_wise tables (2 x 4) to step 11, none again to the end: the straight
  # unsharded run's results (each change of plan is a config change: override_config_check).
  from jaxrec.train import loop  # pylint: disable=g-import-not-at-top
  from tests.train.test_loop import tiny_config  # pylint: disable=g-import-not-at-top
  want = loop.train_and_evaluate(tiny_config(num_epochs=2), str(tmp_path / 'straight'))
  run = str(tmp_path / 'run')
  assert loop.train_and_evaluate(tiny_config(num_epochs=2, max_steps=5), run) == {
      'stopped_at_step': 5}
  sharded = tiny_config(num_epochs=2, max_steps=11)
  sharded.embedding.plan, sharded.embedding.hosts = 'row_wise', 2
  assert loop.train_and_evaluate(sharded, run, override_config_check=True) == {
      'stopped_at_step': 11}
  got = loop.train_and_evaluate(tiny_config(num_epochs=2), run, override_config_check=True)
  assert got['steps'] == want['steps']
  for split in ('valid', 'test'):
    np.testing.assert_allclose([got[split]['auc'], got[split]['logloss']],
                               [want[split]['auc'], want[split]['logloss']], rtol=1e-5,
                               err_msg=split)
