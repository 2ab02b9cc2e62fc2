"""Shared pytest fixtures."""

import os

# 8 emulated CPU devices for the sharding tests (set before anything imports jax; see docs/fsdp.md).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position
import uuid  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest

# One persistent XLA compilation cache per test run, shared by the xdist workers and every
# subprocess a test starts (scripts, doc commands): the suite compiles the same small programs
# many times over (a run, its resume, its evaluation), and a cache hit skips the compile. Every
# program is cached (no minimum compile time). The run's folder is removed at the end.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or uuid.uuid4().hex
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(tempfile.gettempdir(),
                                                         f'jaxrec-tests-xla-cache-{_RUN}')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  _OWN_CACHE = True
else:
  _OWN_CACHE = False

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('JAXREC_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The real datasets in ../shared/data (see its README); skips with a reason if absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real data folder {SHARED_DATA} not found (set JAXREC_SHARED_DATA)')
  return SHARED_DATA


def pytest_sessionfinish(session):
  """The controller (not an xdist worker) removes the run's compilation cache."""
  if _OWN_CACHE and not hasattr(session.config, 'workerinput'):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
