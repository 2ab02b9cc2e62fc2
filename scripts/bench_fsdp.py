"""FSDP strategies x model sizes: per-device memory, collective bytes and step time.

For each strategy and each of three field-transformer sizes this compiles one train step on the
available devices (8 emulated CPU devices by default) and reports:

* per-device bytes of the stored parameters and of the optimizer state (from the plan's
  shardings: the shard each device holds), and the compiled executable's memory analysis
  (arguments, outputs, temporaries; aliased donated buffers counted once);
* collectives per step counted from the compiled HLO (``jaxrec.sharding.hlo``): op counts and the
  bytes one device sends (ring estimates);
* median step time over ``--steps`` steps after a warm-up.

The table is printed and written into docs/fsdp.md between the ``bench_fsdp`` markers with the
command, machine and date. Usage::

  python scripts/bench_fsdp.py                 # 8 emulated CPU devices, all strategies, 3 sizes
  python scripts/bench_fsdp.py --steps 5 --sizes small --no_write
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import statistics
import sys
import time

if __name__ == '__main__' and 'jax' not in sys.modules:
  _N = next((a.split('=')[1] for a in sys.argv if a.startswith('--devices=')), '8')
  os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count={_N}')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxrec.data.schema import one_hot_schema  # pylint: disable=wrong-import-position
from jaxrec.models.transformer import FieldTransformer  # pylint: disable=wrong-import-position
from jaxrec.sharding import hlo  # pylint: disable=wrong-import-position
from jaxrec.sharding.fsdp import ShardingConfig  # pylint: disable=wrong-import-position
from jaxrec.sharding.mesh import make_hierarchical_mesh, make_mesh  # pylint: disable=wrong-import-position
from jaxrec.train.sharded_trainer import ShardedTrainer  # pylint: disable=wrong-import-position
from jaxrec.train import state as state_lib  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, 'docs', 'fsdp.md')
BEGIN, END = '<!-- bench_fsdp:begin -->', '<!-- bench_fsdp:end -->'

# name: (embedding_dim, num_layers, num_heads, mlp_dim, vocab per field); 8 fields.
SIZES = {
    'small': (64, 2, 4, 256, 1024),
    'medium': (128, 4, 4, 512, 4096),
    'large': (256, 4, 8, 1024, 16384),
}
# name: (strategy, implementation, mesh axes, hosts)
STRATEGIES = {
    'NO_SHARD': ('NO_SHARD', 'gspmd', {'data': -1, 'fsdp': 1, 'tensor': 1}, 0),
    'SHARD_GRAD_OP': ('SHARD_GRAD_OP', 'gspmd', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0),
    'FULL_SHARD': ('FULL_SHARD', 'gspmd', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0),
    'FULL_SHARD/shard_map': ('FULL_SHARD', 'shard_map', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0),
    'HYBRID_SHARD': ('HYBRID_SHARD', 'gspmd', {'data': 1, 'fsdp': -1, 'tensor': 1}, 2),
}
FIELDS = 8


def make_model(size: str) -> FieldTransformer:
  dim, layers, heads, mlp, vocab = SIZES[size]
  schema = one_hot_schema([f'f{i}' for i in range(FIELDS)], [vocab] * FIELDS)
  return FieldTransformer(schema, embedding_dim=dim, num_layers=layers, num_heads=heads,
                          head_dim=dim // heads, mlp_dim=mlp)


def make_batch(schema, rows: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {'sparse': np.stack([rng.integers(0, f.vocab_size, rows) for f in schema.sparse],
                             1).astype(np.int32),
          'dense': np.zeros((rows, 0), np.float32),
          'label': rng.integers(0, 2, rows).astype(np.float32),
          'weight': np.ones(rows, np.float32)}


def shard_bytes(tree, shardings) -> int:
  """Bytes one device holds of ``tree`` (abstract arrays) laid out by ``shardings``."""
  total = 0
  for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
  return total


def bench_one(size: str, name: str, batch_size: int, steps: int) -> dict:
  strategy, impl, axes, hosts = STRATEGIES[name]
  model = make_model(size)
  optim = state_lib.OptimConfig(learning_rate=1e-3)
  tx = state_lib.make_optimizer(optim)
  mesh = make_hierarchical_mesh(axes, hosts) if hosts else make_mesh(axes)
  batches = [make_batch(model.schema, batch_size, s) for s in range(steps + 2)]
  trainer = ShardedTrainer(model, tx, optim, mesh, ShardingConfig(strategy, implementation=impl),
                           batches[0])
  plan = trainer.plan
  t0 = time.perf_counter()
  compiled = trainer.lower_train_step(trainer.abstract_state(),
                                      trainer.abstract_batch(batch_size, batches[0])).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  ops = hlo.collectives(compiled.as_text())
  table = hlo.summarize(ops)
  state, _ = trainer.init_state()
  times = []
  for i, b in enumerate(batches):
    gb = trainer.global_batch(b)
    t = time.perf_counter()
    state, metrics = compiled(state, gb)
    jax.block_until_ready(metrics)
    if i >= 2:
      times.append(time.perf_counter() - t)
  n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(plan.abstract.params))
  return {
      'size': size, 'strategy': name, 'params': n_params,
      'param_bytes': shard_bytes(plan.abstract.params, plan.state.params),
      'opt_bytes': shard_bytes(plan.abstract.opt_state, plan.state.opt_state),
      'arg_bytes': mem.argument_size_in_bytes, 'temp_bytes': mem.temp_size_in_bytes,
      'out_bytes': mem.output_size_in_bytes - mem.alias_size_in_bytes,
      'collectives': {k: int(v['count']) for k, v in sorted(table.items())},
      'comm_bytes': sum(v['traffic_bytes'] for v in table.values()),
      'step_ms': 1e3 * statistics.median(times), 'compile_s': compile_s,
      'loss': float(metrics['loss']),
  }


def mib(n: float) -> str:
  return f'{n / 2**20:.2f}'


def format_table(rows: list[dict]) -> str:
  head = ('| size (params) | strategy | params+opt MiB/dev | args MiB | temp MiB | '
          'collectives / step | sent MiB/dev | step ms |')
  lines = [head, '|' + '---|' * 8]
  for r in rows:
    coll = ', '.join(f'{k} x{v}' for k, v in r['collectives'].items()) or 'none'
    lines.append(f"| {r['size']} ({r['params'] / 1e6:.2f}M) | {r['strategy']} | "
                 f"{mib(r['param_bytes'] + r['opt_bytes'])} | {mib(r['arg_bytes'])} | "
                 f"{mib(r['temp_bytes'])} | {coll} | {mib(r['comm_bytes'])} | "
                 f"{r['step_ms']:.1f} |")
  return '\n'.join(lines)


def ratios(rows: list[dict]) -> str:
  out = []
  for size in dict.fromkeys(r['size'] for r in rows):
    by = {r['strategy']: r for r in rows if r['size'] == size}
    if 'NO_SHARD' in by and 'FULL_SHARD' in by:
      base = by['NO_SHARD']['param_bytes'] + by['NO_SHARD']['opt_bytes']
      full = by['FULL_SHARD']['param_bytes'] + by['FULL_SHARD']['opt_bytes']
      out.append(f'{size}: FULL_SHARD params+opt per device = {full / base:.3f} x NO_SHARD '
                 f'(1/N = {1 / jax.device_count():.3f})')
  return '\n'.join(out)


def write_doc(text: str) -> None:
  with open(DOC, encoding='utf-8') as f:
    doc = f.read()
  pattern = re.compile(re.escape(BEGIN) + '.*?' + re.escape(END), re.S)
  if not pattern.search(doc):
    raise ValueError(f'{DOC}: markers {BEGIN} / {END} not found')
  with open(DOC, 'w', encoding='utf-8') as f:
    f.write(pattern.sub(lambda _: f'{BEGIN}\n{text}\n{END}', doc))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default=','.join(SIZES))
  p.add_argument('--strategies', default=','.join(STRATEGIES))
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--devices', type=int, default=8,
                 help='emulated CPU devices (XLA_FLAGS, set before jax starts)')
  p.add_argument('--no_write', action='store_true', help='print only; leave docs/fsdp.md')
  args = p.parse_args(argv)
  rows = []
  for size in args.sizes.split(','):
    for name in args.strategies.split(','):
      r = bench_one(size, name, args.batch_size, args.steps)
      print(f"{size:6s} {name:22s} params+opt {mib(r['param_bytes'] + r['opt_bytes'])} MiB/dev "
            f"temp {mib(r['temp_bytes'])} MiB sent {mib(r['comm_bytes'])} MiB "
            f"step {r['step_ms']:.1f} ms (compile {r['compile_s']:.0f} s) {r['collectives']}",
            flush=True)
      rows.append(r)
  dev = jax.devices()[0]
  header = (f"Command: `python scripts/bench_fsdp.py {' '.join(sys.argv[1:])}`".rstrip() +
            f'  \nMachine: {platform.machine()} {platform.processor() or ""}, '
            f'{os.cpu_count()} CPU cores, {jax.device_count()} x {dev.platform} devices '
            f'({dev.device_kind}), jax {jax.__version__}  \n'
            f'Date: {datetime.date.today().isoformat()}; batch {args.batch_size}, median of '
            f'{args.steps} steps; memory in MiB per device; 1-minute load average at the end '
            f'{os.getloadavg()[0]:.1f} (step times on a shared machine are indicative only).')
  text = header + '\n\n' + format_table(rows) + '\n\n' + ratios(rows)
  print('\n' + text)
  if not args.no_write:
    write_doc(text)


if __name__ == '__main__':
  main()
