"""Command-line end to end: scripts/train.py and scripts/evaluate.py as a user runs them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT


def _frappe_subset(shared_data, tmp_path, rows=3000):
  """The first ``rows`` lines of the real Frappe train/validation files, in the libfm layout."""
  d = tmp_path / 'frappe'
  d.mkdir()
  for name in ('frappe.train.libfm', 'frappe.validation.libfm'):
    with open(shared_data / 'frappe' / name) as src, open(d / name, 'w') as dst:
      for i, line in enumerate(src):
        if i >= rows:
          break
        dst.write(line)
  return d


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=600, **kw)


def _train_args(data_dir, workdir, *extra):
  return ['scripts/train.py', '--config', 'configs/fm_frappe.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', '--config.num_epochs=2', '--config.batch_size=512',
          '--config.eval_batch_size=1000', '--config.progress=False', *extra]


def test_train_then_evaluate_from_the_command_line(shared_data, tmp_path):
  data_dir = _frappe_subset(shared_data, tmp_path)
  workdir = tmp_path / 'run'
  out = _run(_train_args(data_dir, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['valid']['rows'] == 3000 and results['epochs_run'] == 2

  ev = _run(['scripts/evaluate.py', '--workdir', str(workdir), '--split_file',
             str(data_dir / 'frappe.validation.libfm')])
  assert ev.returncode == 0, ev.stderr[-3000:]
  metrics = json.loads(ev.stdout.strip().splitlines()[-1])
  assert set(metrics) == {'auc', 'logloss', 'ne', 'rows'}
  assert metrics['rows'] == 3000
  # Same checkpoint, same rows: evaluate.py reproduces the run's own validation figures.
  for k in ('auc', 'logloss', 'ne'):
    assert metrics[k] == pytest.approx(results['valid'][k], rel=1e-6)

  # A bad line in the scored file: the error names the file and line (the same run scores it).
  bad = tmp_path / 'bad.libfm'
  lines = (data_dir / 'frappe.validation.libfm').read_text().splitlines()[:5]
  lines[3] = lines[3].replace(lines[3].split()[2], '999999:1')
  bad.write_text('\n'.join(lines) + '\n')
  ev = _run(['scripts/evaluate.py', '--workdir', str(workdir), '--split_file', str(bad)])
  assert ev.returncode != 0
  assert f'{bad}:4' in ev.stderr


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_result(shared_data, tmp_path):
  """SIGKILL a real training process mid-run, restart it, and get the uninterrupted result."""
  data_dir = _frappe_subset(shared_data, tmp_path)
  extra = ['--config.num_epochs=3', '--config.checkpoint_every_steps=2']
  straight = tmp_path / 'straight'
  assert _run(_train_args(data_dir, straight, *extra)).returncode == 0
  want = json.loads((straight / 'results.json').read_text())

  killed = tmp_path / 'killed'
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.Popen([sys.executable] + _train_args(data_dir, killed, *extra), cwd=REPO_ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  latest = killed / 'checkpoints' / 'latest'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p) for p in os.listdir(latest) if p.isdigit()] if latest.is_dir() else []
    if steps and max(steps) >= 7:  # into epoch 2 (6 steps per epoch)
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'training finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'results.json').exists()
  out = _run(_train_args(data_dir, killed, *extra))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resuming from' in out.stdout
  got = json.loads((killed / 'results.json').read_text())
  assert got == want


def test_plot_metrics_writes_a_png(tmp_path):
  from jaxrec.train.writers import MetricWriter  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  w = MetricWriter(str(run), tensorboard=False)
  for step in (10, 20, 30):
    w.write(step, 'train', {'loss': 1.0 / step})
    w.write(step, 'valid', {'auc': 0.5 + step / 100, 'epoch': step // 10})
  w.close()
  out = tmp_path / 'plot.png'
  res = _run(['scripts/plot_metrics.py', str(run), '--metric', 'valid/auc', '--metric',
              'train/loss', '--out', str(out)])
  assert res.returncode == 0, res.stderr[-2000:]
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  bad = _run(['scripts/plot_metrics.py', str(run), '--metric', 'valid/missing', '--out',
              str(out)])
  assert bad.returncode != 0 and 'valid/missing' in bad.stderr


def _snapshot(workdir):
  root = workdir
  return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
          for p in sorted(root.rglob('*'))}


def _one_line_error(out, *needles):
  """A user error: exit status 1, no traceback, one ``error:`` line naming ``needles``."""
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  assert 'Traceback' not in out.stderr and '_NotCanonical' not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, out.stderr[-3000:]
  for needle in needles:
    assert needle in out.stderr, (needle, out.stderr[-3000:])


def test_rerun_with_another_model_fails_and_leaves_the_run_usable(shared_data, tmp_path):
  data_dir = _frappe_subset(shared_data, tmp_path, rows=1500)
  workdir = tmp_path / 'run'
  args = ['scripts/train.py', '--config', 'configs/dcnv2_frappe.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', '--config.num_epochs=1', '--config.batch_size=512',
          '--config.eval_batch_size=1500', '--config.progress=False',
          '--config.tensorboard=False']
  out = _run(args)
  assert out.returncode == 0, out.stderr[-3000:]
  before = _snapshot(workdir)
  out = _run(args + ['--config.model=lr', '--config.seed=7'])
  _one_line_error(out, "model: 'dcnv2' -> 'lr'", 'seed: 2021 -> 7', '--override_config_check')
  assert _snapshot(workdir) == before
  ev = _run(['scripts/evaluate.py', '--workdir', str(workdir), '--split_file',
             str(data_dir / 'frappe.validation.libfm')])
  assert ev.returncode == 0, ev.stderr[-3000:]


def test_user_errors_print_one_line(shared_data, tmp_path):
  data_dir = _frappe_subset(shared_data, tmp_path, rows=200)
  workdir = tmp_path / 'run'
  base = ['scripts/train.py', '--config', 'configs/fm_frappe.py', '--workdir', str(workdir),
          f'--config.data_dir={data_dir}', '--config.progress=False']
  _one_line_error(_run(base + ['--config.nonexistent=1']), 'config.nonexistent')
  _one_line_error(_run(base + ['--config.learning_rat=0.1']), "closest: ['learning_rate'")
  _one_line_error(_run(base + ['--config.dataset_options.frappe.layot=csv']),
                  "closest: ['layout'")
  path = data_dir / 'frappe.train.libfm'
  lines = path.read_text().splitlines()
  lines[3] = lines[3].replace(lines[3].split()[2], '999999:1')
  path.write_text('\n'.join(lines) + '\n')
  _one_line_error(_run(base), f'{path}:4')
  assert not workdir.exists()  # nothing is written before the data has loaded
  _one_line_error(_run(['scripts/evaluate.py', '--workdir', str(tmp_path / 'none'),
                        '--split_file', str(path)]), 'a run directory of scripts/train.py')


CONFIG_LIKE_DEFAULT = '''
import ml_collections
from jaxrec.train.config import base_config


def get_config():
  c = base_config()
  c.dataset_options.synthetic.update(dict(num_train=4000, num_valid=500, num_test=500))
  c.model = 'dcnv2'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(num_cross_layers=1,
                                                  parallel_dnn_hidden_units=(8,)))
  c.batch_size = 64
  c.progress = False
  c.tensorboard = False
  return c
'''


def test_switching_dataset_on_the_command_line(shared_data, tmp_path):
  config = tmp_path / 'config.py'
  config.write_text(CONFIG_LIKE_DEFAULT)
  base = ['scripts/train.py', '--config', str(config), '--workdir', str(tmp_path / 'run')]
  out = _run(base + ['--config.dataset=criteo', f'--config.data_dir={shared_data / "criteo"}',
                     '--config.dataset_options.criteo.train_file=deepctr_criteo_sample.txt',
                     '--config.dataset_options.criteo.split=(0.6, 0.2, 0.2)',
                     '--config.max_steps=1'])
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout[out.stdout.index('{'):]) == {'stopped_at_step': 1}
  stored = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert stored['dataset_options'] == {'criteo': {
      'train_file': 'deepctr_criteo_sample.txt', 'valid_file': None, 'test_file': None,
      'split': [0.6, 0.2, 0.2], 'seed': 0, 'min_count': 1}}
  # An option of another dataset, or one the dataset does not have, is named.
  _one_line_error(_run(base + ['--config.dataset_options.criteo.min_count=2']),
                  '--config.dataset_options.criteo.min_count', "config.dataset is 'synthetic'")
  _one_line_error(_run(base + ['--config.dataset_options.num_train=10']),
                  '--config.dataset_options.synthetic.num_train')
