"""Train-step throughput per model: examples/s, median over timed steps after warm-up.

    python scripts/bench_train.py [--models lr,fm,deepfm,dlrm,dcnv2,wukong,dhen]
        [--batch_size 4096] [--data_dir ../shared/data/frappe] [--steps 30] [--warmup 5]
        [--out docs/bench_train.md]

Each model uses its configs/<model>_frappe.py hyperparameters and real Frappe batches (the
training step is the trainer's own jitted step with the state donated). Prints a Markdown table and
optionally writes it with the command, machine and date.
"""

import argparse
import datetime
import os
import platform
import runpy
import statistics
import sys
import time

import jax
import numpy as np

from jaxrec.data.datasets import load_dataset
from jaxrec.train import state as state_lib
from jaxrec.train.loop import make_model, optim_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_model(name: str, data, batch_size: int, steps: int, warmup: int) -> dict:
  config = runpy.run_path(os.path.join(REPO, 'configs', f'{name}_frappe.py'))['get_config']()
  model = make_model(config, data.schema)
  ocfg = optim_config(config)
  tx = state_lib.make_optimizer(ocfg)
  batches = list(data.splits['train'].batches(batch_size, shuffle=True, seed=0))[:8]
  state, mask = state_lib.create_train_state(model, batches[0], tx, seed=0)
  step = jax.jit(state_lib.make_train_step(model, tx, mask, ocfg), donate_argnums=0)
  dev_batches = [jax.device_put(b) for b in batches]
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, m = step(state, dev_batches[i % len(dev_batches)])
    jax.block_until_ready(m['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  return {'model': name, 'params': params, 'step_ms': med * 1e3,
          'examples_per_sec': batch_size / med}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='lr,fm,deepfm,dlrm,dcnv2,wukong,dhen')
  p.add_argument('--batch_size', type=int, default=4096)
  p.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'frappe'))
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--warmup', type=int, default=5)
  p.add_argument('--out', default='', help='also write the table (Markdown) to this file')
  args = p.parse_args(argv)
  data = load_dataset('frappe', args.data_dir)
  rows = [bench_model(m.strip(), data, args.batch_size, args.steps, args.warmup)
          for m in args.models.split(',') if m.strip()]
  lines = ['| model | params | step (ms, median) | examples/s |', '|---|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['model']} | {r['params']:,} | {r['step_ms']:.2f} | "
                 f"{r['examples_per_sec']:,.0f} |")
  table = '\n'.join(lines)
  print(table)
  if args.out:
    header = (f'Command: `python scripts/bench_train.py {" ".join(sys.argv[1:])}`  \n'
              f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
              f'jax {jax.__version__} on {jax.default_backend()}  \n'
              f'Date: {datetime.date.today().isoformat()}; batch {args.batch_size}, median of '
              f'{args.steps} steps after {args.warmup} warm-up steps, Frappe train batches.\n\n')
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(header + table + '\n')


if __name__ == '__main__':
  main()
