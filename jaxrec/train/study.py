"""What the study scripts share: config overrides from the command line and resumable runs.

A study is many runs of the one loop, each in its own run directory under a root; a finished run
(``results.json``) is read instead of retrained and a killed one resumes, so a study stopped at
any point continues where it was.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import ml_collections

from jaxrec.errors import ConfigError


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """``config.<path> = value``, a string converted to the field's type (bool, int, float, str)."""
  *groups, field = path.split('.')
  node = config
  for g in groups:
    if not isinstance(node, ml_collections.ConfigDict) or g not in node:
      raise ConfigError(f'--set {path}: config has no group {g!r}')
    node = node[g]
  if field not in node:
    raise ConfigError(f'--set {path}: config has no field {field!r}')
  old = node[field]
  if isinstance(value, str):
    if isinstance(old, bool):
      value = value.lower() in ('1', 'true', 'yes')
    elif isinstance(old, (int, float)):
      value = type(old)(float(value)) if isinstance(old, float) else int(value)
  node[field] = value


def apply_overrides(config: ml_collections.ConfigDict, items: Sequence[str]) -> None:
  """``key=value`` strings (``--set``) applied with :func:`set_field`."""
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise ConfigError(f'--set {item!r}: expected key=value')
    set_field(config, key, value)


def run_or_read(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The results of ``config`` in ``workdir``: read when the run finished, else trained (resumed
  when the directory holds a killed run)."""
  from jaxrec.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  done = os.path.join(workdir, 'results.json')
  if os.path.exists(done):
    with open(done, encoding='utf-8') as f:
      return json.load(f)
  return train_and_evaluate(config, workdir)


def write_csv(path: str, fields: Sequence[str], rows: Sequence[dict]) -> None:
  """``rows`` (dicts with ``fields``) as CSV at ``path``, its folder made when missing."""
  import csv  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(fields))
    w.writeheader()
    w.writerows(rows)


def machine_line(load_at_start: float) -> str:
  """``Machine: ...`` of a study's Markdown: the CPU, jax and its devices, the date and the load
  average when the study started."""
  import datetime  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return (f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} '
          f'({jax.default_backend()}: {jax.device_count()} x {jax.devices()[0].device_kind}); '
          f'date {datetime.date.today().isoformat()}; load average at start {load_at_start:.1f}  ')
