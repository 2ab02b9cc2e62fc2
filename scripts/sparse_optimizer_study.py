"""Frappe quality of the fused sparse table optimizers against dense Adam (issue 12, item 11).

    python scripts/sparse_optimizer_study.py --models dlrm,deepfm --seeds 2021,2022,2023 \
        --data_dir ../shared/data/frappe --root runs/sparse_study --out docs/sparse_optimizers

Per model (its BARS config, ``configs/<model>_frappe.py``):

1. The sweep, first seed, at most ``--sweep_epochs`` epochs each: each sparse optimizer of
   ``--grid`` at each of its table learning rates (tables sharded by ``--plan``, embedding L2 off:
   the fused optimizers refuse it), and ``dense_noreg``: the same sharded tables under dense Adam
   without the L2 (what the sparse runs give up by having none).
2. The full BARS protocol on every seed: ``dense`` (the BARS run as it is: unsharded tables, dense
   Adam, the BARS embedding L2) and the sparse optimizer whose swept rate reached the best
   validation AUC (``--final best``), or every optimizer at its best rate (``--final all``); and
   ``dense_noreg`` on the first seed.

The dense parameters keep Adam at the config's rate in every run; the BARS protocol (plateau decay
of both rates, early stop, best epoch) is the loop's. Runs are resumable: a finished run
(``results.json``) is read, not retrained. Writes ``{out}.csv`` (one row per run), ``{out}.png``
(validation AUC against the table learning rate, per model and optimizer, with the dense
baselines), and ``{out}.md`` (the sweep and the seed table, mean +- std). ``--jobs K`` runs K
points at a time, each in its own process (on a GPU they share it; on CPU keep 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import runpy
import sys

from jaxrec.train import study as study_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GRID = ('sgd=1,10,100,1000;adagrad=0.0003,0.001,0.003,0.01,0.03,0.1;'
                'rowwise_adagrad=0.0003,0.001,0.003,0.01,0.03,0.1;adam=0.0003,0.001,0.003,0.01')
FIELDS = ('model', 'setting', 'optimizer', 'table_lr', 'seed', 'max_epochs', 'valid_auc', 'valid_logloss',
          'best_epoch', 'epochs_run')


def parse_grid(text: str) -> dict[str, list[float]]:
  """``'sgd=1,10;adam=0.001'`` -> ``{'sgd': [1.0, 10.0], 'adam': [0.001]}``."""
  grid = {}
  for part in filter(None, (p.strip() for p in text.split(';'))):
    name, sep, rates = part.partition('=')
    if not sep or not rates.strip():
      raise SystemExit(f'--grid: {part!r} is not optimizer=rate[,rate...]')
    try:
      grid[name.strip()] = [float(r) for r in rates.split(',')]
    except ValueError:
      raise SystemExit(f'--grid: {part!r} has a rate that is not a number') from None
  return grid


def build_config(model: str, setting: dict, seed: int, args, epochs: int = 0):
  config = runpy.run_path(os.path.join(REPO, 'configs', f'{model}_frappe.py'))['get_config']()
  config.seed = seed
  config.data_dir = args.data_dir
  config.progress = args.progress
  config.tensorboard = False
  if epochs:
    config.num_epochs = epochs
  if setting['setting'] != 'dense':
    config.embedding_regularizer = 0.0
    config.embedding.plan = args.plan
    if setting['setting'] == 'sparse':
      config.embedding.optimizer = setting['optimizer']
      config.embedding.learning_rate = setting['table_lr']
  return config


def run_name(model: str, setting: dict, seed: int, epochs: int = 0) -> str:
  cap = f'_e{epochs}' if epochs else ''
  if setting['setting'] in ('dense', 'dense_noreg'):
    return f'{model}_{setting["setting"]}_seed{seed}{cap}'
  return f'{model}_{setting["optimizer"]}_lr{setting["table_lr"]:g}_seed{seed}{cap}'


def run_one(model: str, setting: dict, seed: int, epochs: int, args) -> dict:
  from jaxrec.train.loop import train_and_evaluate  # after the device count is set
  workdir = os.path.join(args.root, run_name(model, setting, seed, epochs))
  done, diverged = (os.path.join(workdir, f) for f in ('results.json', 'diverged.json'))
  for path in (done, diverged):
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        r = json.load(f)
      break
  else:
    try:
      r = train_and_evaluate(build_config(model, setting, seed, args, epochs), workdir)
    except FloatingPointError as e:  # a rate too high for this optimizer: a result, kept
      nan = float('nan')
      r = {'valid': {'auc': nan, 'logloss': nan}, 'best_epoch': 0, 'epochs_run': 0,
           'diverged': str(e)}
      with open(diverged, 'w', encoding='utf-8') as f:
        json.dump(r, f)
  row = {'model': model, **setting, 'seed': seed, 'max_epochs': epochs,
         'valid_auc': r['valid']['auc'], 'valid_logloss': r['valid']['logloss'],
         'best_epoch': r['best_epoch'], 'epochs_run': r['epochs_run']}
  print(json.dumps(row), flush=True)
  return row


def _dense(kind: str) -> dict:
  return {'setting': kind, 'optimizer': 'adam', 'table_lr': 0.0}


def _sparse(opt: str, lr: float) -> dict:
  return {'setting': 'sparse', 'optimizer': opt, 'table_lr': lr}


def _run_all(points: list[tuple[str, dict, int, int]], args) -> list[dict]:
  """Runs ``(model, setting, seed, max epochs)`` points, ``--jobs`` at a time (in order of ``points``)."""
  if args.jobs <= 1:
    return [run_one(*pt, args) for pt in points]
  import concurrent.futures
  import multiprocessing
  with concurrent.futures.ProcessPoolExecutor(
      args.jobs, mp_context=multiprocessing.get_context('spawn'),
      initializer=_init_worker, initargs=(args.cpu_devices,)) as pool:
    return list(pool.map(run_one, *zip(*points), [args] * len(points)))


def _init_worker(cpu_devices: int) -> None:
  from jaxrec.sharding import distributed
  distributed.initialize(cpu_devices=cpu_devices)


def study(args) -> tuple[list[dict], list[dict]]:
  """Runs (or reads) every point; returns the sweep's rows and the full-protocol rows."""
  grid = parse_grid(args.grid)
  models = [m for m in args.models.split(',') if m]
  seeds = [int(s) for s in args.seeds.split(',')]
  cap = args.sweep_epochs
  points = []
  for model in models:
    points.append((model, _dense('dense_noreg'), seeds[0], cap))
    points += [(model, _sparse(opt, lr), seeds[0], cap)
               for opt, rates in grid.items() for lr in rates]
  rows = _run_all(points, args)
  finals = []
  for model in models:
    best = {}
    for r in rows:
      ok = r['valid_auc'] == r['valid_auc']  # a diverged run's AUC is nan: never picked
      if r['model'] == model and r['setting'] == 'sparse' and ok and (
          r['optimizer'] not in best or r['valid_auc'] > best[r['optimizer']]['valid_auc']):
        best[r['optimizer']] = r
    picked = (best.values() if args.final == 'all'
              else [max(best.values(), key=lambda r: r['valid_auc'])])
    finals.append((model, _dense('dense_noreg'), seeds[0], 0))  # what the L2 alone is worth
    for seed in seeds:
      finals.append((model, _dense('dense'), seed, 0))
      finals += [(model, _sparse(r['optimizer'], r['table_lr']), seed, 0) for r in picked]
  return rows, _run_all(finals, args)


def seed_table(rows: list[dict]) -> list[str]:
  """Markdown lines: each (model, setting) of the full-protocol runs, mean +- std over its seeds,
  and its difference from dense Adam's mean."""
  import numpy as np
  groups = {}
  for r in rows:
    groups.setdefault((r['model'], r['setting'], r['optimizer'], r['table_lr']), []).append(r)
  lines = ['| model | tables | table lr | seeds | valid AUC (mean +- std) | valid logloss | '
           'AUC - dense Adam | best epochs |', '|---|---|---|---|---|---|---|---|']
  means = {k: np.mean([r['valid_auc'] for r in rs]) for k, rs in groups.items()}
  for (model, setting, opt, lr), rs in groups.items():
    auc = np.array([r['valid_auc'] for r in rs])
    ll = np.array([r['valid_logloss'] for r in rs])
    dense = means.get((model, 'dense', 'adam', 0.0))
    gap = f'{auc.mean() - dense:+.4f}' if dense is not None and setting != 'dense' else '-'
    label = {'dense': 'dense Adam (BARS, L2)', 'dense_noreg': 'dense Adam, sharded, no L2'}.get(
        setting, f'sparse {opt}')
    rate = f'{lr:g}' if setting == 'sparse' else '(config)'
    lines.append(f'| {model} | {label} | {rate} | {",".join(str(r["seed"]) for r in rs)} | '
                 f'{auc.mean():.4f} +- {auc.std():.4f} | {ll.mean():.4f} +- {ll.std():.4f} | '
                 f'{gap} | {",".join(str(r["best_epoch"]) for r in rs)} |')
  return lines


def sweep_table(rows: list[dict]) -> list[str]:
  lines = ['| model | tables | table lr | valid AUC | valid logloss | best epoch / run |',
           '|---|---|---|---|---|---|']
  for r in rows:
    label = 'dense Adam, sharded, no L2' if r['setting'] == 'dense_noreg' else (
        f'sparse {r["optimizer"]}')
    lr = f'{r["table_lr"]:g}' if r['setting'] == 'sparse' else '(config)'
    if r['valid_auc'] != r['valid_auc']:
      lines.append(f'| {r["model"]} | {label} | {lr} | diverged (nan loss) | | |')
      continue
    lines.append(f'| {r["model"]} | {label} | {lr} | {r["valid_auc"]:.4f} | '
                 f'{r["valid_logloss"]:.4f} | {r["best_epoch"]} / {r["epochs_run"]} |')
  return lines


def plot(sweep: list[dict], finals: list[dict], epochs: int, path: str) -> None:
  """Left per model: the sweep (AUC against table rate); the full-protocol means as lines."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  models = list(dict.fromkeys(r['model'] for r in sweep))
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    mine = [r for r in sweep if r['model'] == model]
    for opt in dict.fromkeys(r['optimizer'] for r in mine if r['setting'] == 'sparse'):
      pts = sorted((r['table_lr'], r['valid_auc']) for r in mine
                   if r['setting'] == 'sparse' and r['optimizer'] == opt)
      ax.plot(*zip(*pts), marker='o', label=f'sparse {opt} (sweep)')
    for r in mine:
      if r['setting'] == 'dense_noreg':
        ax.axhline(r['valid_auc'], ls=':', color='gray', label='dense Adam, no L2 (sweep)')
    groups = {}
    for r in finals:
      if r['model'] == model:
        name = {'dense': 'dense Adam (BARS, L2)', 'dense_noreg': 'dense Adam, no L2'}.get(
            r['setting'], f'sparse {r["optimizer"]} {r["table_lr"]:g}')
        groups.setdefault(name, []).append(r['valid_auc'])
    for (name, aucs), ls in zip(groups.items(), ('--', '-.', '-', ':')):
      a = np.array(aucs)
      ax.axhspan(a.mean() - a.std(), a.mean() + a.std(), color='k', alpha=0.08)
      ax.axhline(a.mean(), ls=ls, color='k', label=f'{name}: full runs, mean of {len(a)}')
    ax.set_xscale('log')
    ax.set_xlabel('table learning rate')
    ax.set_ylabel('valid AUC' + (f' (sweep: {epochs} epochs)' if epochs else ''))
    ax.set_title(f'{model} on Frappe')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='dlrm,deepfm')
  p.add_argument('--seeds', default='2021,2022,2023')
  p.add_argument('--grid', default=DEFAULT_GRID, help='optimizer=rate,rate;... (table rates)')
  p.add_argument('--final', choices=('all', 'best'), default='best',
                 help='re-run every optimizer at its best rate on the other seeds, or the best')
  p.add_argument('--plan', default='table_wise', help='config.embedding.plan of the sharded runs')
  p.add_argument('--cpu_devices', type=int, default=2, help='emulated CPU devices (0: as found)')
  p.add_argument('--sweep_epochs', type=int, default=3,
                 help='epochs of each sweep run (0: the full protocol)')
  p.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'frappe'))
  p.add_argument('--root', default='runs/sparse_study')
  p.add_argument('--out', default='', help='write {out}.csv, {out}.png, {out}.md')
  p.add_argument('--jobs', type=int, default=1,
                 help='runs at a time, each in its own process (on one GPU: they share it)')
  p.add_argument('--progress', action='store_true')
  args = p.parse_args(argv)
  if args.jobs > 1:  # every process allocates device memory as it needs it
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  load = os.getloadavg()[0]
  _init_worker(args.cpu_devices)
  import jax
  sweep, finals = study(args)
  if not args.out:
    return
  study_lib.write_csv(f'{args.out}.csv', FIELDS, sweep + finals)
  seeds = [int(s) for s in args.seeds.split(',')]
  plot(sweep, finals, args.sweep_epochs, f'{args.out}.png')
  command = ' '.join(sys.argv[1:] if argv is None else argv)
  cap = f'at most {args.sweep_epochs} epochs' if args.sweep_epochs else 'the full protocol'
  text = [f'Command: `python scripts/sparse_optimizer_study.py {command}`  ',
          f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} '
          f'({jax.default_backend()}: {jax.device_count()} x {jax.devices()[0].device_kind}); '
          f'date {datetime.date.today().isoformat()}; load average at start {load:.1f}  ',
          f'Validation split of Frappe_x1 (57,722 rows). Sharded runs: plan `{args.plan}`, '
          'embedding L2 off; the dense parameters use Adam at the config rate throughout.', '',
          f'Sweep (seed {seeds[0]}, {cap} each):', '', *sweep_table(sweep), '',
          f'Full BARS protocol, seeds {seeds}:', '', *seed_table(finals), '',
          f'![sweep]({os.path.basename(args.out)}.png)', '']
  with open(f'{args.out}.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(text))
  print('\n'.join(text))


if __name__ == '__main__':
  main()
