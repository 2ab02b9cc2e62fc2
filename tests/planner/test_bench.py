"""The planner benchmark, reduced: two tiny tasks, every method, every plan measured; summaries."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec import planner
from jaxrec.planner import bench, step
from jaxrec.planner import cost_model as cm
from jaxrec.planner.tasks import Task
from tests.conftest import REPO_ROOT
from tests.planner.common import tables, tiny_cost_model

B = 64


def _tasks():
  out = []
  for i, fill in enumerate((0.5, 0.7)):  # the second cap is tight: TorchRec's estimate fails
    ts = tuple(tables(5, seed=20 + i, dims=(8,)))
    cap = int(sum(t.num_bytes for t in ts) / 2 / fill)
    out.append(Task(i, ts, 2, cap, B, tuple(range(5))))
  return out


SETTINGS = {'tasks': 2, 'devices': 2}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('bench')
  # One width, one buffer, a coarse grid: few programs to compile.
  results = bench.run_benchmark(_tasks(), planner.METHODS, tiny_cost_model(B), root, SETTINGS,
                                warmup=0, runs=1,
                                buckets=step.Buckets(1, 1, 1, 2 ** 16, min_ids=1024))
  return root, results


def test_every_method_is_planned_and_measured(run):
  root, results = run
  assert [(r.task, r.method) for r in results] == [(t, m) for t in (0, 1)
                                                   for m in planner.METHODS]
  fit = [r for r in results if r.fits]
  assert all(len(r.compute_ms) == 2 and r.max_cost_ms == pytest.approx(
      max(np.add(r.compute_ms, r.comm_ms))) and r.max_cost_ms > 0 for r in fit)
  failed = [r for r in results if not r.fits]
  assert [(r.task, r.method) for r in failed] == [(1, 'torchrec')]
  assert failed[0].max_cost_ms is None and 'torchrec planner' in failed[0].error
  assert sorted(os.listdir(root / 'tasks')) == ['task_0000.json', 'task_0001.json']


def test_outputs(run, tmp_path):
  _, results = run
  summary = bench.summarize(results, planner.METHODS)
  bench.write_csv(results, tmp_path / 'planner.csv')
  bench.plot(results, summary, planner.METHODS, tmp_path / 'planner.png')
  md = bench.markdown(summary, SETTINGS, 'python scripts/bench_planner.py --tasks 2')
  with open(tmp_path / 'planner.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(bench.CSV_FIELDS) and len(rows) == 16
  tr = [r for r in rows if r['method'] == 'torchrec' and r['task'] == '1'][0]
  assert (tr['fits'], tr['max_cost_ms']) == ('0', '')
  assert (tmp_path / 'planner.png').stat().st_size > 0
  # The failure: torchrec fits 1 of 2; the mean is over the one task every method fits.
  assert summary.common_tasks == (0,)
  assert '| torchrec | 1/2 |' in md and '| neuroshard vs torchrec | 2 | 1 | ' in md
  c = [c for c in summary.comparisons if (c.a, c.b) == ('neuroshard', 'torchrec')][0]
  assert c.wins >= 1 and c.wins + c.losses + c.ties == 2  # task 1: neuroshard fits, torchrec not


def test_a_rerun_reads_the_tasks_back(run):
  root, results = run
  cache = step.StepCache()
  again = bench.run_benchmark(_tasks(), planner.METHODS, tiny_cost_model(B), root, SETTINGS,
                              cache=cache)
  assert again == results and cache.compiles == 0
  with pytest.raises(bench.BenchSettingsError, match=r"devices: 2 there, 4 now"):
    bench.run_benchmark(_tasks(), planner.METHODS, None, root, dict(SETTINGS, devices=4))


def _r(method, task, cost):
  return bench.Result(method, task, cost is not None, 0.1, cost)


def test_failures_count_in_every_summary():
  costs = {'a': [10.0, None, 8.0, None], 'b': [12.0, 5.0, None, None]}
  results = [_r(m, t, c) for m, cs in costs.items() for t, c in enumerate(cs)]
  s = bench.summarize(results, ['a', 'b'], comparisons=(('a', 'b'),))
  assert s.common_tasks == (0,) and [m.fits for m in s.methods] == [2, 2]
  assert [m.common_mean_ms for m in s.methods] == [10.0, 12.0]
  c = s.comparisons[0]
  # Task 0: a cheaper; 1: only b fits (loss); 2: only a fits (win); 3: neither (tie).
  assert (c.tasks, c.both_fit, c.wins, c.losses, c.ties) == (4, 1, 2, 1, 1)
  assert c.mean_gain == pytest.approx(1 - 10 / 12) == c.gain_of_means


def test_best_greedy_is_the_cheapest_greedy_that_fits():
  results = [_r('neuroshard', 0, 9.0), _r('neuroshard', 1, 9.0)]
  for g, cs in zip(bench.GREEDY, ([10.0, None], [12.0, None], [11.0, None], [None, None])):
    results += [_r(g, t, c) for t, c in enumerate(cs)]
  s = bench.summarize(results, ['neuroshard'] + list(bench.GREEDY))
  c = [c for c in s.comparisons if c.b == bench.BEST_GREEDY][0]
  assert (c.wins, c.losses, c.both_fit) == (2, 0, 1)
  assert c.mean_gain == pytest.approx(1 - 9 / 10)


def test_a_missing_cost_model_is_an_error_not_a_failure(monkeypatch, tmp_path):
  monkeypatch.setattr(cm, 'default_file', lambda: tmp_path / 'none.npz')
  with pytest.raises(planner.PlannerError, match='no pre-trained cost model'):
    bench.run_task(_tasks()[0], ['size_greedy', 'neuroshard'], None)


def test_the_script_needs_a_cost_model(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, 'scripts/bench_planner.py', '--tasks', '1', '--out',
                        str(tmp_path), '--cost_model', str(tmp_path / 'none.npz')],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert f'error: no pre-trained cost model at {tmp_path / "none.npz"}' in run.stderr
  assert 'scripts/pretrain_cost_model.py' in run.stderr
