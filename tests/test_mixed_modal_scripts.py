"""scripts/bench_mot.py and scripts/generate_mixed_modal.py from the command line, reduced."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _run(args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


# The benchmark end to end runs (and is checked) in the doc check of docs/mot.md
# (tests/doc_checks.py: mot_bench).


def test_bench_mot_rejects_an_unknown_size():
  r = _run(['scripts/bench_mot.py', '--sizes', 'xs,xxl'])
  assert r.returncode != 0 and 'xxl' in r.stderr and "'xs', 's', 'm', 'l'" in r.stderr


# The script end to end (a tiny run, then its grid and text) runs in the doc check of docs/mot.md;
# the grid's layout and size are tested in tests/serving/test_mixed_modal_sampling.py.


def test_generate_mixed_modal_names_a_missing_run(tmp_path):
  r = _run(['scripts/generate_mixed_modal.py', '--workdir', str(tmp_path / 'nope'), '--out',
            str(tmp_path / 'x.png')])
  assert r.returncode == 1 and 'error:' in r.stderr and 'nope' in r.stderr
  assert 'Traceback' not in r.stderr  # a user error: one line
  assert not (tmp_path / 'x.png').exists()


@pytest.fixture(autouse=True)
def _no_stray_docs():
  """The tests write under tmp_path only, never the committed docs."""
  before = set(os.listdir(REPO_ROOT / 'docs'))
  yield
  assert set(os.listdir(REPO_ROOT / 'docs')) == before
