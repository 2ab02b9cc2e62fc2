"""What the command-line scripts share: a user error is one line, an unknown config key a hint.

``run(main, config_flag='config')`` replaces ``absl.app.run(main)``:

* a :class:`jaxrec.errors.UserError` (bad data, config, sharding plan, run directory) prints
  ``error: <message>`` on stderr and exits with status 1; any other exception is a bug and keeps
  its traceback;
* ``--config.<path>=...`` naming a field the config does not have prints the path and the closest
  valid fields (ml_collections itself raises a bare ``AttributeError: "'x'"`` from flag parsing).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import runpy
import sys
from typing import Any, Callable, Optional, Sequence

import ml_collections
from absl import app

from jaxrec.data.datasets import DATASETS
from jaxrec.errors import ConfigError, UserError


def run(main: Callable[[list[str]], Any], config_flag: Optional[str] = None) -> None:
  """``absl.app.run(main)`` with user errors printed as one line (module docstring)."""
  app.run(_catch_user_errors(main),
          flags_parser=functools.partial(parse_flags, config_flag=config_flag))


def run_argparse(main: Callable[[], Any]) -> None:
  """``main()`` of an argparse script with user errors printed as one line (status 1)."""
  _catch_user_errors(lambda _: main())(None)


def exit_with(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def _catch_user_errors(main):
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      exit_with(str(e))
  return wrapped


def parse_flags(argv: Sequence[str], config_flag: Optional[str] = None) -> list[str]:
  """absl's flag parsing, plus a clear message for an unknown ``--<config_flag>.<path>``."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    message = unknown_override_message(argv, config_flag) if config_flag else None
    if message is None:
      raise
    exit_with(message)
    raise  # unreachable: exit_with exits


def override_paths(argv: Sequence[str], config_flag: str = 'config') -> list[str]:
  """The config paths that ``argv`` overrides (``--config.a.b=1`` -> ``'a.b'``), in order."""
  pattern = re.compile(rf'^--?(?:no)?{re.escape(config_flag)}\.([^=]+)')
  return [m.group(1) for m in map(pattern.match, argv) if m]


def _config_file(argv: Sequence[str], config_flag: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg in (f'--{config_flag}', f'-{config_flag}') and i + 1 < len(argv):
      return argv[i + 1]
    for prefix in (f'--{config_flag}=', f'-{config_flag}='):
      if arg.startswith(prefix):
        return arg[len(prefix):]
  return None


def _load_config(path: str) -> Optional[ml_collections.ConfigDict]:
  """The config of a config file (``path`` or ``path:arg``, as ml_collections reads it)."""
  arg = None
  if not os.path.isfile(path) and ':' in path:
    path, arg = path.rsplit(':', 1)
  try:
    get_config = runpy.run_path(path)['get_config']
    return get_config() if arg is None else get_config(arg)
  except Exception:  # pylint: disable=broad-except
    return None  # the caller re-raises ml_collections' own error


def missing_field_message(config: ml_collections.ConfigDict, path: str,
                          name: str = 'config') -> Optional[str]:
  """Why ``path`` is not a field of ``config`` (with the closest valid names), or None if it is."""
  node, done = config, [name]
  for part in path.split('.'):
    where = '.'.join(done)
    if not isinstance(node, ml_collections.ConfigDict):
      return f'unknown config field {name}.{path}: {where} is a value, not a group of fields'
    if part in node:
      node = node[part]
      done.append(part)
      continue
    keys = sorted(node.keys())
    close = difflib.get_close_matches(part, keys, n=3, cutoff=0.7)
    hint = f'closest: {close}' if close else f'valid fields: {keys}'
    message = f'unknown config field {name}.{path}: {where} has no field {part!r}; {hint}'
    if done[1:] == ['dataset_options'] and config.get('dataset') in node:
      group = node[config.dataset]
      if part in group:
        message += (f'. Dataset options are set per dataset: '
                    f'--{name}.dataset_options.{config.dataset}.{part}')
    return message
  return None


def unknown_override_message(argv: Sequence[str], config_flag: str) -> Optional[str]:
  """The message for the first ``--config.<path>`` of ``argv`` the config file lacks, if any."""
  path = _config_file(argv, config_flag)
  config = _load_config(path) if path else None
  if config is None:
    return None
  for override in override_paths(argv, config_flag):
    message = missing_field_message(config, override, config_flag)
    if message is not None:
      return message
  return None


def check_dataset_overrides(config: ml_collections.ConfigDict, argv: Sequence[str],
                            config_flag: str = 'config') -> None:
  """ConfigError if ``argv`` sets options of a dataset other than ``config.dataset``."""
  stray = [p for p in override_paths(argv, config_flag)
           if p.split('.')[:1] == ['dataset_options'] and p.count('.') >= 2
           and p.split('.')[1] in DATASETS and p.split('.')[1] != config.dataset]
  if stray:
    names = ', '.join(f'--{config_flag}.{p}' for p in stray)
    raise ConfigError(f'{names} set options of another dataset, but {config_flag}.dataset is '
                      f'{config.dataset!r}: set --{config_flag}.dataset_options.{config.dataset}.'
                      '<option> instead')
