"""Early-exit study: test AUC, mean exit layer and throughput over a sweep of exit thresholds.

    python scripts/early_exit_study.py --runs runs/optirag_none,runs/optirag_gcn,runs/optirag_lm \
        --out docs/optirag_early_exit

For every run of scripts/train_optirag.py and every threshold: the policy of
:func:`jaxrec.layers.exit_heads.exits_at` on the stored full-depth test margins gives AUC,
logloss and the mean exit layer (all test rows); the layer-by-layer serving path
(:class:`jaxrec.serving.early_exit.EarlyExitServer`) serves the first ``--rows`` test prompts in
batches of ``--batch_size`` requests, timed (median of ``--repeats``) against the full-depth model
(one jitted pass, last head), and its predictions are checked against the simulated policy. The
threshold chosen on validation is the one with the fewest mean layers whose valid AUC is within
``--max_drop`` of full depth.

Writes ``{out}.csv``, ``{out}.png`` (AUC against mean layers and against requests/s) and
``{out}.md`` (a Markdown summary).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os

import jax
import numpy as np

from jaxrec.layers.exit_heads import exits_at
from jaxrec.models import optirag
from jaxrec.serving.bundle import load_run
from jaxrec.serving.early_exit import EarlyExitServer
from jaxrec.serving.timing import alternating_times
from jaxrec.train.metrics import auc, logloss_from_logits

THRESHOLDS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, float('inf'))


def sweep(margins: np.ndarray, labels: np.ndarray, thresholds, agree: int) -> list[dict]:
  L = margins.shape[0]
  out = []
  for th in thresholds:
    layer, m = exits_at(margins, th, agree)
    out.append({'threshold': th, 'auc': auc(labels, m), 'logloss': logloss_from_logits(labels, m),
                'mean_layers': float(np.mean(layer + 1)), 'layer_fraction': float(np.mean(
                    layer + 1) / L)})
  return out


def choose_on_valid(margins: np.ndarray, labels: np.ndarray, thresholds, agree: int,
                    max_drop: float) -> float:
  """The threshold with the fewest mean layers whose valid AUC >= full depth - max_drop."""
  full = auc(labels, margins[-1])
  ok = [r for r in sweep(margins, labels, thresholds, agree) if r['auc'] >= full - max_drop]
  return min(ok, key=lambda r: (r['mean_layers'], -r['auc']))['threshold']


def study_run(workdir: str, a, label: str = '') -> tuple[list[dict], dict]:
  """Rows (one per threshold) and a summary of one run, named ``label`` (default: its
  retriever)."""
  results, z, config, params = load_run(workdir)
  name = label or results['retriever']
  L = config.num_layers
  rows = []
  test_m, test_y = z['test_margins'], z['test_label']
  full_auc = auc(test_y, test_m[-1])
  chosen = choose_on_valid(z['valid_margins'], z['valid_label'], a.thresholds, a.agree,
                           a.max_drop)
  ids = z['test_input_ids'][:a.rows]
  mask = z['test_attention_mask'][:a.rows]
  bs = a.batch_size
  full_fn = jax.jit(lambda p, i, m: optirag.full_depth_margins(config, p, i, m)[-1])
  server = EarlyExitServer(config, params, a.bucket)
  full_rps = []
  for r in sweep(test_m, test_y, a.thresholds, a.agree):
    th = r['threshold']
    row = {'retriever': name, **r, 'auc_drop': full_auc - r['auc'],
           'chosen_on_valid': th == chosen}
    if th in a.timed_thresholds:
      served = []

      def run_full():
        for s in range(0, len(ids), bs):
          np.asarray(full_fn(params, ids[s:s + bs], mask[s:s + bs]))

      def run_exit():
        served.clear()
        for s in range(0, len(ids), bs):
          served.append(server(ids[s:s + bs], mask[s:s + bs], th, a.agree))

      (full_secs, exit_secs), (full_cpu, exit_cpu) = (
          map(float, t) for t in alternating_times([run_full, run_exit], a.repeats))
      margin = np.concatenate([x[0] for x in served])
      layer = np.concatenate([x[1] for x in served])
      sim_layer, sim_margin = exits_at(test_m[:, :a.rows], th, a.agree)
      full_rps.append(len(ids) / full_secs)
      row.update({
          'rps': len(ids) / exit_secs, 'rps_full_depth': len(ids) / full_secs,
          'speedup': full_secs / exit_secs, 'cpu_speedup': full_cpu / exit_cpu,
          'served_mean_layers': float(np.mean(layer + 1)),
          'served_layer_match': float(np.mean(layer == sim_layer)),
          'served_max_abs_diff': float(np.max(np.abs(margin - sim_margin)))})
    rows.append(row)
    print(json.dumps(row), flush=True)
  per_head = results['test']['auc_per_head']
  summary = {'retriever': name, 'full_auc': full_auc, 'auc_per_head': per_head,
             'chosen_threshold': chosen, 'latency': results.get('latency', {}),
             'rps_full_depth': float(np.median(full_rps)) if full_rps else None}
  return rows, summary


def retrieval_latency(a) -> dict:
  """Per-query latency of the GCN and LM retrievers on the test queries, same process."""
  from jaxrec.data.ml_prompts import SplitSizes, load_prompt_data, user_history_text
  from jaxrec.layers.bert import load_minilm
  from jaxrec.retrieval import pipeline
  from jaxrec.retrieval.lm_retriever import LMRetriever, TextEncoder
  from jaxrec.retrieval.retriever import Index
  from jaxrec.retrieval.retriever import time_per_query
  with open(os.path.join(a.lm_run, 'results.json')) as f:
    c = json.load(f)['config']
  data = load_prompt_data(c['data_dir'], SplitSizes(c['train_per_user'], c['valid_per_user'],
                                                    c['test_per_user']), c['rating_threshold'])
  with np.load(a.gcn_embeddings) as z:
    gcn = pipeline.gcn_retriever(data, z['node_emb'])
  config, params, tok = load_minilm()
  encoder = TextEncoder(dataclasses.replace(config, dropout_rate=0.0), params, tok,
                        c['lm_max_length'])
  texts = [user_history_text(data, u, 'graph', c['lm_history_length'])
           for u in range(data.num_users)]
  with np.load(os.path.join(a.lm_run, 'lm_index.npz')) as z:
    lm = LMRetriever(encoder, texts, Index(z['user_emb'], z['item_emb'], gcn.index.ratings))
  test = data.rows('test')
  users, items = data.user[test], data.item[test]
  n = c['num_similar_users']
  out = {}
  for name, r in (('gcn', gcn), ('lm', lm)):
    for b, q in ((1, a.latency_queries), (64, 2 * 64)):
      out[f'{name}_ms_per_query_batch{b}'] = 1e3 * time_per_query(
          lambda u, i: r.retrieve(u, i, n), users[:q], items[:q], b, a.repeats)
  lm_search = lambda u, i: lm.retrieve_cached(u, i, n)
  out['lm_search_only_ms_per_query_batch1'] = 1e3 * time_per_query(
      lm_search, users[:a.latency_queries], items[:a.latency_queries], 1, a.repeats)
  print(json.dumps(out), flush=True)
  return out


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name in dict.fromkeys(r['retriever'] for r in rows):
    rs = [r for r in rows if r['retriever'] == name]
    axes[0].plot([r['mean_layers'] for r in rs], [r['auc'] for r in rs], 'o-', label=name)
    ts = [r for r in rs if 'rps' in r]
    axes[1].plot([r['rps'] for r in ts], [r['auc'] for r in ts], 'o-', label=name)
    axes[1].axvline(np.median([r['rps_full_depth'] for r in ts]), ls=':',
                    color=axes[1].lines[-1].get_color())
  axes[0].set_xlabel('mean exit layer (of 6)')
  axes[1].set_xlabel('requests / s (dotted: full-depth model)')
  for ax in axes:
    ax.set_ylabel('test AUC')
    ax.grid(alpha=0.3)
    ax.legend(title='retriever')
  fig.suptitle('OptiRAG-Rec early exit on MovieLens-100K (thresholds on |log p_yes/p_no|)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def markdown(rows: list[dict], summaries: list[dict], a, latency: dict) -> str:
  lines = [f'Test rows for AUC: all; throughput: first {a.rows} test prompts in batches of '
           f'{a.batch_size}, median of {a.repeats} alternating runs; agree={a.agree}. '
           f'1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} '
           'cores. "speedup" is wall-clock, "CPU speedup" the ratio of process CPU time (what '
           'the early exit saves in compute, less disturbed by other jobs).', '',
           '| retriever | threshold | test AUC | AUC drop | mean layers | req/s | full-depth req/s '
           '| speedup | CPU speedup | served = simulated |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    mark = ' (valid pick)' if r['chosen_on_valid'] else ''
    timing = (f"{r['rps']:.1f} | {r['rps_full_depth']:.1f} | {r['speedup']:.2f}x | "
              f"{r['cpu_speedup']:.2f}x | {r['served_layer_match']:.3f}" if 'rps' in r
              else '- | - | - | - | -')
    lines.append(f"| {r['retriever']} | {r['threshold']:g}{mark} | {r['auc']:.4f} | "
                 f"{r['auc_drop']:+.4f} | {r['mean_layers']:.2f} | {timing} |")
  lines += ['', '| retriever | full-depth test AUC | test AUC per head (layers 1..6) | '
            'retrieval ms/query, batch 1 / 64 |', '|---|---|---|---|']
  for s in summaries:
    name = s['retriever']
    lat_s = (f"{latency[f'{name}_ms_per_query_batch1']:.3f} / "
             f"{latency[f'{name}_ms_per_query_batch64']:.3f}"
             if f'{name}_ms_per_query_batch1' in latency else '-')
    lines.append(f"| {name} | {s['full_auc']:.4f} | "
                 f"{' '.join(f'{x:.4f}' for x in s['auc_per_head'])} | {lat_s} |")
  if latency:
    lines += ['', f"LM retriever search alone (query embedding cached): "
              f"{latency['lm_search_only_ms_per_query_batch1']:.3f} ms/query at batch 1."]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--runs', required=True, help='comma-separated train_optirag.py workdirs')
  p.add_argument('--labels', default='',
                 help='comma-separated names of the runs in the tables (default: retriever)')
  p.add_argument('--out', default='docs/optirag_early_exit')
  p.add_argument('--thresholds', default=','.join(f'{t:g}' for t in THRESHOLDS))
  p.add_argument('--timed_thresholds', default='0.5,1,1.5,2,3,inf',
                 help='the thresholds whose throughput is measured')
  p.add_argument('--agree', type=int, default=1)
  p.add_argument('--max_drop', type=float, default=0.002)
  p.add_argument('--rows', type=int, default=128)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--bucket', type=int, default=8)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--gcn_embeddings', default='', help='gcn_embeddings.npz: time the retrievers')
  p.add_argument('--lm_run', default='', help='the lm run (its lm_index.npz) for the timing')
  p.add_argument('--latency_queries', type=int, default=32)
  a = p.parse_args(argv)
  a.thresholds = [float(t) for t in a.thresholds.split(',')]
  a.timed_thresholds = [float(t) for t in a.timed_thresholds.split(',')]
  latency = retrieval_latency(a) if a.gcn_embeddings and a.lm_run else {}
  runs = a.runs.split(',')
  labels = a.labels.split(',') if a.labels else [''] * len(runs)
  if len(labels) != len(runs):
    raise ValueError(f'--labels: {len(labels)} labels for {len(runs)} --runs')
  rows, summaries = [], []
  for wd, label in zip(runs, labels):
    r, s = study_run(wd, a, label)
    rows += r
    summaries.append(s)
  os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
  with open(a.out + '.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(max(rows, key=len)))
    w.writeheader()
    w.writerows(rows)
  plot(rows, a.out + '.png')
  with open(a.out + '.md', 'w') as f:
    f.write(markdown(rows, summaries, a, latency))
  with open(a.out + '_summary.json', 'w') as f:
    json.dump({'runs': summaries, 'retrieval_latency': latency}, f, indent=2)
  print(open(a.out + '.md').read())


if __name__ == '__main__':
  main()
