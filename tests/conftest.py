"""Shared pytest fixtures."""

import os

# 8 emulated CPU devices for the sharding tests (set before anything imports jax; see docs/fsdp.md).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('JAXREC_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The real datasets in ../shared/data (see its README); skips with a reason if absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real data folder {SHARED_DATA} not found (set JAXREC_SHARED_DATA)')
  return SHARED_DATA
