"""scripts/train.py on 2 processes x 4 CPU devices (gloo on 127.0.0.1) matches 1 process x 8.

Both runs train FULL_SHARD DCNv2 for one epoch on synthetic data (every vocabulary 64, so every
dimension divides 8), validate, checkpoint and test the best checkpoint. Each of the two processes
reads only its half of every batch; only process 0 writes the run's logs.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from jaxrec.train.writers import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = '''
import ml_collections
from jaxrec.train.config import base_config


def get_config():
  c = base_config()
  c.dataset_options = ml_collections.ConfigDict(dict(
      num_train=512, num_valid=256, num_test=256, seed=1, num_sparse=4, num_dense=0,
      max_vocab=64, min_vocab=64, vocab_exponent=0.0))
  c.model = 'dcnv2'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(num_cross_layers=1,
                                                  parallel_dnn_hidden_units=(16,)))
  c.batch_size = 128
  c.eval_batch_size = 96
  c.num_epochs = 1
  c.log_every_steps = 1
  c.progress = False
  c.tensorboard = False
  c.sharding.strategy = 'FULL_SHARD'
  c.sharding.mesh = ml_collections.ConfigDict({'data': 1, 'fsdp': -1, 'tensor': 1})
  return c
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(config, workdir, *flags):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)  # devices come from --cpu_devices
  cmd = [sys.executable, str(REPO / 'scripts' / 'train.py'), f'--config={config}',
         f'--workdir={workdir}', *flags]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(proc, what):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, f'{what} failed:\n{out[-4000:]}'


def run_two_and_one(tmp_path, config_text: str):
  """Trains ``config_text`` on 2 processes x 4 devices and on 1 process x 8; their workdirs."""
  config = tmp_path / 'config.py'
  config.write_text(config_text)
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  address = f'127.0.0.1:{_free_port()}'
  procs = [_start(config, multi, f'--coordinator_address={address}', '--num_processes=2',
                  f'--process_id={i}', '--cpu_devices=4') for i in range(2)]
  procs.append(_start(config, single, '--cpu_devices=8'))
  for i, p in enumerate(procs):
    _finish(p, ['process 0', 'process 1', 'single process'][i])
  return single, multi


def assert_same_run(single, multi):
  """The multi-process run logged once, with the single process's losses and results (1e-5)."""
  want, got = (read_metrics(str(d / 'metrics.jsonl')) for d in (single, multi))
  train = lambda recs: [r for r in recs if r['split'] == 'train']
  assert [r['step'] for r in train(got)] == [1, 2, 3, 4]  # written once: only by process 0
  np.testing.assert_allclose([r['loss'] for r in train(got)], [r['loss'] for r in train(want)],
                             rtol=1e-5)
  a, b = (json.loads((d / 'results.json').read_text()) for d in (single, multi))
  for split in ('valid', 'test'):
    assert b[split]['rows'] == a[split]['rows'] == 256
    np.testing.assert_allclose([b[split]['auc'], b[split]['logloss']],
                               [a[split]['auc'], a[split]['logloss']], rtol=1e-5)


def test_two_processes_match_one(tmp_path):
  assert_same_run(*run_two_and_one(tmp_path, CONFIG))
