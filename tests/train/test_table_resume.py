"""scripts/train.py with sharded tables: a SIGKILL mid-epoch and a rerun end on the same
results.json; a run resumes on 4 and then 1 devices under other plans, and evaluates anywhere;
an FSDP run of zero-padded parameters resumes and evaluates on another device count."""

import json
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrec.train import loop
from jaxrec.train import state as state_lib
from jaxrec.train.evaluation import restore_for_inference

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = '''
import ml_collections
from jaxrec.train.config import base_config


def get_config():
  c = base_config()
  c.dataset_options = ml_collections.ConfigDict(dict(
      num_train=1024, num_valid=256, num_test=256, seed=3, num_sparse=4, num_dense=2,
      max_vocab=50, min_vocab=5))
  c.model = 'deepfm'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(hidden_units=(8,), dropout_rate=0.1))
  c.batch_size = 128
  c.eval_batch_size = 256
  c.learning_rate = 0.01
  c.num_epochs = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.progress = False
  c.tensorboard = False
  c.embedding.plan = 'table_row_wise'
  c.embedding.hosts = 2
  c.embedding.optimizer = 'adam'
  return c
'''
STEPS_PER_EPOCH = 8


def _config_file(tmp_path, text=CONFIG):
  path = tmp_path / 'config.py'
  path.write_text(text)
  return path


def _train_cmd(config, workdir, *flags):
  return [sys.executable, str(REPO / 'scripts' / 'train.py'), f'--config={config}',
          f'--workdir={workdir}', *flags]


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)  # devices come from --cpu_devices
  return env


def _train(config, workdir, *flags, ok=True):
  out = subprocess.run(_train_cmd(config, workdir, *flags), env=_env(), capture_output=True,
                       text=True, timeout=600)
  if ok:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def _results(workdir):
  return json.loads((workdir / 'results.json').read_text())


@pytest.mark.slow
def test_sigkilled_run_with_sharded_tables_resumes_to_the_same_results(tmp_path):
  config = _config_file(tmp_path)
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  _train(config, straight, '--cpu_devices=8')

  proc = subprocess.Popen(_train_cmd(config, killed, '--cpu_devices=8'), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  latest = killed / 'checkpoints' / 'latest'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p) for p in os.listdir(latest) if p.isdigit()] if latest.is_dir() else []
    if steps and max(steps) >= STEPS_PER_EPOCH + 2:  # into epoch 2
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'training finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'results.json').exists()
  out = _train(config, killed, '--cpu_devices=8')
  assert 'Resuming from' in out.stdout
  assert _results(killed) == _results(straight)


def _close(got, want, rtol=1e-5):
  for split in ('valid', 'test'):
    np.testing.assert_allclose([got[split]['auc'], got[split]['logloss']],
                               [want[split]['auc'], want[split]['logloss']], rtol=rtol,
                               err_msg=split)


@pytest.mark.slow
def test_resume_on_four_then_one_device_under_other_plans(tmp_path):
  # 8 devices (table_row_wise on 2 x 4) for 3 steps, 4 devices (column_wise) to step 10,
  # 1 device (row_wise) to the end: the results of the straight 8-device run. Adam's table
  # slots are per element, so the change of plan is exact up to float32 summation order.
  config = _config_file(tmp_path)
  want = loop.train_and_evaluate(runpy.run_path(str(config))['get_config'](),
                                 str(tmp_path / 'straight'))
  run = tmp_path / 'run'
  _train(config, run, '--cpu_devices=8', '--config.max_steps=3')
  refused = _train(config, run, '--cpu_devices=4', '--config.embedding.plan=column_wise',
                   '--config.embedding.hosts=0', ok=False)
  assert refused.returncode == 1 and 'embedding.plan' in refused.stderr
  _train(config, run, '--cpu_devices=4', '--config.embedding.plan=column_wise',
         '--config.embedding.hosts=0', '--config.max_steps=10', '--override_config_check')
  assert json.loads((run / 'embedding_plan.json').read_text())['devices_per_host'] == 4
  _train(config, run, '--cpu_devices=1', '--config.embedding.plan=row_wise',
         '--config.embedding.hosts=0', '--override_config_check')
  got = _results(run)
  assert got['steps'] == want['steps'] == 2 * STEPS_PER_EPOCH
  _close(got, want)
  # Evaluation reads the 1-device checkpoint here (8 devices) into the model's own tree.
  cfg, model, state, _ = restore_for_inference(str(run))
  assert 'tables' not in state.params and state.opt_state is None
  valid = loop.load_data(cfg).splits['valid']
  metrics = loop.evaluate(jax.jit(state_lib.make_eval_step(model)), state, valid, 256)
  np.testing.assert_allclose(metrics['auc'], got['valid']['auc'], rtol=1e-6)


FSDP_CONFIG = CONFIG.replace(
    "  c.embedding.plan = 'table_row_wise'\n  c.embedding.hosts = 2\n"
    "  c.embedding.optimizer = 'adam'\n",
    "  c.sharding.strategy = 'FULL_SHARD'\n  c.sharding.indivisible = 'pad'\n"
    "  c.sharding.mesh = ml_collections.ConfigDict({'data': 1, 'fsdp': -1, 'tensor': 1})\n"
    "  c.model_kwargs.dropout_rate = 0.0\n")


@pytest.mark.slow
def test_padded_fsdp_run_resumes_and_evaluates_on_another_device_count(tmp_path):
  # FULL_SHARD with indivisible='pad' stores zero-padded parameters (vocabularies of 5..50 over
  # 8 and 4 devices pad differently): stopped on 8 devices, resumed on 4 (another padding),
  # evaluated here with the model's own shapes.
  config = _config_file(tmp_path, FSDP_CONFIG)
  want = loop.train_and_evaluate(runpy.run_path(str(config))['get_config'](),
                                 str(tmp_path / 'straight'))
  run = tmp_path / 'run'
  _train(config, run, '--cpu_devices=8', '--config.max_steps=5')
  _train(config, run, '--cpu_devices=4')
  got = _results(run)
  _close(got, want)
  cfg, model, state, _ = restore_for_inference(str(run))
  valid = loop.load_data(cfg).splits['valid']
  metrics = loop.evaluate(jax.jit(state_lib.make_eval_step(model)), state, valid, 256)
  np.testing.assert_allclose(metrics['auc'], got['valid']['auc'], rtol=1e-6)
