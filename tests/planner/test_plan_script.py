"""scripts/plan.py and the library behind it (jaxrec.train.planning)."""

import json
import os
import subprocess
import sys

from jaxrec.planner import cost_model as cm
from jaxrec.planner import report
from jaxrec.sharding.embedding_plan import EmbeddingPlan
from jaxrec.train import planning
from tests.conftest import REPO_ROOT
from tests.train.test_loop import tiny_config


def test_plan_for_config_measures_the_first_batch():
  config = tiny_config()
  config.embedding.planner = 'size_lookup_greedy'
  config.embedding.hosts = 2
  result = planning.plan_for_config(config, num_devices=4)
  assert (result.plan.num_hosts, result.plan.devices_per_host) == (2, 2)
  names = {f.name for f in result.features}
  assert set(result.plan.tables) == names and result.batch_size == 256
  assert all(f.pooling == 1.0 for f in result.features)  # one-hot fields
  result.plan.validate([f.config() for f in result.features])
  model, note = planning.predictor('', result.batch_size)
  if note:
    assert isinstance(model, cm.AnalyticCostModel) and 'analytic' in note
  text = report.describe(result.plan, result.features, model, result.batch_size, result.method)
  assert text.startswith('embedding plan (size_lookup_greedy): 8 tables on 2 host(s) x 2')


def test_the_script_writes_and_prints_the_plan(tmp_path):
  out = tmp_path / 'plan.json'
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  args = [sys.executable, 'scripts/plan.py', '--config', 'configs/default.py', '--out', str(out),
          '--devices', '4', '--config.embedding.planner=torchrec',
          '--config.dataset_options.synthetic.num_train=3000',
          '--config.dataset_options.synthetic.num_valid=100',
          '--config.dataset_options.synthetic.num_test=100', '--config.batch_size=512']
  run = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  plan = EmbeddingPlan.from_dict(json.loads(out.read_text()))
  assert plan.num_devices == 4 and len(plan.tables) == 8
  lines = run.stdout.splitlines()
  assert lines[0].startswith('embedding plan (torchrec): 8 tables on 1 host(s) x 4 devices')
  assert 'imbalance' in lines[0] and 'predicted cost' in lines[0]
  assert sum(line.startswith('  device ') for line in lines) == 4
  assert all('bytes, predicted' in line for line in lines if line.startswith('  device '))
  bad = subprocess.run(args[:-1] + ['--config.embedding.planner=best'], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1
  assert "unknown planner method 'best'" in bad.stderr
