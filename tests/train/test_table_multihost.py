"""scripts/train.py with a table_row_wise plan on 2 processes x 4 CPU devices (gloo on 127.0.0.1)
gives the losses and results of 1 process x 8 devices.

Both runs shard DLRM's tables row-wise inside each of 2 hosts (``config.embedding.hosts=2``: one
host per process in the first run, two virtual hosts in the second) and train them with the
fused row-wise Adagrad; each process reads only its half of every batch.
"""

import json

import pytest

from tests.sharding.test_multihost import assert_same_run, run_two_and_one

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
  single, multi = run_two_and_one(tmp_path, CONFIG)
  assert_same_run(single, multi)
  plan = json.loads((multi / 'embedding_plan.json').read_text())
  assert plan['num_hosts'] == 2 and plan['devices_per_host'] == 4
  assert {t['type'] for t in plan['tables'].values()} == {'table_row_wise'}
