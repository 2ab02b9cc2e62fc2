"""Frappe_x1 results table: each model x seeds with its BARS config, mean +- std of validation.

    python scripts/frappe_results.py --models lr,fm,deepfm,dlrm,dcnv2 --seeds 2021,2022,2023 \
        --data_dir ../shared/data/frappe --root runs/frappe --out docs/frappe_results.md

Runs are resumable: a finished run (``results.json`` present) is read, not retrained, and an
interrupted one resumes from its latest checkpoint. Writes ``<root>/results.csv`` (one row per run)
and a Markdown table (mean +- std per model beside the BARS leaderboard figure).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import runpy
import sys

import jax
import numpy as np

from jaxrec.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# BARS Frappe_x1 leaderboard (test AUC, logloss), from ../shared/REFERENCES.md section 1-3.
BARS = {'lr': (0.9356, 0.3076), 'fm': (0.9671, 0.2065), 'deepfm': (0.9842, 0.1482),
        'dlrm': (0.9840, 0.1444), 'dcnv2': (0.9845, 0.1491), 'wukong': (0.9868, None),
        'dhen': (None, None)}


def run_one(model: str, seed: int, data_dir: str, root: str, progress: bool) -> dict:
  workdir = os.path.join(root, f'{model}_seed{seed}')
  done = os.path.join(workdir, 'results.json')
  if os.path.exists(done):
    with open(done, encoding='utf-8') as f:
      return json.load(f)
  config = runpy.run_path(os.path.join(REPO, 'configs', f'{model}_frappe.py'))['get_config']()
  config.seed = seed
  config.data_dir = data_dir
  config.progress = progress
  return train_and_evaluate(config, workdir)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='lr,fm,deepfm,dlrm,dcnv2')
  p.add_argument('--seeds', default='2021,2022,2023')
  p.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'frappe'))
  p.add_argument('--root', default='runs/frappe')
  p.add_argument('--out', default='', help='write the Markdown table here')
  p.add_argument('--progress', action='store_true')
  args = p.parse_args(argv)
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  seeds = [int(s) for s in args.seeds.split(',')]
  rows = []
  for model in models:
    for seed in seeds:
      r = run_one(model, seed, args.data_dir, args.root, args.progress)
      rows.append({'model': model, 'seed': seed, 'best_epoch': r['best_epoch'],
                   'epochs_run': r['epochs_run'], 'valid_auc': r['valid']['auc'],
                   'valid_logloss': r['valid']['logloss'], 'valid_ne': r['valid']['ne']})
      print(json.dumps(rows[-1]), flush=True)
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, 'results.csv'), 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = ['| model | valid AUC (mean +- std) | valid logloss (mean +- std) | epochs (best) | '
           'BARS AUC | BARS logloss | AUC - BARS |', '|---|---|---|---|---|---|---|']
  for model in models:
    rs = [r for r in rows if r['model'] == model]
    auc = np.array([r['valid_auc'] for r in rs])
    ll = np.array([r['valid_logloss'] for r in rs])
    bars_auc, bars_ll = BARS.get(model, (None, None))
    gap = f'{auc.mean() - bars_auc:+.4f}' if bars_auc else '-'
    lines.append(f'| {model} | {auc.mean():.4f} +- {auc.std():.4f} | {ll.mean():.4f} +- '
                 f'{ll.std():.4f} | {",".join(str(r["best_epoch"]) for r in rs)} | '
                 f'{bars_auc or "-"} | {bars_ll or "-"} | {gap} |')
  table = '\n'.join(lines)
  print(table)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(f'Command: `python scripts/frappe_results.py {" ".join(sys.argv[1:])}`  \n'
              f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} '
              f'({jax.default_backend()}); date {datetime.date.today().isoformat()}  \n'
              f'Seeds {seeds}; validation split of Frappe_x1 (57,722 rows; the test split is not '
              f'available here). BARS figures are single-run test AUC/logloss.\n\n{table}\n')


if __name__ == '__main__':
  main()
