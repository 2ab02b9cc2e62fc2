"""MoMa against dense, MoT and a mixed-modal expert-choice MoE, each MoE with and without
mixture-of-depths, at matched compute; then the auxiliary routers and causal inference.

    python scripts/moma_study.py --sizes xs --steps 400 --eval_every 40 --aux_steps 80 \
        --root runs/moma_study --out docs/moma_study

Per size of ``jaxrec.train.config.MIXED_MODAL_SIZES`` and seed, every variant of ``--variants``
(``jaxrec.train.config.MOMA_VARIANTS``: dense, mot, moe = 4 modality-blind experts, moma = 2 text
+ 2 image experts, ``*_mod`` = MoD on every second layer at 25%) trains ``--steps`` steps on the
same data with the cosine schedule (``--warmup`` of the steps warm up); experts have the dense
FFN's width at capacity factor 1, so MoE and MoMa cost the dense model's FLOPs per token (plus
routers) and MoD less. An "epoch" is ``--eval_every`` steps of fresh rows and ends with a
validation pass over fixed rows, in the run's training routing (expert choice over the batch).

Then every variant with routers is forked (``configs/moma_aux_router.py``: parameters only, fresh
optimizer) into ``--aux_steps`` steps that train only its auxiliary routers, and its validation
routes causally (``routing_mode='causal_inference'``: each token by the auxiliary routers at 0.5).

FLOPs savings (the MoMa paper's definition): per modality, dense's final validation loss is the
target; a variant's savings factor is dense's training FLOPs over the variant's FLOPs when its
validation curve first reaches the target (``study.steps_to_reach``, interpolated), FLOPs per
step from ``mixed_modal_lm_flops`` (the analytic count, checked against the compiled step in
tests/models/test_moma_lm.py). Not reached: the factor is below dense's FLOPs over the variant's
whole run, reported as ``< x``. Step time: the median of the logged training windows (the first,
holding compilation, left out). Runs are resumable (one directory per run under ``--root``).

Writes ``{out}.csv`` (per run and logged point: losses, parameters, FLOPs per token),
``{out}.png`` (validation loss against training FLOPs per modality) and ``{out}.md`` (per size:
the table and the issue's goals). ``--set key=value`` overrides config fields of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from jaxrec.train import study
from jaxrec.train.config import (MIXED_MODAL_SIZES, MOMA_VARIANTS, aux_router_config,
                                 moma_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = {'text': 'text_loss', 'image': 'image_loss', 'overall': 'loss'}
CAUSAL_GOAL = 0.02  # MoMa's causal-inference loss within 2% of its training-mode loss
FIELDS = ('size', 'variant', 'seed', 'phase', 'params', 'flops_per_token', 'step', 'split',
          'loss', 'text_loss', 'image_loss', 'aux_router_loss', 'aux_router_accuracy')
OWNED = {'num_epochs': '--steps/--aux_steps/--eval_every',
         'early_stop_patience': '--steps/--eval_every',
         'dataset_options.mixed_modal.train_rows': '--eval_every', 'warmup_epochs': '--warmup',
         'log_every_steps': '--log_every', 'seed': '--seeds', 'progress': '--progress',
         'recipe': 'the study (aux phase)', 'learning_rate': '--lr / --aux_lr'}


def routed(variant: str) -> bool:
  kw = MOMA_VARIANTS[variant]
  return kw.get('ffn') == 'moe' or bool(kw.get('mod_fraction'))


def build_config(args, size: str, variant: str, seed: int, aux: bool = False):
  c = aux_router_config(variant, size) if aux else moma_config(variant, size)
  c.data_dir = args.data_dir
  c.dataset_options.mixed_modal.cache_dir = os.path.join(args.root, 'data_cache')
  study.apply_overrides(c, args.set)
  steps = args.aux_steps if aux else args.steps
  c.num_epochs = steps // args.eval_every
  c.early_stop_patience = c.num_epochs
  c.dataset_options.mixed_modal.train_rows = c.batch_size * args.eval_every
  c.warmup_epochs = args.warmup * c.num_epochs
  c.learning_rate = args.aux_lr if aux else args.lr
  c.log_every_steps = args.log_every
  c.seed = seed
  c.progress = args.progress
  return c


def train(args, config, workdir: str, label: str, fork_from: str | None = None) -> dict:
  study.check_same_run(config, workdir)
  done = os.path.exists(os.path.join(workdir, 'results.json'))
  print(f'[{label}] {"read" if done else "training"} {workdir}', flush=True)
  if done:
    with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
      return json.load(f)
  from jaxrec.train.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  resume = os.path.exists(os.path.join(workdir, 'config.json'))
  return train_and_evaluate(config, workdir, fork_from=None if resume else fork_from)


def step_ms(curves: dict, batch_size: int) -> float:
  rates = [r['examples_per_sec'] for r in curves['train'][1:] if r.get('examples_per_sec')]
  return 1000.0 * batch_size / float(np.median(rates)) if rates else float('nan')


def run_variant(args, size: str, variant: str, seed: int, label: str) -> dict:
  name = f'{size}_{variant}_seed{seed}'
  config = build_config(args, size, variant, seed)
  workdir = os.path.join(args.root, name)
  results = train(args, config, workdir, label)
  curves = study.read_curves(workdir)
  expected = [args.eval_every * (e + 1) for e in range(config.num_epochs)]
  if [r['step'] for r in curves['valid']] != expected:
    raise RuntimeError(f'{workdir}: validation steps {[r["step"] for r in curves["valid"]]} are '
                       f'not every {args.eval_every} steps to {args.steps}')
  run = {'size': size, 'variant': variant, 'seed': seed, 'steps': results['steps'],
         **study.lm_size(config, workdir), 'curves': curves, 'valid': results['valid'],
         'step_ms': step_ms(curves, config.batch_size)}
  if routed(variant):
    aux_config = build_config(args, size, variant, seed, aux=True)
    aux_dir = os.path.join(args.root, f'{name}_aux')
    run['aux_valid'] = train(args, aux_config, aux_dir, label + ' aux', fork_from=workdir)['valid']
    run['aux_curves'] = study.read_curves(aux_dir)
  final = {k: run['valid'][k] for k in LOSSES.values()}
  print(json.dumps({'run': name, 'params': run['params'], 'valid': final,
                    'causal_valid': run.get('aux_valid', {}).get('loss')}), flush=True)
  return run


def csv_rows(runs: list[dict]) -> list[dict]:
  rows = []
  for run in runs:
    for phase, key in (('main', 'curves'), ('aux', 'aux_curves')):
      for split, records in run.get(key, {}).items():
        for r in records:
          rows.append({**{k: run[k] for k in ('size', 'variant', 'seed', 'params',
                                               'flops_per_token')},
                       'phase': phase, 'step': r['step'], 'split': split,
                       **{k: r.get(k, '') for k in FIELDS[8:]}})
  return rows


def savings(runs: list[dict], size: str, seed: int) -> dict:
  """variant -> modality -> (factor, reached): dense's training FLOPs over the variant's FLOPs at
  dense's final validation loss; when never reached, the bound dense's FLOPs / the variant's
  whole run's, with reached False."""
  by = {r['variant']: r for r in runs if (r['size'], r['seed']) == (size, seed)}
  dense = by['dense']
  out = {}
  for variant, run in by.items():
    out[variant] = {}
    for modality, key in LOSSES.items():
      target = dense['curves']['valid'][-1][key]
      steps = [r['step'] for r in run['curves']['valid']]
      step = study.steps_to_reach(steps, [r[key] for r in run['curves']['valid']], target)
      dense_flops = dense['steps'] * dense['flops_per_token']
      used = (step if step is not None else run['steps']) * run['flops_per_token']
      out[variant][modality] = (dense_flops / used, step is not None)
  return out


def mean_savings(per_seed: list[dict], variant: str, modality: str) -> tuple[float, bool]:
  factors = [s[variant][modality] for s in per_seed]
  return float(np.mean([f for f, _ in factors])), all(ok for _, ok in factors)


def savings_text(value: tuple[float, bool]) -> str:
  return f'{value[0]:.2f}x' if value[1] else f'< {value[0]:.2f}x (not reached)'


def causal_gap(run: dict) -> float:
  return run['aux_valid']['loss'] / run['valid']['loss'] - 1.0


def tables(runs: list[dict], sizes: list[str], seeds: list[int], variants: list[str]) -> list[str]:
  lines = []
  for size in sizes:
    per_seed = [savings(runs, size, seed) for seed in seeds]
    first = {r['variant']: r for r in runs if (r['size'], r['seed']) == (size, seeds[0])}
    dense_flops = first['dense']['flops_per_token']
    lines += [f'**Size {size}** ({first["dense"]["steps"]} steps, {len(seeds)} seed(s)):', '',
              '| variant | parameters | FLOPs / token (x dense) | final valid loss text / image '
              '/ all | savings text | savings image | savings all | causal-inference loss | '
              'training-mode loss | causal gap | step time (ms) |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for variant in variants:
      rs = [r for r in runs if (r['size'], r['variant']) == (size, variant)]
      v = {k: np.mean([r['valid'][key] for r in rs]) for k, key in LOSSES.items()}
      causal = ec = gap = '-'
      if routed(variant):
        causal = f'{np.mean([r["aux_valid"]["loss"] for r in rs]):.4f}'
        ec = f'{np.mean([r["valid"]["loss"] for r in rs]):.4f}'
        gap = f'{np.mean([causal_gap(r) for r in rs]):+.2%}'
      cells = [savings_text(mean_savings(per_seed, variant, m)) for m in LOSSES]
      lines.append(
          f'| {variant} | {rs[0]["params"]:,} | {rs[0]["flops_per_token"] / dense_flops:.3f} | '
          f'{v["text"]:.4f} / {v["image"]:.4f} / {v["overall"]:.4f} | {" | ".join(cells)} | '
          f'{causal} | {ec} | {gap} | {np.mean([r["step_ms"] for r in rs]):.0f} |')
    lines.append('')
  return lines


def goal_lines(runs: list[dict], size: str, seeds: list[int], variants: list[str]) -> list[str]:
  per_seed = [savings(runs, size, seed) for seed in seeds]
  lines = [f'Goals at the largest size run ({size}):']
  if {'moma', 'moe'} <= set(variants):
    for modality in ('text', 'image'):
      moma, moe = (mean_savings(per_seed, v, modality) for v in ('moma', 'moe'))
      ok = moma[1] and moma[0] > moe[0] and moe[1] and moe[0] > 1.0
      lines.append(f'- {modality}: MoMa {savings_text(moma)} > mixed MoE {savings_text(moe)} > '
                   f'1: {"holds" if ok else "does not hold"}.')
  if 'moma' in variants:
    gaps = [causal_gap(r) for r in runs if (r['size'], r['variant']) == (size, 'moma')]
    ok = abs(float(np.mean(gaps))) <= CAUSAL_GOAL
    lines.append(f'- MoMa causal-inference loss within {CAUSAL_GOAL:.0%} of the training-mode '
                 f'loss: {np.mean(gaps):+.2%}, {"holds" if ok else "does not hold"}.')
  for base in ('moma', 'moe'):
    if {base, f'{base}_mod'} <= set(variants):
      parts = []
      for v in (base, f'{base}_mod'):
        s = mean_savings(per_seed, v, 'overall')
        gap = np.mean([causal_gap(r) for r in runs if (r['size'], r['variant']) == (size, v)])
        parts.append(f'{v}: savings {savings_text(s)}, causal gap {gap:+.2%}')
      lines.append(f'- MoD on {base}: ' + '; '.join(parts) + '.')
  return lines + ['']


def plot(runs: list[dict], sizes: list[str], variants: list[str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(sizes), len(LOSSES), figsize=(5 * len(LOSSES), 3.6 * len(sizes)),
                           squeeze=False)
  for row, size in zip(axes, sizes):
    for ax, (modality, key) in zip(row, LOSSES.items()):
      for i, variant in enumerate(variants):
        rs = [r for r in runs if (r['size'], r['variant']) == (size, variant)]
        steps = np.array([r['step'] for r in rs[0]['curves']['valid']], float)
        loss = np.mean([[r[key] for r in run['curves']['valid']] for run in rs], axis=0)
        flops = steps * rs[0]['flops_per_token'] * 3  # forward + backward ~ 3 forward, per token
        ax.plot(flops, loss, 'o-', color=f'C{i}', ms=3, label=variant)
        if variant == 'dense':
          ax.axhline(loss[-1], color=f'C{i}', ls=':', lw=0.8)
      ax.set_title(f'size {size}: {modality} tokens (validation)')
      ax.set_xlabel('training FLOPs per token of the batch x steps')
      ax.set_ylabel('loss (nats / token)')
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def check_args(args) -> tuple[list[str], list[int], list[str]]:
  sizes, variants = args.sizes.split(','), args.variants.split(',')
  unknown = [s for s in sizes if s not in MIXED_MODAL_SIZES]
  if unknown:
    raise SystemExit(f'--sizes: unknown {unknown}; known: {list(MIXED_MODAL_SIZES)}')
  unknown = [v for v in variants if v not in MOMA_VARIANTS]
  if unknown or 'dense' not in variants:
    raise SystemExit(f'--variants: unknown {unknown} (known: {list(MOMA_VARIANTS)}); dense, the '
                     'baseline of the savings, must be one of them')
  for name, steps in (('--steps', args.steps), ('--aux_steps', args.aux_steps)):
    if args.eval_every < 1 or steps < args.eval_every or steps % args.eval_every:
      raise SystemExit(f'{name} ({steps}) must be a positive multiple of --eval_every '
                       f'({args.eval_every}): every epoch of eval_every steps ends in validation')
  if not 0.0 <= args.warmup < 1.0 or args.log_every < 1:
    raise SystemExit('--warmup must be in [0, 1) and --log_every >= 1')
  for item in args.set:
    key = item.partition('=')[0]
    if key in OWNED:
      raise SystemExit(f'--set {key}: set by {OWNED[key]}')
  return sizes, [int(s) for s in args.seeds.split(',')], variants


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--sizes', default='xs', help=f'keys of {list(MIXED_MODAL_SIZES)}')
  p.add_argument('--variants', default=','.join(MOMA_VARIANTS),
                 help=f'keys of {list(MOMA_VARIANTS)} (dense required)')
  p.add_argument('--steps', type=int, default=400, help='training steps of every main run')
  p.add_argument('--aux_steps', type=int, default=80, help='auxiliary-router training steps')
  p.add_argument('--eval_every', type=int, default=40, help='steps between validations')
  p.add_argument('--seeds', default='2021')
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--aux_lr', type=float, default=1e-3)
  p.add_argument('--warmup', type=float, default=0.05, help='fraction of steps warming up')
  p.add_argument('--log_every', type=int, default=10, help='steps per logged training loss')
  p.add_argument('--data_dir', default=os.path.normpath(os.path.join(REPO, '..', 'shared', 'data')))
  p.add_argument('--set', action='append', default=[], help='config override key=value')
  p.add_argument('--root', default='runs/moma_study')
  p.add_argument('--out', default='docs/moma_study', help='write {out}.csv, {out}.png, {out}.md')
  p.add_argument('--progress', action='store_true')
  args = p.parse_args(argv)
  sizes, seeds, variants = check_args(args)
  load = os.getloadavg()[0]
  jobs = [(size, variant, seed) for size in sizes for seed in seeds for variant in variants]
  runs = [run_variant(args, *job, f'{i + 1}/{len(jobs)} {" ".join(map(str, job))}')
          for i, job in enumerate(jobs)]
  study.write_csv(f'{args.out}.csv', FIELDS, csv_rows(runs))
  plot(runs, sizes, variants, f'{args.out}.png')
  largest = max(sizes, key=list(MIXED_MODAL_SIZES).index)
  command = ' '.join(sys.argv[1:] if argv is None else argv)
  text = [f'Command: `python scripts/moma_study.py {command}`  ', study.machine_line(load),
          f'Every variant trains {args.steps} steps (cosine schedule, validation every '
          f'{args.eval_every} steps on fixed rows, in the training routing); the routed ones then '
          f'train their auxiliary routers {args.aux_steps} steps and are validated with causal '
          'routing. Savings: dense\'s training FLOPs over the variant\'s at dense\'s final '
          'validation loss (interpolated on the validation curve). Causal gap: causal-inference '
          'loss over training-mode (expert-choice) loss of the same weights, minus 1.',
          '', *tables(runs, sizes, seeds, variants), *goal_lines(runs, largest, seeds, variants),
          f'![curves]({os.path.basename(args.out)}.png)', '']
  with open(f'{args.out}.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(text))
  print('\n'.join(text))


if __name__ == '__main__':
  from jaxrec.train.cli import run_argparse  # pylint: disable=g-import-not-at-top
  run_argparse(main)  # a config or run directory to fix: its message alone, status 1
