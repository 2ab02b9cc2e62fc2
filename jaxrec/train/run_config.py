"""What a run directory records of its config, and the checks a resumed or forked run must pass.

``config.json`` records the config a run was started with, its ``dataset_options`` reduced to the
options the chosen dataset was loaded with (:func:`run_record`); ``dataset_state.json`` records the
data (schema, vocabularies). Re-running a workdir that holds a checkpoint resumes that run, so the
new config must describe the same run: it may differ from the record only in
:data:`RESUMABLE_FIELDS` (how long to train, how to log); any other difference, or different data,
is a :class:`~jaxrec.errors.ConfigMismatchError` listing the fields as ``stored -> now``. To change
hyperparameters start a new workdir, from scratch or forked from this run's latest checkpoint
(``fork_from``, ``--fork_from`` of scripts/train.py); ``override_config_check``
(``--override_config_check``) resumes anyway and replaces the record.

Nothing here writes: :func:`plan_start` only reads the workdir, so a refused rerun leaves it as it
was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import ml_collections

from jaxrec.errors import ConfigMismatchError, RunDirError
from jaxrec.train.config import base_config, chosen_dataset_options

# Fields that may change when a run is resumed: they decide how long to train and how to log,
# not the trajectory of the steps taken.
RESUMABLE_FIELDS = frozenset({
    'num_epochs', 'max_steps', 'log_every_steps', 'checkpoint_every_steps', 'progress',
    'tensorboard', 'eval_batch_size',
})
CONFIG_FILE = 'config.json'
DATASET_STATE_FILE = 'dataset_state.json'
_ABSENT = '<absent>'


def json_native(obj: Any) -> Any:
  """``obj`` as JSON would give it back (tuples become lists, numpy scalars Python numbers)."""
  return json.loads(json.dumps(obj, default=lambda x: x.item() if hasattr(x, 'item') else str(x)))


def run_record(config: ml_collections.ConfigDict) -> dict:
  """The JSON record of ``config`` for ``config.json``: every field, with ``dataset_options``
  reduced to ``{dataset: options it is loaded with}`` (ConfigError for an option it does not
  take)."""
  record = json.loads(config.to_json_best_effort())
  record['dataset_options'] = {config.dataset: chosen_dataset_options(config)}
  return json_native(record)


def read_json(path: str) -> Optional[Any]:
  """The JSON content of ``path``, or None when there is no such file."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir/checkpoints/latest`` holds a finished (step-named) checkpoint."""
  latest = os.path.join(workdir, 'checkpoints', 'latest')
  return os.path.isdir(latest) and any(n.isdigit() for n in os.listdir(latest))


def _flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    path = f'{prefix}.{k}' if prefix else str(k)
    out.update(_flatten(v, path) if isinstance(v, dict) and v else {path: v})
  return out


def config_changes(old: dict, new: dict,
                   allowed: frozenset = RESUMABLE_FIELDS) -> list[tuple[str, Any, Any]]:
  """``(field, old, new)`` for every leaf that differs between two records, outside ``allowed``.

  Both are records as :func:`run_record` gives them (an older flat ``dataset_options`` is
  resolved first); a field missing on one side shows as ``'<absent>'``, except a field the old
  record predates (absent there) whose new value is its :func:`base_config` default: the default
  is what the older code did.
  """
  old = dict(old, dataset_options={old['dataset']: chosen_dataset_options(old)})
  a, b = _flatten(json_native(old)), _flatten(json_native(new))
  defaults = _flatten(json_native(base_config().to_dict()))
  changes = []
  for path in sorted(set(a) | set(b)):
    if path.split('.')[0] in allowed:
      continue
    x, y = a.get(path, _ABSENT), b.get(path, _ABSENT)
    if x == _ABSENT and path in defaults and y == defaults[path]:
      continue
    if x != y:
      changes.append((path, x, y))
  return changes


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
  return '\n'.join(f'  {path}: {old!r} -> {new!r}' for path, old, new in changes)


@dataclasses.dataclass(frozen=True)
class Start:
  """How a run starts: from scratch (``source`` None) or from the checkpoints of ``source``
  (the workdir itself on resume, another run directory on a fork)."""
  source: Optional[str]
  changes: tuple = ()
  note: str = ''


def plan_start(workdir: str, record: dict, fork_from: Optional[str] = None,
               override_config_check: bool = False) -> Start:
  """Decides how the run of ``record`` starts in ``workdir``; raises if it may not. Writes nothing.

  * ``workdir`` holds a checkpoint: resume it; a difference outside :data:`RESUMABLE_FIELDS`
    from its ``config.json`` is a ConfigMismatchError unless ``override_config_check``.
  * ``fork_from``: start from that run's checkpoints; ``workdir`` must hold no run.
  * otherwise a fresh run (a ``config.json`` without a checkpoint, left by a run stopped before
    its first checkpoint, is replaced).
  """
  if fork_from is not None:
    if has_checkpoint(workdir):
      raise RunDirError(f'--fork_from: {workdir!r} already holds a run; fork into a new workdir')
    if not has_checkpoint(fork_from):
      raise RunDirError(f'--fork_from: {fork_from!r} holds no checkpoint to start from')
    stored = read_json(os.path.join(fork_from, CONFIG_FILE))
    changes = tuple(config_changes(stored, record, frozenset())) if stored else ()
    note = f'Forking {fork_from} into {workdir}'
    if changes:
      note += ' with these changes (stored -> now):\n' + format_changes(list(changes))
    return Start(fork_from, changes, note)
  stored = read_json(os.path.join(workdir, CONFIG_FILE))
  if not has_checkpoint(workdir):
    note = ''
    if stored is not None:
      note = (f'{workdir} has a {CONFIG_FILE} but no checkpoint (a run stopped before its first '
              'checkpoint): starting afresh')
    return Start(None, (), note)
  if stored is None:
    return Start(workdir, (), f'{workdir} has a checkpoint but no {CONFIG_FILE}: resuming '
                 'without checking the config')
  changes = tuple(config_changes(stored, record))
  if changes and not override_config_check:
    raise ConfigMismatchError(
        f'{workdir} holds a run started with another config, and resuming it with this one would '
        f'not continue that run. Fields that differ (stored -> now):\n{format_changes(changes)}\n'
        f'To change them, use a new --workdir (--fork_from={workdir} starts it from this run\'s '
        'latest checkpoint); to resume this run with the new values anyway, pass '
        f'--override_config_check. Fields that may change on resume: {sorted(RESUMABLE_FIELDS)}.')
  note = ''
  if changes:
    note = ('--override_config_check: resuming with these changes (stored -> now):\n'
            + format_changes(list(changes)))
  return Start(workdir, changes, note)


def check_dataset_state(source: str, state: dict, override_config_check: bool = False) -> None:
  """ConfigMismatchError if the data loaded now is not the data the run in ``source`` used."""
  stored = read_json(os.path.join(source, DATASET_STATE_FILE))
  if stored is None or override_config_check:
    return
  state = json_native(state)
  if stored != state:
    keys = sorted(k for k in set(stored) | set(state) if stored.get(k) != state.get(k))
    raise ConfigMismatchError(
        f'the dataset loaded now differs from the one the run in {source} was trained on '
        f'({DATASET_STATE_FILE} differs in {keys}): were its files changed or replaced? Use a new '
        '--workdir for new data, or pass --override_config_check to resume anyway.')
