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


# Fields a finished run may differ in from a rerun's config and still be the same run (how it
# logged, not what it trained).
_LOGGING_FIELDS = frozenset({'log_every_steps', 'checkpoint_every_steps', 'progress',
                             'tensorboard', 'eval_batch_size'})


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """ConfigMismatchError when ``workdir`` holds a run (finished or not) of a config other than
  ``config``, logging fields aside: :func:`run_or_read` would read a finished one's results
  as if they were ``config``'s, and the loop would resume a killed one with a longer or shorter
  schedule (``num_epochs`` may change on resume)."""
  from jaxrec.errors import ConfigMismatchError  # pylint: disable=g-import-not-at-top
  from jaxrec.train import run_config  # pylint: disable=g-import-not-at-top
  stored = run_config.read_json(os.path.join(workdir, run_config.CONFIG_FILE))
  if stored is None:
    return
  changes = run_config.config_changes(stored, run_config.run_record(config), _LOGGING_FIELDS)
  if changes:
    raise ConfigMismatchError(
        f'{workdir} holds a run of another config (stored -> now):\n'
        f'{run_config.format_changes(changes)}\nUse another --root for these settings, or delete '
        'that run directory to retrain it.')


def steps_to_reach(steps: Sequence[float], losses: Sequence[float],
                   target: float) -> float | None:
  """The step at which the loss curve ``(steps, losses)`` (increasing steps) first reaches
  ``target`` (loss <= target): linearly interpolated between the last point above ``target`` and
  the first at or below it; the first point's step when that one already reaches it (nothing is
  assumed before the first point); None when no point does."""
  steps, losses = list(map(float, steps)), list(map(float, losses))
  if len(steps) != len(losses):
    raise ValueError(f'steps_to_reach: {len(steps)} steps but {len(losses)} losses')
  for i, (s, loss) in enumerate(zip(steps, losses)):
    if loss <= target:
      if i == 0:
        return s
      s0, l0 = steps[i - 1], losses[i - 1]
      return s0 + (l0 - target) / (l0 - loss) * (s - s0)
  return None


def trailing_mean(steps: Sequence[float], values: Sequence[float], window: float) -> list[float]:
  """A logged curve smoothed: at each point the mean of the points in the trailing ``window``
  steps ``(step - window, step]``, each weighted by the steps it covers (its step minus the
  previous point's; the first point its own step), as a point of ``metrics.jsonl`` is the mean
  of the training steps since the previous one. ``window`` <= the gap between points: no
  smoothing."""
  out = []
  for i, s in enumerate(steps):
    num = den = 0.0
    for j in range(i, -1, -1):
      if steps[j] <= s - window and j < i:
        break
      w = steps[j] - (steps[j - 1] if j else 0.0)
      num, den = num + w * values[j], den + w
    out.append(num / den if den > 0 else float(values[i]))
  return out


def read_curves(workdir: str) -> dict:
  """split -> records of the run's ``metrics.jsonl`` by increasing step, the last of a step kept
  (a resumed run logs again the steps after its checkpoint); splits 'train' and 'valid'."""
  from jaxrec.train.writers import read_metrics  # pylint: disable=g-import-not-at-top
  by_step = {'train': {}, 'valid': {}}
  for r in read_metrics(os.path.join(workdir, 'metrics.jsonl')):
    if r['split'] in by_step:
      by_step[r['split']][int(r['step'])] = r
  return {split: [d[s] for s in sorted(d)] for split, d in by_step.items()}


def lm_size(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Total and non-embedding parameters and forward matmul FLOPs per token (as trained:
  ``mixed_modal_lm_flops``) of a decoder-LM run's model (its schema from the run's
  ``dataset_state.json``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrec.data.schema import schema_from_dict  # pylint: disable=g-import-not-at-top
  from jaxrec.models.mixed_modal_lm import mixed_modal_lm_flops  # pylint: disable=g-import-not-at-top
  from jaxrec.train.evaluation import load_dataset_state  # pylint: disable=g-import-not-at-top
  from jaxrec.train.loop import make_model  # pylint: disable=g-import-not-at-top
  schema = schema_from_dict(load_dataset_state(workdir)['schema'])
  lm = make_model(config, schema).lm()
  tokens = np.zeros((1, schema.seq_len), np.int32)
  modality = np.repeat(np.arange(schema.num_modalities, dtype=np.int32),
                       schema.modality_counts)[None]  # the static per-modality counts
  shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), tokens, modality, train=False))
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  return {'params': params, 'non_embedding_params': params - lm.vocab_size * lm.embed_dim,
          'flops_per_token': mixed_modal_lm_flops(lm, schema.seq_len) / schema.seq_len}
