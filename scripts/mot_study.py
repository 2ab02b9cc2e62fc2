"""Mixture-of-Transformers against a dense decoder, step-matched, at several sizes.

    python scripts/mot_study.py --sizes s,m,l --steps 2000 --eval_every 100 --seeds 2021 \
        --root runs/mot_study --out docs/mot_study

Per size of ``jaxrec.train.config.MIXED_MODAL_SIZES`` and seed, ``configs/dense_mixed_modal.py``
(``untie='none'``) and ``configs/mot_mixed_modal.py`` (``untie='mot'``) train the same number of
steps (``--steps``) on the same data (the mixed-modal rows, seeded by the run's seed) with the
cosine schedule over the whole run (``--warmup`` of its steps warm up). An "epoch" is
``--eval_every`` steps (``train_rows = batch_size * eval_every``; train rows are drawn afresh
every epoch) and every epoch ends with a validation pass over the fixed validation rows; nothing
stops early. Runs are resumable: one directory per (size, model, seed) under ``--root``; a
finished run is read, a killed one continues, one of other settings is refused (use another root).

Steps to reach (the MoT paper's measure, arXiv 2411.04996): per modality (text tokens, image
tokens, all), dense's final loss is the target and MoT's step is the first point of its curve at
or below it, linearly interpolated between the two points that bracket the crossing
(``study.steps_to_reach``); the fraction is that step over dense's steps. On the validation
curve (one point per epoch) and on the training curve (the logged means of every
``--log_every`` steps on fresh rows, smoothed by a trailing mean over ``--smooth`` of the run's
steps, ``study.trailing_mean``: the paper reports training-loss fractions). MoT never reaching it
is reported with its final gap. Means over seeds.

Writes ``{out}.csv`` (per run and logged step: train and valid losses, parameters, forward FLOPs
per token), ``{out}.png`` (loss curves per size and modality) and ``{out}.md`` (per size: final
losses, steps fractions, and the issue's goal at the largest size: MoT at dense's final validation
loss within 70% of the steps for image tokens and 85% for text). ``--set key=value`` overrides
config fields of every run (``--set model_kwargs.num_layers=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from jaxrec.train import study
from jaxrec.train.config import MIXED_MODAL_SIZES, mixed_modal_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {'dense': 'none', 'mot': 'mot'}
LOSSES = {'text': 'text_loss', 'image': 'image_loss', 'overall': 'loss'}
GOALS = {'image': 0.70, 'text': 0.85}  # the issue's: MoT's step fraction at dense's final loss
FIELDS = ('size', 'model', 'seed', 'params', 'non_embedding_params', 'flops_per_token', 'step',
          'split', 'loss', 'text_loss', 'image_loss')
# Set by the study's flags; a --set of one is refused.
OWNED = {'num_epochs': '--steps/--eval_every', 'early_stop_patience': '--steps/--eval_every',
         'dataset_options.mixed_modal.train_rows': '--eval_every', 'warmup_epochs': '--warmup',
         'log_every_steps': '--log_every', 'seed': '--seeds', 'progress': '--progress',
         'model_kwargs.untie': 'the study (dense and mot)'}


def build_config(args, size: str, model: str, seed: int):
  c = mixed_modal_config(MODELS[model], size)
  c.data_dir = args.data_dir
  c.dataset_options.mixed_modal.cache_dir = os.path.join(args.root, 'data_cache')
  study.apply_overrides(c, args.set)
  c.num_epochs = args.steps // args.eval_every
  c.early_stop_patience = c.num_epochs
  c.dataset_options.mixed_modal.train_rows = c.batch_size * args.eval_every
  c.warmup_epochs = args.warmup * c.num_epochs  # the loop counts warm-up in epochs
  c.log_every_steps = args.log_every
  c.seed = seed
  c.progress = args.progress
  return c


def run_one(args, size: str, model: str, seed: int, index: str) -> dict:
  workdir = os.path.join(args.root, f'{size}_{model}_seed{seed}')
  config = build_config(args, size, model, seed)
  study.check_same_run(config, workdir)
  done = os.path.exists(os.path.join(workdir, 'results.json'))
  print(f'[{index}] {size} {model} seed {seed}: {"read" if done else "training"} {workdir}',
        flush=True)
  results = study.run_or_read(config, workdir)
  curves = study.read_curves(workdir)
  if [r['step'] for r in curves['valid']] != [args.eval_every * (e + 1)
                                              for e in range(config.num_epochs)]:
    raise RuntimeError(f'{workdir}: validation steps {[r["step"] for r in curves["valid"]]} are '
                       f'not every {args.eval_every} steps to {args.steps}')
  run = {'size': size, 'model': model, 'seed': seed, 'steps': results['steps'],
         **study.lm_size(config, workdir), 'curves': curves}
  final = curves['valid'][-1]
  print(json.dumps({k: run[k] for k in ('size', 'model', 'seed', 'steps', 'params')}
                   | {f'valid_{k}': final[k] for k in LOSSES.values()}), flush=True)
  return run


def csv_rows(runs: list[dict]) -> list[dict]:
  return [{**{k: run[k] for k in FIELDS[:6]}, 'step': r['step'], 'split': split,
           **{k: r[k] for k in LOSSES.values()}}
          for run in runs for split in ('train', 'valid') for r in run['curves'][split]]


def curve(run: dict, split: str, key: str, window: float) -> tuple[list, list]:
  """(steps, losses) of one run; the training curve smoothed over ``window`` steps."""
  steps = [r['step'] for r in run['curves'][split]]
  losses = [r[key] for r in run['curves'][split]]
  if split == 'train':
    losses = study.trailing_mean(steps, losses, window)
  return steps, losses


def reach(runs: list[dict], window: float) -> dict:
  """(size, modality, split) -> per seed: dense's final loss, MoT's, and MoT's step fraction at
  dense's final loss (None when never reached)."""
  out = {}
  for dense in (r for r in runs if r['model'] == 'dense'):
    mot = next(r for r in runs if r['model'] == 'mot' and (r['size'], r['seed']) == (
        dense['size'], dense['seed']))
    for modality, key in LOSSES.items():
      for split in ('valid', 'train'):
        d_steps, d_loss = curve(dense, split, key, window)
        m_steps, m_loss = curve(mot, split, key, window)
        step = study.steps_to_reach(m_steps, m_loss, d_loss[-1])
        out.setdefault((dense['size'], modality, split), []).append({
            'dense': d_loss[-1], 'mot': m_loss[-1],
            'fraction': None if step is None else step / dense['steps']})
  return out


def fraction_text(per_seed: list[dict]) -> str:
  fractions = [s['fraction'] for s in per_seed if s['fraction'] is not None]
  if len(fractions) == len(per_seed):
    return f'{np.mean(fractions):.1%}'
  gap = np.mean([s['mot'] - s['dense'] for s in per_seed if s['fraction'] is None])
  missed = len(per_seed) - len(fractions)
  return f'not reached ({missed} of {len(per_seed)} seeds; final gap {gap:+.4f})'


def tables(runs: list[dict], reached: dict, sizes: list[str]) -> list[str]:
  lines = []
  for size in sizes:
    rs = {m: next(r for r in runs if (r['size'], r['model']) == (size, m)) for m in MODELS}
    seeds = len({r['seed'] for r in runs if r['size'] == size})
    lines += [f'**Size {size}**: dense {rs["dense"]["params"]:,} parameters '
              f'({rs["dense"]["non_embedding_params"]:,} non-embedding), MoT '
              f'{rs["mot"]["params"]:,} ({rs["mot"]["non_embedding_params"]:,}); '
              f'{rs["dense"]["flops_per_token"]:,.0f} forward FLOPs per token (both); '
              f'{rs["dense"]["steps"]} steps; {seeds} seed(s).', '',
              '| tokens | dense final valid loss | MoT final valid loss | MoT steps to dense '
              'final (valid) | MoT steps to dense final (train, smoothed) |',
              '|---|---|---|---|---|']
    for modality in LOSSES:
      v, t = reached[(size, modality, 'valid')], reached[(size, modality, 'train')]
      lines.append(f'| {modality} | {np.mean([s["dense"] for s in v]):.4f} | '
                   f'{np.mean([s["mot"] for s in v]):.4f} | {fraction_text(v)} | '
                   f'{fraction_text(t)} |')
    lines.append('')
  return lines


def goal_line(reached: dict, size: str) -> str:
  parts, ok = [], True
  for modality, limit in GOALS.items():
    per_seed = reached[(size, modality, 'valid')]
    fractions = [s['fraction'] for s in per_seed]
    met = None not in fractions and np.mean(fractions) <= limit
    ok &= met
    parts.append(f'{modality} {fraction_text(per_seed)} (goal <= {limit:.0%}: '
                 f'{"met" if met else "not met"})')
  return (f'Goal at the largest size run ({size}): MoT reaches dense\'s final validation loss '
          f'in {"; ".join(parts)}. The goal {"holds" if ok else "does not hold"}.')


def plot(runs: list[dict], sizes: list[str], window: float, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(sizes), len(LOSSES), figsize=(5 * len(LOSSES), 3.6 * len(sizes)),
                           squeeze=False)
  for row, size in zip(axes, sizes):
    for ax, (modality, key) in zip(row, LOSSES.items()):
      for color, model in zip(('C0', 'C1'), MODELS):
        rs = [r for r in runs if (r['size'], r['model']) == (size, model)]
        for split in ('train', 'valid'):  # mean over seeds (their steps are the same)
          steps = curve(rs[0], split, key, window)[0]
          loss = np.mean([curve(r, split, key, window)[1] for r in rs], axis=0)
          if split == 'train':
            ax.plot(steps, loss, color=color, lw=0.8, alpha=0.6, label=f'{model} train')
          else:
            ax.plot(steps, loss, 'o-', color=color, ms=4, label=f'{model} valid')
            if model == 'dense':
              ax.axhline(loss[-1], color=color, ls=':', lw=0.8)
      ax.set_title(f'size {size}: {modality} tokens')
      ax.set_xlabel('step')
      ax.set_ylabel('loss (nats / token)')
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def check_args(args) -> None:
  sizes = args.sizes.split(',')
  unknown = [s for s in sizes if s not in MIXED_MODAL_SIZES]
  if unknown or not sizes:
    raise SystemExit(f'--sizes: unknown {unknown}; known: {list(MIXED_MODAL_SIZES)}')
  if args.eval_every < 1 or args.steps < args.eval_every or args.steps % args.eval_every:
    raise SystemExit(f'--steps ({args.steps}) must be a positive multiple of --eval_every '
                     f'({args.eval_every}): every epoch of eval_every steps ends in validation')
  if not 0.0 <= args.warmup < 1.0 or not 0.0 <= args.smooth < 1.0 or args.log_every < 1:
    raise SystemExit('--warmup and --smooth must be in [0, 1), --log_every >= 1')
  for item in args.set:
    key = item.partition('=')[0]
    if key in OWNED:
      raise SystemExit(f'--set {key}: set by {OWNED[key]}')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--sizes', default='s,m,l', help=f'keys of {list(MIXED_MODAL_SIZES)}')
  p.add_argument('--steps', type=int, default=2000, help='training steps of every run')
  p.add_argument('--eval_every', type=int, default=100, help='steps between validations')
  p.add_argument('--seeds', default='2021')
  p.add_argument('--warmup', type=float, default=0.05, help='fraction of steps warming up')
  p.add_argument('--log_every', type=int, default=5, help='steps per logged training loss')
  p.add_argument('--smooth', type=float, default=0.05,
                 help='trailing window of the training curve, as a fraction of --steps')
  p.add_argument('--data_dir', default=os.path.normpath(os.path.join(REPO, '..', 'shared', 'data')))
  p.add_argument('--set', action='append', default=[], help='config override key=value')
  p.add_argument('--root', default='runs/mot_study')
  p.add_argument('--out', default='docs/mot_study', help='write {out}.csv, {out}.png, {out}.md')
  p.add_argument('--progress', action='store_true')
  args = p.parse_args(argv)
  check_args(args)
  load = os.getloadavg()[0]
  sizes, seeds = args.sizes.split(','), [int(s) for s in args.seeds.split(',')]
  jobs = [(size, model, seed) for size in sizes for seed in seeds for model in MODELS]
  runs = [run_one(args, *job, f'{i + 1}/{len(jobs)}') for i, job in enumerate(jobs)]
  window = args.smooth * args.steps
  study.write_csv(f'{args.out}.csv', FIELDS, csv_rows(runs))
  plot(runs, sizes, window, f'{args.out}.png')
  reached = reach(runs, window)
  largest = max(sizes, key=list(MIXED_MODAL_SIZES).index)
  command = ' '.join(sys.argv[1:] if argv is None else argv)
  text = [f'Command: `python scripts/mot_study.py {command}`  ', study.machine_line(load),
          f'Dense and MoT step-matched ({args.steps} steps, cosine schedule, validation every '
          f'{args.eval_every} steps on fixed rows). "Steps to dense final": the fraction of '
          'dense\'s steps at which MoT\'s loss first reaches dense\'s final loss, linearly '
          'interpolated between bracketing points; "train": on the training loss (fresh rows, '
          f'means over {args.log_every}-step windows) smoothed by a trailing mean of {window:g} '
          'steps.',
          '', *tables(runs, reached, sizes), goal_line(reached, largest), '',
          f'![curves]({os.path.basename(args.out)}.png)', '']
  with open(f'{args.out}.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(text))
  print('\n'.join(text))


if __name__ == '__main__':
  from jaxrec.train.cli import run_argparse  # pylint: disable=g-import-not-at-top
  run_argparse(main)  # a config or run directory to fix: its message alone, status 1
