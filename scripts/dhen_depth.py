"""DHEN's depth curve: NE of DHEN at several depths against its AdvancedDLRM baseline.

    python scripts/dhen_depth.py --datasets frappe,synthetic --depths 1,2,4,8 \
        --seeds 2021,2022,2023 --frappe_dir ../shared/data/frappe --root runs/dhen_depth \
        --out docs/dhen_depth

The DHEN paper (arXiv 2203.11014) reports normalized-entropy gains over AdvancedDLRM that grow with
depth: -0.176%, -0.255%, -0.273% at 2, 4 and 8 layers. Here, per dataset and seed:

* ``baseline`` (AdvancedDLRM): one interaction layer of the AdvancedDLRM module alone
  (``layers=(('dot',),)``: pairwise dot products, then a linear projection to the layer's
  embeddings), under the same top MLP;
* ``dhen_L``: ``L`` DHEN layers alternating the two layers of ``configs/dhen_frappe.py``
  (dot + self-attention + linear, then dot + DCN cross + linear), ensembles concatenated, with
  the projection shortcut and LayerNorm of every DHEN layer.

Frappe uses ``configs/dhen_frappe.py`` (BARS protocol); the synthetic data uses
``configs/default.py``'s planted-teacher generator (orders 1-4) with DHEN at embedding dim 16.
Both report the validation NE of the best epoch; the NE change of ``dhen_L`` is
``100 (NE_L / NE_baseline - 1)`` per seed, then mean +- std over seeds. Runs are resumable.
Writes ``{out}.csv`` (one row per run), ``{out}.png`` (NE change against depth per dataset) and
``{out}.md``. ``--set key=value`` overrides config fields of every run (e.g. ``--set
num_epochs=2``); ``--set_frappe`` / ``--set_synthetic`` of one dataset's runs.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

import numpy as np

from jaxrec.train import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_A = ('dot', 'attention', 'linear')
LAYER_B = ('dot', 'cross', 'linear')
FIELDS = ('dataset', 'model', 'depth', 'seed', 'valid_ne', 'valid_auc', 'valid_logloss',
          'best_epoch', 'epochs_run', 'forward_flops')


def layers(depth: int) -> tuple:
  """``depth`` DHEN layers, A and B alternating; depth 0 is the AdvancedDLRM baseline."""
  if depth == 0:
    return (('dot',),)
  return tuple(LAYER_A if i % 2 == 0 else LAYER_B for i in range(depth))


def base_config(dataset: str, args):
  if dataset == 'frappe':
    c = runpy.run_path(os.path.join(REPO, 'configs', 'dhen_frappe.py'))['get_config']()
    c.data_dir = args.frappe_dir
    overrides = args.set_frappe
  elif dataset == 'synthetic':
    c = runpy.run_path(os.path.join(REPO, 'configs', 'default.py'))['get_config']()
    frappe = runpy.run_path(os.path.join(REPO, 'configs', 'dhen_frappe.py'))['get_config']()
    c.model = 'dhen'
    c.model_kwargs = frappe.model_kwargs
    c.embedding_dim = 16
    overrides = args.set_synthetic
  else:
    raise SystemExit(f'--datasets: unknown {dataset!r}; choose from frappe, synthetic')
  study.apply_overrides(c, list(args.set) + list(overrides))
  c.progress = args.progress
  return c


def run_one(args, dataset: str, depth: int, seed: int) -> dict:
  from jaxrec.data.schema import schema_from_dict  # pylint: disable=g-import-not-at-top
  from jaxrec.models.flops import per_example_flops  # pylint: disable=g-import-not-at-top
  from jaxrec.train.evaluation import load_dataset_state  # pylint: disable=g-import-not-at-top
  from jaxrec.train.loop import make_model  # pylint: disable=g-import-not-at-top
  c = base_config(dataset, args)
  c.model_kwargs.layers = layers(depth)
  c.seed = seed
  name = 'baseline' if depth == 0 else f'dhen_{depth}'
  workdir = os.path.join(args.root, f'{dataset}_{name}_seed{seed}')
  results = study.run_or_read(c, workdir)
  schema = schema_from_dict(load_dataset_state(workdir)['schema'])  # as the run recorded it
  row = {'dataset': dataset, 'model': name, 'depth': depth, 'seed': seed,
         'valid_ne': results['valid']['ne'], 'valid_auc': results['valid']['auc'],
         'valid_logloss': results['valid']['logloss'], 'best_epoch': results['best_epoch'],
         'epochs_run': results['epochs_run'],
         'forward_flops': per_example_flops(make_model(c, schema))}
  print(json.dumps(row), flush=True)
  return row


def ne_changes(rows: list[dict]) -> dict:
  """(dataset, depth) -> NE change in % of the same seed's baseline, per seed."""
  base = {(r['dataset'], r['seed']): r['valid_ne'] for r in rows if r['depth'] == 0}
  out = {}
  for r in rows:
    if r['depth'] and (r['dataset'], r['seed']) in base:
      out.setdefault((r['dataset'], r['depth']), []).append(
          100.0 * (r['valid_ne'] / base[(r['dataset'], r['seed'])] - 1.0))
  return {k: np.array(v) for k, v in sorted(out.items())}


def table(rows: list[dict], changes: dict) -> list[str]:
  lines = ['| dataset | model | layers | forward FLOPs / example | valid NE | NE change vs baseline '
           '(%) | seeds |', '|---|---|---|---|---|---|---|']
  for dataset in sorted({r['dataset'] for r in rows}):
    for depth in sorted({r['depth'] for r in rows if r['dataset'] == dataset}):
      rs = [r for r in rows if r['dataset'] == dataset and r['depth'] == depth]
      ne = np.array([r['valid_ne'] for r in rs])
      ch = changes.get((dataset, depth))
      ch_s = '-' if ch is None else f'{ch.mean():+.3f} +- {ch.std():.3f}'
      lines.append(f'| {dataset} | {rs[0]["model"]} | {depth or 1} | {rs[0]["forward_flops"]:,} '
                   f'| {ne.mean():.5f} +- {ne.std():.5f} | {ch_s} | {len(rs)} |')
  return lines


def plot(changes: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for dataset in sorted({d for d, _ in changes}):
    depths = sorted(k for d, k in changes if d == dataset)
    mean = [changes[(dataset, k)].mean() for k in depths]
    std = [changes[(dataset, k)].std() for k in depths]
    ax.errorbar(depths, mean, yerr=std, marker='o', capsize=3, label=dataset)
  ax.plot([2, 4, 8], [-0.176, -0.255, -0.273], 'k--', marker='x', label='paper (production data)')
  ax.axhline(0.0, color='grey', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('DHEN layers')
  ax.set_ylabel('NE change vs AdvancedDLRM (%)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--datasets', default='frappe,synthetic')
  p.add_argument('--depths', default='1,2,4,8')
  p.add_argument('--seeds', default='2021,2022,2023')
  p.add_argument('--frappe_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'frappe'))
  p.add_argument('--set', action='append', default=[], help='config override key=value')
  p.add_argument('--set_frappe', action='append', default=[])
  p.add_argument('--set_synthetic', action='append', default=[])
  p.add_argument('--root', default='runs/dhen_depth')
  p.add_argument('--out', default='')
  p.add_argument('--progress', action='store_true')
  args = p.parse_args(argv)
  load = os.getloadavg()[0]
  depths = [0] + [int(d) for d in args.depths.split(',')]
  rows = [run_one(args, dataset, depth, int(seed))
          for dataset in args.datasets.split(',') for seed in args.seeds.split(',')
          for depth in depths]
  if not args.out:
    return
  study.write_csv(f'{args.out}.csv', FIELDS, rows)
  changes = ne_changes(rows)
  plot(changes, f'{args.out}.png')
  command = ' '.join(sys.argv[1:] if argv is None else argv)
  text = [f'Command: `python scripts/dhen_depth.py {command}`  ',
          study.machine_line(load),
          'Validation NE of the best epoch; NE change = 100 (NE_L / NE_baseline - 1), same seed. '
          'Paper (production data): -0.176 / -0.255 / -0.273 % at 2 / 4 / 8 layers.', '',
          *table(rows, changes), '', f'![depth]({os.path.basename(args.out)}.png)', '']
  with open(f'{args.out}.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(text))
  print('\n'.join(text))


if __name__ == '__main__':
  main()
