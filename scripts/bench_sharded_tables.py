"""Sharded-table training beyond one device's memory: examples/s and compiled bytes per device.

    python scripts/bench_sharded_tables.py --config configs/dlrm_criteo_synth.py --cpu_devices 8 \
        [--steps 10] [--warmup 3] [--num_train 65536] [--table_scale 1]
        [--out docs/bench_sharded_tables.md]

Builds the run of ``--config`` exactly as ``scripts/train.py`` does (its plan, memory cap and
optimizer), compiles the train step and prints, per device, the plan's table bytes and the compiled
step's memory analysis (arguments, outputs, temporaries; XLA counts them per device), then times
``--steps`` steps after ``--warmup`` (median examples/s) with the load average. ``--num_train``
shrinks the generated training split (the tables keep their full size).
"""

import argparse
import datetime
import os
import platform
import runpy
import statistics
import time

from jaxrec.sharding import distributed


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/dlrm_criteo_synth.py')
  p.add_argument('--cpu_devices', type=int, default=8)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--num_train', type=int, default=65536)
  p.add_argument('--table_scale', type=float, default=1.0,
                 help='scales the synthetic vocabularies and the memory cap (smoke runs)')
  p.add_argument('--out', default='')
  a = p.parse_args()
  distributed.initialize(cpu_devices=a.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrec.train import loop  # pylint: disable=g-import-not-at-top
  from jaxrec.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(a.config)['get_config']()
  options = config.dataset_options[config.dataset]
  options.num_train = a.num_train
  if a.table_scale != 1.0:
    options.max_vocab = max(options.min_vocab, int(options.max_vocab * a.table_scale))
    config.embedding.memory_cap_bytes = int(config.embedding.memory_cap_bytes * a.table_scale)
    config.embedding.table_wise_below_bytes = int(config.embedding.table_wise_below_bytes
                                                  * a.table_scale)
  data = loop.load_data(config)
  model = loop.make_model(config, data.schema)
  ocfg = loop.optim_config(config)
  tx = state_lib.make_optimizer(ocfg)
  train = data.splits['train']
  batches = list(train.batches(config.batch_size, shuffle=True, seed=0))[:a.steps + a.warmup]
  trainer = loop.make_trainer(config, model, data.schema, tx, ocfg, batches[0])
  state, _ = trainer.init_state()
  compiled = trainer.lower_train_step(state, trainer.global_batch(batches[0])).compile()
  mem = compiled.memory_analysis()
  times = []
  for i, batch in enumerate(batches):
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m['loss'])
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  eps = config.batch_size / statistics.median(times)
  plan_bytes = {}
  for t in trainer.tables:
    for s in trainer.plan.table_shards(t.config):
      plan_bytes[s.device] = plan_bytes.get(s.device, 0) + s.num_bytes
  mib = 1 << 20
  lines = [
      f'Command: `python scripts/bench_sharded_tables.py --config {a.config} --cpu_devices '
      f'{a.cpu_devices} --steps {a.steps} --warmup {a.warmup} --num_train {a.num_train}`',
      f'Machine: {platform.machine()} {os.cpu_count()} cores, {jax.device_count()} emulated '
      f'{jax.devices()[0].platform} devices; {datetime.date.today()}; load average '
      f'{", ".join(f"{x:.1f}" for x in os.getloadavg())}; jax {jax.__version__}',
      '',
      f'Tables: {sum(t.config.num_embeddings for t in trainer.tables):,} rows x '
      f'{config.embedding_dim} ({sum(t.config.num_bytes for t in trainer.tables) / mib:,.0f} MiB), '
      f'plan `{config.embedding.plan}` (small tables whole below '
      f'{config.embedding.get("table_wise_below_bytes", 0) / mib:.0f} MiB), optimizer '
      f'`{config.embedding.optimizer}`, cap {config.embedding.memory_cap_bytes / mib:.0f} MiB per '
      f'device; batch {config.batch_size}.',
      '',
      '| device | table shards (MiB) |',
      '|---:|---:|',
  ] + [f'| {d} | {b / mib:,.1f} |' for d, b in sorted(plan_bytes.items())] + [
      '',
      '| compiled train step, per device | MiB |',
      '|---|---:|',
      f'| arguments (state + batch) | {mem.argument_size_in_bytes / mib:,.1f} |',
      f'| outputs | {mem.output_size_in_bytes / mib:,.1f} |',
      f'| aliased (donated state) | {mem.alias_size_in_bytes / mib:,.1f} |',
      f'| temporaries | {mem.temp_size_in_bytes / mib:,.1f} |',
      '',
      f'Train step: {eps:,.0f} examples/s (median of {len(times)} steps, '
      f'{statistics.median(times) * 1e3:.0f} ms per step; min {min(times) * 1e3:.0f}, max '
      f'{max(times) * 1e3:.0f}).',
  ]
  text = '\n'.join(lines)
  print(text)
  if a.out:
    with open(a.out, 'w', encoding='utf-8') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  main()
