"""Scaling-law study: test quality against per-example forward FLOPs, Wukong vs DLRM vs DCNv2.

    python scripts/scaling_law.py --preset full --out docs/scaling_law
    python scripts/scaling_law.py --preset reduced --out /tmp/scaling_law   # seconds

Data: the synthetic generator (jaxrec/data/synthetic.py) with a planted teacher whose logit is
dominated by order-3 and order-4 interactions; every model of every size trains on the same rows,
streamed once (one pass, no row seen twice) with Adam, and is scored on a held-out test split.
Sizes, data and optimisation come from configs/scaling_law.py (``--preset``); FLOPs per example
from jaxrec/models/flops.py (2 FLOPs per multiply-add).

Writes ``<out>.csv`` (one row per model and size), ``<out>.png`` (test logloss and AUC against
FLOPs on log axes, with the teacher's Bayes-optimal values and a fitted power law per model) and
``<out>.md`` (the command, the settings, the table and the fits). The power law is fitted to the
*excess* over the Bayes-optimal value: ``logloss - L* = A F^-alpha`` and ``AUC* - AUC = B F^-beta``
(least squares in log-log space); a model that keeps improving as it grows has a clearly positive
exponent and a gain over its largest sizes, a model that plateaus has an exponent near zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import datetime
import os
import platform
import runpy
import sys
import time
from typing import Optional

import jax
import numpy as np

from jaxrec.data.synthetic import SyntheticConfig, make_splits
from jaxrec.models import build_model
from jaxrec.models.flops import per_example_flops
from jaxrec.train import state as state_lib
from jaxrec.train.loop import evaluate
from jaxrec.train.metrics import auc as auc_fn
from jaxrec.train.metrics import logloss as logloss_fn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ('model', 'size', 'flops', 'params', 'test_logloss', 'test_auc', 'test_ne',
          'bayes_logloss', 'bayes_auc', 'excess_logloss', 'train_loss_last', 'steps', 'seconds')


def load_config(preset: str, path: Optional[str] = None):
  path = path or os.path.join(REPO, 'configs', 'scaling_law.py')
  return runpy.run_path(path)['get_config'](preset)


def bayes_metrics(test) -> dict:
  """Logloss and AUC of the teacher's true click probability on every test row."""
  probs, labels = [], []
  for batch in test.batches(4096):
    keep = batch['weight'] > 0
    probs.append(test.teacher_probability(batch)[keep])
    labels.append(batch['label'][keep])
  p, y = np.concatenate(probs), np.concatenate(labels)
  return {'bayes_logloss': logloss_fn(y, p, eps=1e-12), 'bayes_auc': auc_fn(y, p)}


def train_one(model, splits: dict, config) -> dict:
  """One streamed pass over ``splits['train']``, then test metrics."""
  train, test = splits['train'], splits['test']
  ocfg = state_lib.OptimConfig(learning_rate=config.learning_rate,
                               max_grad_norm=config.max_grad_norm)
  tx = state_lib.make_optimizer(ocfg)
  state, mask = state_lib.create_train_state(model, next(train.batches(config.batch_size)), tx,
                                             config.seed)
  step = jax.jit(state_lib.make_train_step(model, tx, mask, ocfg), donate_argnums=0)
  t0 = time.perf_counter()
  losses, steps = [], 0
  for batch in train.batches(config.batch_size):  # i.i.d. rows: one pass, in stream order
    state, metrics = step(state, batch)
    losses.append(metrics['data_loss'])
    steps += 1
  tail = float(np.mean(jax.device_get(losses[-max(1, steps // 10):])))
  test_metrics = evaluate(jax.jit(state_lib.make_eval_step(model)), state, test, 4096)
  return {'test_logloss': test_metrics['logloss'], 'test_auc': test_metrics['auc'],
          'test_ne': test_metrics['ne'], 'train_loss_last': tail, 'steps': steps,
          'seconds': time.perf_counter() - t0,
          'params': sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))}


def fit_power_law(flops, excess) -> tuple[float, float]:
  """Least squares of ``log10(excess) = log10(A) - alpha log10(flops)``; returns (A, alpha).

  Points with ``excess <= 0`` carry no log and are left out; fewer than 2 left gives NaNs.
  """
  x, y = np.asarray(flops, np.float64), np.asarray(excess, np.float64)
  keep = y > 0
  if keep.sum() < 2:
    return float('nan'), float('nan')
  slope, intercept = np.polyfit(np.log10(x[keep]), np.log10(y[keep]), 1)
  return float(10 ** intercept), float(-slope)


def _row_key(name: str, size: int, kwargs, config) -> str:
  """Identifies a finished row: the model, its hyperparameters and the study's data/optimiser."""
  study = {k: v for k, v in config.to_dict().items() if k != 'models'}
  return json.dumps([name, size, dict(kwargs), study], sort_keys=True, default=str)


def run_study(config, models: Optional[list[str]] = None, log=print,
              rows_file: Optional[str] = None) -> tuple[list[dict], dict]:
  """Trains every (model, size) of ``config``; returns (rows, bayes metrics).

  With ``rows_file`` (JSON lines) every finished row is appended to it, and rows already there for
  the same model, hyperparameters and study settings are reused instead of retrained, so an
  interrupted study resumes where it stopped.
  """
  done = {}
  if rows_file and os.path.exists(rows_file):
    with open(rows_file, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          rec = json.loads(line)
          done[rec['key']] = rec['row']
  data = SyntheticConfig(**config.data.to_dict())
  splits = make_splits(data, config.num_train, 0, config.num_test)
  bayes = bayes_metrics(splits['test'])
  log(f'data: {config.num_train:,} train / {config.num_test:,} test rows, schema of '
      f'{data.schema().num_fields} fields; Bayes-optimal test logloss {bayes["bayes_logloss"]:.5f}'
      f' AUC {bayes["bayes_auc"]:.5f}')
  rows = []
  for name in models or list(config.models):
    if name not in config.models:
      raise ValueError(f'--models: {name!r} has no ladder in the config; it has '
                       f'{list(config.models)}')
    for size, kwargs in enumerate(config.models[name]):
      model = build_model(name, splits['train'].schema, embedding_dim=config.embedding_dim,
                          **dict(kwargs))
      key = _row_key(name, size, kwargs, config)
      if key in done:
        rows.append(done[key])
        log(f'{name} size {size}: reused from {rows_file}')
        continue
      result = train_one(model, splits, config)
      row = dict(model=name, size=size, flops=per_example_flops(model), **result, **bayes)
      row['excess_logloss'] = row['test_logloss'] - bayes['bayes_logloss']
      rows.append(row)
      if rows_file:
        with open(rows_file, 'a', encoding='utf-8') as f:
          f.write(json.dumps({'key': key, 'row': row}) + '\n')
      log(f'{name} size {size}: {row["flops"]:,} FLOPs/example, {row["params"]:,} params, test '
          f'logloss {row["test_logloss"]:.5f} AUC {row["test_auc"]:.5f} '
          f'({row["seconds"]:.0f} s)')
  return rows, bayes


def fits(rows: list[dict]) -> dict[str, dict]:
  """Per model: the two power-law fits and the gains over its range and its top sizes."""
  out = {}
  for name in dict.fromkeys(r['model'] for r in rows):
    rs = sorted((r for r in rows if r['model'] == name), key=lambda r: r['flops'])
    f = [r['flops'] for r in rs]
    a, alpha = fit_power_law(f, [r['excess_logloss'] for r in rs])
    b, beta = fit_power_law(f, [r['bayes_auc'] - r['test_auc'] for r in rs])
    best = min(rs, key=lambda r: r['test_logloss'])
    out[name] = {'A': a, 'alpha': alpha, 'B': b, 'beta': beta,
                 'flops_range': f[-1] / f[0],
                 'logloss_gain_total': rs[0]['test_logloss'] - rs[-1]['test_logloss'],
                 'logloss_gain_top': rs[-2]['test_logloss'] - rs[-1]['test_logloss']
                                     if len(rs) > 1 else float('nan'),
                 'best_size': best['size'], 'best_flops': best['flops'],
                 'best_logloss': best['test_logloss'], 'best_auc': best['test_auc']}
  return out


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(FIELDS))
    w.writeheader()
    for r in rows:
      w.writerow({k: r[k] for k in FIELDS})


def plot(rows: list[dict], fit: dict, bayes: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, fr in fit.items():
    rs = sorted((r for r in rows if r['model'] == name), key=lambda r: r['flops'])
    x = np.array([r['flops'] for r in rs], np.float64)
    grid = np.geomspace(x.min(), x.max(), 50)
    line = ax_l.plot(x, [r['test_logloss'] for r in rs], 'o', label=name)[0]
    if np.isfinite(fr['alpha']):
      ax_l.plot(grid, bayes['bayes_logloss'] + fr['A'] * grid ** -fr['alpha'], '-',
                color=line.get_color(), label=f'{name} fit: alpha={fr["alpha"]:.3f}')
    ax_a.plot(x, [r['test_auc'] for r in rs], 'o', color=line.get_color(), label=name)
    if np.isfinite(fr['beta']):
      ax_a.plot(grid, bayes['bayes_auc'] - fr['B'] * grid ** -fr['beta'], '-',
                color=line.get_color(), label=f'{name} fit: beta={fr["beta"]:.3f}')
  ax_l.axhline(bayes['bayes_logloss'], ls='--', color='gray', label='Bayes-optimal')
  ax_a.axhline(bayes['bayes_auc'], ls='--', color='gray', label='Bayes-optimal')
  for ax, ylabel in ((ax_l, 'test logloss'), (ax_a, 'test AUC')):
    ax.set_xscale('log')
    ax.set_xlabel('forward FLOPs per example')
    ax.set_ylabel(ylabel)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
  ax_l.set_yscale('log')
  fig.suptitle('test quality vs compute (one streamed pass, planted high-order teacher)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summary(rows: list[dict], fit: dict, bayes: dict, config, command: str,
            elapsed: float) -> str:
  lines = [
      '# Scaling-law study: Wukong vs DLRM vs DCNv2 (generated by scripts/scaling_law.py)', '',
      f'Command: `{command}`  ',
      f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} '
      f'({jax.default_backend()}); date {datetime.date.today().isoformat()}; '
      f'{elapsed / 60:.1f} minutes in all.', '',
      f'Preset `{config.preset}` (configs/scaling_law.py): {config.num_train:,} training rows '
      f'streamed once, {config.num_test:,} test rows, batch {config.batch_size}, Adam '
      f'{config.learning_rate:g}, embedding dim {config.embedding_dim}. Synthetic data: '
      + ', '.join(f'{k}={v}' for k, v in config.data.to_dict().items()) + '.', '',
      f'Bayes-optimal test logloss {bayes["bayes_logloss"]:.5f}, AUC {bayes["bayes_auc"]:.5f} '
      '(the teacher\'s true click probabilities).', '',
      '| model | size | FLOPs/example | params | test logloss | excess logloss | test AUC | '
      'seconds |', '|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["model"]} | {r["size"]} | {r["flops"]:,} | {r["params"]:,} | '
                 f'{r["test_logloss"]:.5f} | {r["excess_logloss"]:.5f} | {r["test_auc"]:.5f} | '
                 f'{r["seconds"]:.0f} |')
  lines += ['', 'Fits (least squares in log-log space) of `logloss - L* = A F^-alpha` and '
            '`AUC* - AUC = B F^-beta`:', '',
            '| model | FLOPs range | alpha | beta | logloss gain, smallest -> largest | '
            'logloss gain, last step | best size (FLOPs) |', '|---|---:|---:|---:|---:|---:|---|']
  for name, f in fit.items():
    lines.append(f'| {name} | {f["flops_range"]:.0f}x | {f["alpha"]:.3f} | {f["beta"]:.3f} | '
                 f'{f["logloss_gain_total"]:+.5f} | {f["logloss_gain_top"]:+.5f} | '
                 f'{f["best_size"]} ({f["best_flops"]:,}) |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--preset', default='full', help="'full' or 'reduced' (configs/scaling_law.py)")
  p.add_argument('--config', default=None, help='another config file with get_config(preset)')
  p.add_argument('--models', default='', help='comma-separated subset of the config\'s models')
  p.add_argument('--num_train', type=int, default=0, help='override the training rows')
  p.add_argument('--out', default=os.path.join(REPO, 'docs', 'scaling_law'),
                 help='output prefix: writes <out>.csv, <out>.png, <out>.md')
  p.add_argument('--rows_file', default='',
                 help='JSON lines of finished rows (default <out>.rows.jsonl): a rerun reuses them')
  args = p.parse_args(argv)
  config = load_config(args.preset, args.config)
  if args.num_train:
    config.num_train = args.num_train
  models = [m.strip() for m in args.models.split(',') if m.strip()] or None
  t0 = time.perf_counter()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  rows_file = args.rows_file or args.out + '.rows.jsonl'
  rows, bayes = run_study(config, models, log=lambda s: print(s, flush=True), rows_file=rows_file)
  fit = fits(rows)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  write_csv(rows, args.out + '.csv')
  plot(rows, fit, bayes, args.out + '.png')
  command = 'python scripts/scaling_law.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
  text = summary(rows, fit, bayes, config, command, time.perf_counter() - t0)
  with open(args.out + '.md', 'w', encoding='utf-8') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
