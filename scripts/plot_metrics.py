"""Plot metrics of one or more runs from their ``metrics.jsonl`` files.

    python scripts/plot_metrics.py runs/fm runs/dcnv2 --metric valid/auc --out auc.png
    python scripts/plot_metrics.py runs/dcnv2 --metric train/loss --metric valid/logloss --out l.png

``--metric`` is ``<split>/<name>`` (split: train, valid, final); the x axis is the training step
(or ``--x epoch`` for validation records). One subplot per metric, one line per run.
"""

import argparse
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxrec.train.writers import read_metrics  # pylint: disable=wrong-import-position


def series(records: list[dict], metric: str, x: str) -> tuple[list[float], list[float]]:
  split, _, name = metric.partition('/')
  if not name:
    raise ValueError(f'--metric must be <split>/<name>, e.g. valid/auc; got {metric!r}')
  pts = [(r[x], r[name]) for r in records if r.get('split') == split and name in r and x in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot(run_dirs: list[str], metrics: list[str], out: str, x: str = 'step') -> None:
  fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 3.2 * len(metrics)), squeeze=False)
  for run in run_dirs:
    path = os.path.join(run, 'metrics.jsonl')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: is {run!r} a run directory?')
    records = read_metrics(path)
    for ax, metric in zip(axes[:, 0], metrics):
      xs, ys = series(records, metric, x)
      if not xs:
        raise ValueError(f'{path}: no records with {metric!r} and x={x!r}')
      ax.plot(xs, ys, marker='.' if len(xs) < 50 else None, label=os.path.basename(run.rstrip('/')))
  for ax, metric in zip(axes[:, 0], metrics):
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('runs', nargs='+', help='run directories written by scripts/train.py')
  p.add_argument('--metric', action='append', default=None, help='<split>/<name>; repeatable')
  p.add_argument('--x', default='step', choices=['step', 'epoch'])
  p.add_argument('--out', required=True, help='PNG path')
  args = p.parse_args(argv)
  plot(args.runs, args.metric or ['valid/auc'], args.out, args.x)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
