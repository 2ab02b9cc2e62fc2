"""Sharded embedding lookups per sharding type: lookups/s and the bytes each collective moves.

    python scripts/bench_embeddings.py [--batch 2048 --tables 8 --rows 20000 --dim 32 --bag 4]

For every sharding type, every table gets that type (``uniform_plan``) on a 2-host x 4-device
mesh (8 emulated CPU devices unless real ones exist). It times the jitted forward lookup and a
training step (forward, backward, fused row-wise Adagrad), counts the collectives of both
compiled programs from their HLO (``jaxrec.sharding.hlo``) and prints the id and output bytes
per step of the compiled lookup next to TorchRec's planner estimate for the same plan
(``jaxrec.sharding.embedding_comms``: ids in int64; row-split types bucketize their ids per
destination at the default capacity). The table is written into docs/embeddings.md between the
markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time

if __name__ == '__main__':
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from jaxrec.embeddings import EmbeddingBagConfig, KeyedJagged
from jaxrec.embeddings.sparse_optim import SparseOptimizer
from jaxrec.sharding import embedding_comms, hlo
from jaxrec.sharding.embedding_plan import SHARDING_TYPES, uniform_plan
from jaxrec.sharding.embedding_shard import ShardedEmbeddingBagCollection, embedding_mesh
from jaxrec.data.schema import FeatureSchema, SparseField
from jaxrec.models import build_model
from jaxrec.train import state as state_lib
from jaxrec.train.table_trainer import TableShardedTrainer

BEGIN, END = '<!-- bench_embeddings:begin -->', '<!-- bench_embeddings:end -->'
def _collectives(compiled_text: str) -> str:
  """Per kind: count and result bytes per device, the overflow-only second pass left out."""
  ops = hlo.summarize([op for op in hlo.collectives(compiled_text) if not op.conditional])
  if not ops:
    return '-'
  return ', '.join(f'{k} x{int(v["count"])}: {v["result_bytes"] / 1e6:.2f} MB'
                   for k, v in sorted(ops.items()))


def _timeit(fn, *args, repeats=5):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench(kind: str, args) -> dict:
  tables = tuple(EmbeddingBagConfig(f't{i}', args.rows, args.dim, (f'f{i}',))
                 for i in range(args.tables))
  plan = uniform_plan(tables, kind, args.hosts, args.per_host)
  mesh = embedding_mesh(plan)
  ebc = ShardedEmbeddingBagCollection(tables, plan, mesh)
  rng = np.random.default_rng(0)
  params = {t.name: jnp.asarray(rng.normal(size=(args.rows, args.dim)) * 0.01, jnp.float32)
            for t in tables}
  buffers = ebc.shard(params)
  lengths = np.full(args.tables * args.batch, args.bag)
  kjt = KeyedJagged.from_lengths([f'f{i}' for i in range(args.tables)],
                                 rng.integers(0, args.rows, lengths.sum()), lengths, args.bag)
  opt = SparseOptimizer('rowwise_adagrad', 0.01)
  states = ebc.init_states(opt, buffers)

  def step(bufs, sts, kjt):
    ctx = ebc.gather(bufs, kjt)
    grads = jax.grad(lambda rows: sum(jnp.sum(jnp.square(v))
                                      for v in ebc.pool(rows, ctx).values()))(ctx['rows'])
    return ebc.apply_row_grads(opt, bufs, sts, ctx, grads)

  fwd = jax.jit(ebc.lookup).lower(buffers, kjt).compile()
  train = jax.jit(step, donate_argnums=(0, 1)).lower(buffers, states, kjt).compile()
  t_fwd = _timeit(fwd, buffers, kjt)
  out = train(buffers, states, kjt)
  jax.block_until_ready(out)
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    out = train(*out, kjt)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  t_train = float(np.median(times))
  lookups = args.batch * args.tables * args.bag
  est_in, est_out = embedding_comms.torchrec_bytes(plan, tables, args.batch,
                                                   {t.feature_names[0]: args.bag for t in tables})
  hlo_in, hlo_out, hlo_second = embedding_comms.hlo_bytes(fwd.as_text(), plan.num_devices)
  if kind == 'data_parallel':  # backward only: the sparse update's all-gather, per device
    hlo_out = sum(op.result_bytes for op in hlo.collectives(train.as_text())
                  if op.kind == 'all-gather')
  return {'kind': kind, 'fwd_lookups_s': lookups / t_fwd, 'train_lookups_s': lookups / t_train,
          'train_collectives': _collectives(train.as_text()),
          'hlo_in': hlo_in, 'hlo_out': hlo_out, 'hlo_second': hlo_second, 'est_in': est_in,
          'est_out': est_out}


def _dlrm_batch(args, rng) -> tuple[FeatureSchema, dict]:
  """The benchmark's tables as multi-hot fields of a DLRM input, with 13 dense features."""
  schema = FeatureSchema(tuple(SparseField(f'f{i}', args.rows, max_length=args.bag,
                                           pooling='sum') for i in range(args.tables)),
                         dense=tuple(f'd{i}' for i in range(13)))
  b = args.batch
  batch = {'multi_hot_ids': rng.integers(0, args.rows, (b, args.tables, args.bag)).astype(np.int32),
           'multi_hot_lengths': np.full((b, args.tables), args.bag, np.int32),
           'multi_hot_weights': np.ones((b, args.tables, args.bag), np.float32),
           'sparse': np.zeros((b, 0), np.int32),
           'dense': rng.normal(size=(b, 13)).astype(np.float32),
           'label': rng.integers(0, 2, b).astype(np.float32), 'weight': np.ones(b, np.float32)}
  return schema, batch


def _median_step(step, state, batch, repeats=5) -> float:
  state, m = step(state, batch)
  jax.block_until_ready(m['loss'])
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m['loss'])
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def model_step_rates(kinds, args) -> dict:
  """Full DLRM train-step examples/s: unsharded (one device, dense Adam) and per sharding type
  (``TableShardedTrainer`` on the emulated mesh, fused row-wise Adagrad on the tables)."""
  schema, batch = _dlrm_batch(args, np.random.default_rng(1))
  model = build_model('dlrm', schema, embedding_dim=args.dim, bottom_mlp_units=(64,),
                      top_mlp_units=(256, 128), interaction='dot')
  optim = state_lib.OptimConfig(learning_rate=1e-3)
  tx = state_lib.make_optimizer(optim)
  state, mask = state_lib.create_train_state(model, batch, tx, seed=0)
  step = jax.jit(state_lib.make_train_step(model, tx, mask, optim), donate_argnums=0)
  rates = {'none': args.batch / _median_step(step, state, jax.device_put(batch))}
  for kind in kinds:
    trainer = TableShardedTrainer(model, schema, tx, optim, batch, kind,
                                  optimizer='rowwise_adagrad', table_learning_rate=0.01,
                                  hosts=args.hosts)
    state, _ = trainer.init_state()
    rates[kind] = args.batch / _median_step(trainer.train_step, state, batch)
  return rates


def table(rows) -> str:
  lines = ['| sharding type | DLRM train step, examples/s | fwd lookups/s | train lookups/s | id bytes/step: HLO / TorchRec est. '
           '(ratio) | second pass, only on overflow (HLO) | output bytes/step: HLO / TorchRec '
           'est. | train-step collectives (HLO, per device) |',
           '|---|---:|---:|---:|---|---:|---|---|']
  for r in rows:
    if r['kind'] == 'data_parallel':
      ids = '0 / 0'
      out = (f'{r["hlo_out"] / 1e6:.2f} MB all-gather / {r["est_out"] / 1e6:.2f} MB gradient '
             'all-reduce (backward, per device)')
    else:
      ids = (f'{r["hlo_in"] / 1e6:.3f} MB / {r["est_in"] / 1e6:.3f} MB '
             f'({r["hlo_in"] / r["est_in"]:.2f})')
      out = f'{r["hlo_out"] / 1e6:.2f} MB / {r["est_out"] / 1e6:.2f} MB'
    second = f'{r["hlo_second"] / 1e6:.3f} MB' if r['hlo_second'] else '-'
    lines.append(f'| {r["kind"]} | {r["model_examples_s"]:,.0f} | {r["fwd_lookups_s"]:.3g} | '
                 f'{r["train_lookups_s"]:.3g} | '
                 f'{ids} | {second} | {out} | {r["train_collectives"]} |')
  return '\n'.join(lines)


def write_docs(path: str, text: str) -> None:
  with open(path, encoding='utf-8') as f:
    doc = f.read()
  if BEGIN not in doc or END not in doc:
    raise ValueError(f'{path} lacks the markers {BEGIN} / {END}')
  new = re.sub(re.escape(BEGIN) + '.*?' + re.escape(END), lambda _: f'{BEGIN}\n{text}\n{END}',
               doc, flags=re.S)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(new)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=2048, help='global batch')
  p.add_argument('--tables', type=int, default=8)
  p.add_argument('--rows', type=int, default=20000)
  p.add_argument('--dim', type=int, default=32)
  p.add_argument('--bag', type=int, default=4, help='ids per bag (every bag full)')
  p.add_argument('--hosts', type=int, default=2)
  p.add_argument('--per_host', type=int, default=4)
  p.add_argument('--kinds', default=','.join(SHARDING_TYPES))
  p.add_argument('--docs', default='docs/embeddings.md', help="'' to skip writing")
  args = p.parse_args(argv)
  rows = []
  kinds = args.kinds.split(',')
  rates = model_step_rates(kinds, args)
  for kind in kinds:
    r = dict(bench(kind, args), model_examples_s=rates[kind])
    print(f'{kind}: {r}', flush=True)
    rows.append(r)
  cmd = 'python scripts/bench_embeddings.py ' + ' '.join(argv if argv is not None
                                                         else sys.argv[1:])
  dev = jax.devices()[0]
  header = (f'Command: `{cmd.strip()}`  \nMachine: {platform.node() or "?"} '
            f'({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores), '
            f'{len(jax.devices())} x {dev.platform} devices ({dev.device_kind}'
            f'{", emulated" if dev.platform == "cpu" else ""}), jax '
            f'{jax.__version__}  \nDate: {datetime.date.today().isoformat()}, load average '
            f'{" / ".join(f"{x:.1f}" for x in os.getloadavg())} (1 / 5 / 15 min) at the end  \n'
            f'Batch {args.batch} (global), {args.tables} tables of {args.rows} x {args.dim}, '
            f'{args.bag} ids per bag, {args.hosts} hosts x {args.per_host} devices. DLRM train '
            f'step (the tables as multi-hot fields, 13 dense features, bottom MLP 64, top MLP '
            f'256-128, dot interaction): unsharded on one device with dense Adam '
            f'{rates["none"]:,.0f} examples/s; sharded with the fused row-wise Adagrad below.\n')
  text = header + '\n' + table(rows)
  print(text)
  if args.docs:
    write_docs(args.docs, text)


if __name__ == '__main__':
  main()
