"""Early-exit serving benchmark: a jitted full-depth pass, the host-loop server, the device server.

    python scripts/bench_early_exit.py --run runs/optirag_gcn_full --batch_sizes 1,64 \
        --thresholds 0,inf --rows 128 --repeats 5 --out docs/optirag_early_exit_device
    python scripts/bench_early_exit.py --run runs/optirag_gcn_full --rows 128 \
        --export_bundle runs/optirag_gcn_full_bundle.npz
    python scripts/bench_early_exit.py --bundle runs/optirag_gcn_full_bundle.npz ...

Serves the first ``--rows`` test prompts of a scripts/train_optirag.py run (``--run``) or of a
serving bundle (``--bundle``, :mod:`jaxrec.serving.bundle`) in batches of each ``--batch_sizes``
(whole batches only), for each exit threshold, three ways: the full-depth model (one jitted
pass, last head), :class:`~jaxrec.serving.early_exit.EarlyExitServer` (host loop over layers) and
:class:`~jaxrec.serving.early_exit.DeviceEarlyExitServer` (one program, the loop on the device).
Requests/s are the medians of ``--repeats`` alternating runs after a warm-up (compiling) run of
each. The two servers must give equal predictions on every timed row (identical exit layers,
margins within ``--tol``): the script fails otherwise.

Writes ``{out}.md`` (the table, with the machine, load average, date and command) and
``{out}.csv``. ``--export_bundle PATH`` instead writes the bundle of the ``--rows`` prompts
(word table pruned to their ids; checked to predict exactly as the unpruned params) and exits.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import shlex
import sys

import jax
import numpy as np

from jaxrec.models import optirag
from jaxrec.serving.bundle import load_bundle, load_run, save_bundle
from jaxrec.serving.early_exit import LADDERS, DeviceEarlyExitServer, EarlyExitServer
from jaxrec.serving.timing import alternating_times

COLUMNS = ('threshold', 'batch', 'rows', 'mean_layers', 'rps_full_depth', 'rps_host_loop',
           'rps_device', 'speedup_host_loop', 'speedup_device', 'device_over_host_loop',
           'cpu_speedup_host_loop', 'cpu_speedup_device', 'max_margin_diff')


def load(a):
  """``(config, params, input_ids, attention_mask, label or None)``: the first ``--rows``."""
  if a.run:
    _, z, config, params = load_run(a.run)
    ids, mask, label = z['test_input_ids'], z['test_attention_mask'], z.get('test_label')
  else:
    config, params, arrays = load_bundle(a.bundle)
    ids, mask, label = arrays['input_ids'], arrays['attention_mask'], arrays.get('label')
  if a.rows > len(ids):
    raise SystemExit(f'--rows {a.rows}, but {a.run or a.bundle} holds {len(ids)} prompts')
  label = None if label is None else label[:a.rows]
  return config, params, ids[:a.rows], mask[:a.rows], label


def export(a, config, params, ids, mask, label) -> None:
  """The bundle, read back and checked: full-depth margins equal to the unpruned model's."""
  save_bundle(a.export_bundle, config, params, ids, mask, label)
  b_config, b_params, arrays = load_bundle(a.export_bundle)
  want = optirag.predict_margins(config, params, ids, mask)
  got = optirag.predict_margins(b_config, b_params, arrays['input_ids'],
                                arrays['attention_mask'])
  if not np.array_equal(got, want):
    raise SystemExit(f'{a.export_bundle}: the pruned model predicts differently (max |diff| '
                     f'{np.max(np.abs(got - want)):.3g})')
  print(f'wrote {a.export_bundle}: {os.path.getsize(a.export_bundle) / 2**20:.1f} MiB, '
        f'{len(ids)} prompts, {b_config.vocab_size} of {config.vocab_size} word pieces kept; '
        'full-depth margins identical to the unpruned model')


def compare(host_out, device_out, tol: float, where: str) -> float:
  """Fails unless the servers' exit layers are identical and margins within ``tol``; returns
  the largest margin difference."""
  h_margin, h_layer = (np.concatenate([o[i] for o in host_out]) for i in (0, 1))
  d_margin, d_layer = (np.concatenate([o[i] for o in device_out]) for i in (0, 1))
  bad = (h_layer != d_layer) | ~np.isclose(d_margin, h_margin, rtol=tol, atol=tol)
  if bad.any():
    i = np.flatnonzero(bad)[:5]
    raise SystemExit(f'{where}: the servers disagree on {bad.sum()} of {len(bad)} rows, e.g. '
                     f'rows {i.tolist()}: host layers {h_layer[i].tolist()} margins '
                     f'{h_margin[i].tolist()}, device layers {d_layer[i].tolist()} margins '
                     f'{d_margin[i].tolist()}')
  return float(np.max(np.abs(d_margin - h_margin)))


def bench(a, config, params, ids, mask) -> list[dict]:
  full_fn = jax.jit(lambda p, i, m: optirag.full_depth_margins(config, p, i, m)[-1])
  host = EarlyExitServer(config, params, a.bucket)
  device = DeviceEarlyExitServer(config, params, a.bucket, a.ladder)
  params = host.params  # on the device, as the servers hold them
  rows = []
  for bs in a.batch_sizes:
    n = len(ids) // bs * bs
    if not n:
      raise SystemExit(f'--rows {len(ids)} is less than one batch of {bs}')
    batches = [(ids[s:s + bs], mask[s:s + bs]) for s in range(0, n, bs)]
    for th in a.thresholds:
      out = {}

      def run_full():
        for b in batches:
          np.asarray(full_fn(params, *b))

      def serve(name, server):
        out[name] = [server(*b, th, a.agree, a.min_layer) for b in batches]

      wall, cpu = alternating_times(
          [run_full, lambda: serve('host', host), lambda: serve('device', device)], a.repeats)
      diff = compare(out['host'], out['device'], a.tol, f'threshold {th:g}, batch {bs}')
      layer = np.concatenate([o[1] for o in out['device']])
      row = {'threshold': th, 'batch': bs, 'rows': n, 'mean_layers': float(np.mean(layer + 1)),
             'rps_full_depth': n / wall[0], 'rps_host_loop': n / wall[1],
             'rps_device': n / wall[2], 'speedup_host_loop': wall[0] / wall[1],
             'speedup_device': wall[0] / wall[2], 'device_over_host_loop': wall[1] / wall[2],
             'cpu_speedup_host_loop': cpu[0] / cpu[1], 'cpu_speedup_device': cpu[0] / cpu[2],
             'max_margin_diff': diff}
      row = {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}
      print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
      rows.append(row)
  return rows


def machine() -> dict:
  d = jax.devices()[0]
  return {'device_kind': d.device_kind, 'platform': d.platform, 'jax': jax.__version__,
          'cpus': os.cpu_count(),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}


def markdown(rows: list[dict], meta: dict, a, num_layers: int) -> str:
  lines = [
      f"Early-exit serving of `{a.run or a.bundle}`: the first {rows[0]['rows'] if rows else 0}"
      f' prompts (whole batches), median of {a.repeats} alternating runs after a warm-up; policy '
      f'agree={a.agree}, min_layer={a.min_layer}; host loop padded to multiples of {a.bucket}, '
      f'device ladder `{a.ladder}`; the servers gave equal predictions on every timed row.',
      '',
      f"Machine: {meta['device_kind']} ({meta['platform']}), {meta['cpus']} CPUs, jax "
      f"{meta['jax']}, matmul precision `{a.matmul_precision}`; 1-minute load average "
      f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end; {meta['date']}.",
      '', f"Command: `{meta['command']}`", '',
      f'| threshold | batch | mean layers (of {num_layers}) | req/s full depth | req/s host loop '
      '| req/s device | host loop speedup | device speedup | device / host loop |',
      '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['threshold']:g} | {r['batch']} | {r['mean_layers']:.2f} | "
                 f"{r['rps_full_depth']:.1f} | {r['rps_host_loop']:.1f} | {r['rps_device']:.1f} | "
                 f"{r['speedup_host_loop']:.2f}x | {r['speedup_device']:.2f}x | "
                 f"{r['device_over_host_loop']:.2f}x |")
  return '\n'.join(lines) + '\n'


def write(rows: list[dict], meta: dict, a, num_layers: int) -> None:
  os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
  with open(a.out + '.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(COLUMNS) + list(meta))
    w.writeheader()
    w.writerows({**r, **meta} for r in rows)
  text = markdown(rows, meta, a, num_layers)
  with open(a.out + '.md', 'w') as f:
    f.write(text)
  print(text)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--run', default='', help='a scripts/train_optirag.py workdir')
  src.add_argument('--bundle', default='', help='a serving bundle (--export_bundle)')
  p.add_argument('--rows', type=int, default=128, help='the first N test prompts')
  p.add_argument('--batch_sizes', default='1,64')
  p.add_argument('--thresholds', default='0,inf')
  p.add_argument('--agree', type=int, default=1)
  p.add_argument('--min_layer', type=int, default=0)
  p.add_argument('--bucket', type=int, default=8)
  p.add_argument('--ladder', default='halves', choices=LADDERS)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--tol', type=float, default=1e-4,
                 help='margins of the two servers equal within this (rtol and atol)')
  p.add_argument('--matmul_precision', default='highest',
                 help="jax_default_matmul_precision ('default': the backend's, e.g. TF32 on GPUs)")
  p.add_argument('--out', default='', help='writes {out}.md and {out}.csv')
  p.add_argument('--export_bundle', default='', help='write the serving bundle here and exit')
  a = p.parse_args(argv)
  a.batch_sizes = [int(b) for b in a.batch_sizes.split(',')]
  a.thresholds = [float(t) for t in a.thresholds.split(',')]
  if a.rows < 1 or min(a.batch_sizes) < 1:
    p.error('--rows and --batch_sizes must be >= 1')
  return a


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  a = parse(argv)
  if a.matmul_precision != 'default':
    jax.config.update('jax_default_matmul_precision', a.matmul_precision)
  config, params, ids, mask, label = load(a)
  if a.export_bundle:
    export(a, config, params, ids, mask, label)
    return
  meta = {**machine(), 'load_start': os.getloadavg()[0]}
  rows = bench(a, config, params, ids, mask)
  meta.update(load_end=os.getloadavg()[0],
              command='python scripts/bench_early_exit.py ' + shlex.join(argv))
  if a.out:
    write(rows, meta, a, config.num_layers)
  else:
    print(markdown(rows, meta, a, config.num_layers))


if __name__ == '__main__':
  main()
