"""scripts/train.py with a table_row_wise plan on 2 processes x 4 CPU devices (gloo on 127.0.0.1)
gives the losses and results of 1 process x 8 devices.

Both runs shard DLRM's tables row-wise inside each of 2 hosts (``config.embedding.hosts=2``: one
host per process in the first run, two virtual hosts in the second) and train them with the
fused row-wise Adagrad; each process reads only its half of every batch.
"""

import json

import numpy as np
import pytest

from jaxrec.train.writers import read_metrics
from tests.sharding.test_multihost import _finish, _free_port, _start

CONFIG = '''
import ml_collections
from jaxrec.train.config import base_config


def get_config():
  c = base_config()
  c.dataset_options = ml_collections.ConfigDict(dict(
      num_train=512, num_valid=256, num_test=256, seed=1, num_sparse=4, num_dense=2,
      max_vocab=40, min_vocab=5))
  c.model = 'dlrm'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(bottom_mlp_units=(8,), top_mlp_units=(8,)))
  c.batch_size = 128
  c.eval_batch_size = 96
  c.num_epochs = 1
  c.log_every_steps = 1
  c.progress = False
  c.tensorboard = False
  c.embedding.plan = 'table_row_wise'
  c.embedding.hosts = 2
  c.embedding.optimizer = 'rowwise_adagrad'
  c.embedding.learning_rate = 0.05
  return c
'''


@pytest.mark.slow
def test_two_processes_with_table_row_wise_match_one(tmp_path):
  config = tmp_path / 'config.py'
  config.write_text(CONFIG)
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  address = f'127.0.0.1:{_free_port()}'
  procs = [_start(config, multi, f'--coordinator_address={address}', '--num_processes=2',
                  f'--process_id={i}', '--cpu_devices=4') for i in range(2)]
  procs.append(_start(config, single, '--cpu_devices=8'))
  for i, p in enumerate(procs):
    _finish(p, ['process 0', 'process 1', 'single process'][i])

  want, got = (read_metrics(str(d / 'metrics.jsonl')) for d in (single, multi))
  train = lambda recs: [r for r in recs if r['split'] == 'train']
  assert [r['step'] for r in train(got)] == [1, 2, 3, 4]  # written once: only by process 0
  np.testing.assert_allclose([r['loss'] for r in train(got)], [r['loss'] for r in train(want)],
                             rtol=1e-5)
  plan = json.loads((multi / 'embedding_plan.json').read_text())
  assert plan['num_hosts'] == 2 and plan['devices_per_host'] == 4
  assert {t['type'] for t in plan['tables'].values()} == {'table_row_wise'}
  a, b = (json.loads((d / 'results.json').read_text()) for d in (single, multi))
  for split in ('valid', 'test'):
    assert b[split]['rows'] == a[split]['rows'] == 256
    np.testing.assert_allclose([b[split]['auc'], b[split]['logloss']],
                               [a[split]['auc'], a[split]['logloss']], rtol=1e-5)
