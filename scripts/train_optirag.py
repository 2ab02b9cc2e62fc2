"""Train the prompted CTR model with multi-head early exit on MovieLens-100K (OptiRAG-Rec).

    python scripts/train_optirag.py --config configs/optirag_gcn.py --workdir runs/optirag_gcn \
        [--gcn_embeddings runs/gcn/gcn_embeddings.npz] [--config.epochs=1 ...]

Steps: split the data (:mod:`jaxrec.data.ml_prompts`); build the retriever of
``config.retriever`` (``none``, ``gcn``: LightGCN trained here unless ``--gcn_embeddings`` is
given; ``lm``: MiniLM embeddings of user histories) and time it per query; retrieve evidence and
build the prompts of the train / valid / test samples; fine-tune the upper encoder layers and the
exit heads; score valid and test with every head.

Writes to the workdir: ``params.msgpack`` (model params), ``margins.npz`` (``{valid,test}_margins
[L, N]``, labels, token ids and masks of the test prompts, rows), ``results.json`` (per-head AUC,
retrieval latency, timings), ``prompts_sample.txt`` (a few prompts), ``train_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import serialization
from ml_collections import config_flags

from jaxrec.data.ml_prompts import SplitSizes, build_prompts, load_prompt_data
from jaxrec.layers.bert import load_minilm, tokenize
from jaxrec.models import optirag
from jaxrec.retrieval.lightgcn import LightGCNConfig
from jaxrec.retrieval import pipeline
from jaxrec.retrieval.lm_retriever import TextEncoder
from jaxrec.retrieval.retriever import batched, evidence_lists, time_per_query
from jaxrec.train.metrics import auc

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/optirag_*.py')
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory')
_GCN = flags.DEFINE_string('gcn_embeddings', '', 'gcn_embeddings.npz from scripts/train_gcn.py')
flags.mark_flags_as_required(['config', 'workdir'])


def _log(path, record):
  print(json.dumps(record), flush=True)
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def build_retriever(c, data, encoder):
  """``(retrieve(users, items) -> Evidence, per-query latency)`` of ``c.retriever``."""
  if c.retriever == 'none':
    return None, {}
  if c.retriever == 'gcn':
    if _GCN.value:
      with np.load(_GCN.value) as z:
        node_emb = z['node_emb']
    else:
      node_emb = pipeline.gcn_embeddings(data, LightGCNConfig(**c.gcn))
    r = pipeline.gcn_retriever(data, node_emb)
    fast = r.retrieve
  else:
    r = pipeline.lm_retriever(data, encoder, c.lm_history_length)
    np.savez(os.path.join(_WORKDIR.value, 'lm_index.npz'), user_emb=r.index.user_emb,
             item_emb=r.index.item_emb)
    fast = r.retrieve_cached  # same texts as the index: same evidence, no re-encoding
  test = data.rows('test')
  users, items = data.user[test], data.item[test]
  n = c.num_similar_users
  if c.latency_queries < 1:
    raise ValueError(f'config.latency_queries must be >= 1, got {c.latency_queries}')
  cap = lambda q: min(q, c.latency_queries)
  latency = {f'ms_per_query_batch{b}': 1e3 * time_per_query(
      lambda u, i: r.retrieve(u, i, n), users[:cap(q)], items[:cap(q)], b)
      for b, q in ((1, 32), (64, 128))}
  return (lambda u, i: fast(u, i, n)), latency


def main(argv):
  del argv
  c = _CONFIG.value
  wd = _WORKDIR.value
  os.makedirs(wd, exist_ok=True)
  log_path = os.path.join(wd, 'train_log.jsonl')
  t0 = time.perf_counter()
  data = load_prompt_data(c.data_dir, SplitSizes(c.train_per_user, c.valid_per_user,
                                                 c.test_per_user), c.rating_threshold)
  bert_config, bert_params, tok = load_minilm()
  bert_config = dataclasses.replace(bert_config, dropout_rate=c.dropout_rate)
  encoder = TextEncoder(bert_config, bert_params, tok, c.lm_max_length)
  retrieve, latency = build_retriever(c, data, encoder)
  _log(log_path, {'event': 'retriever', 'kind': c.retriever, **latency})

  rng = np.random.default_rng(c.seed)
  splits = {k: data.rows(k) for k in ('train', 'valid', 'test')}
  if c.max_train_samples and len(splits['train']) > c.max_train_samples:
    splits['train'] = np.sort(rng.choice(splits['train'], c.max_train_samples, replace=False))
  for k, cap in (('valid', c.max_valid_samples), ('test', c.max_test_samples)):
    if cap and len(splits[k]) > cap:
      splits[k] = np.sort(rng.choice(splits[k], cap, replace=False))
  inputs = {}
  for k, rows in splits.items():
    ev = items = None
    if retrieve is not None:
      e = batched(retrieve, data.user[rows], data.item[rows])
      ev, items = evidence_lists(e), e.item
    texts = build_prompts(data, rows, c.history_length, ev, items, c.rating_threshold)
    inputs[k] = tokenize(tok, texts, c.max_length)
    inputs[k]['label'] = data.label[rows]
    if k == 'test':
      with open(os.path.join(wd, 'prompts_sample.txt'), 'w') as f:
        f.write('\n'.join(texts[:20]) + '\n')
  _log(log_path, {'event': 'prompts', 'seconds': time.perf_counter() - t0,
                  **{f'{k}_rows': len(v) for k, v in splits.items()}})

  model = optirag.OptiRAGCTR(bert_config, c.head_hidden)
  params = optirag.init_params(model, jax.random.PRNGKey(c.seed), bert_params)
  k = c.frozen_layers
  L = bert_config.num_layers
  frozen_fn = jax.jit(lambda p, i, m: optirag.frozen_states(bert_config, p, i, m, k))

  def states_of(split):
    x = inputs[split]
    out = []
    for s in range(0, len(x['label']), 64):
      out.append(np.asarray(frozen_fn(params['encoder'], x['input_ids'][s:s + 64],
                                      x['attention_mask'][s:s + 64])).astype(np.float16))
    return np.concatenate(out, axis=1)

  t = time.perf_counter()
  train_states = states_of('train')  # [k', N, T, D] float16
  _log(log_path, {'event': 'frozen_states', 'seconds': time.perf_counter() - t,
                  'shape': list(train_states.shape)})

  trainable, frozen = optirag.split_trainable(params, k, L)
  n_train = len(inputs['train']['label'])
  steps_per_epoch = n_train // c.batch_size
  total = steps_per_epoch * c.epochs
  head_lrs = optirag.head_learning_rates(c.head_lr, L, c.shallow_head_lr_factor)
  tx = optirag.make_optimizer(c.backbone_lr, head_lrs, c.weight_decay, 1.0,
                              int(c.warmup_fraction * total), total)
  opt_state = tx.init(trainable)
  step = jax.jit(optirag.make_train_step(bert_config, tx, k, c.layer_weights),
                 donate_argnums=(0, 1))
  key = jax.random.PRNGKey(c.seed + 1)
  x = inputs['train']
  t = time.perf_counter()
  for epoch in range(c.epochs):
    order = rng.permutation(n_train)
    losses = []
    for s in range(steps_per_epoch):
      b = order[s * c.batch_size:(s + 1) * c.batch_size]
      batch = {'states': train_states[:, b], 'attention_mask': x['attention_mask'][b],
               'label': x['label'][b]}
      trainable, opt_state, loss, per = step(trainable, opt_state, batch,
                                             jax.random.fold_in(key, epoch * 100000 + s))
      losses.append(np.asarray(per))
      if (s + 1) % 50 == 0 or s + 1 == steps_per_epoch:
        _log(log_path, {'event': 'train', 'epoch': epoch, 'step': s + 1,
                        'head_losses': np.mean(losses[-50:], 0).round(4).tolist(),
                        'seconds': round(time.perf_counter() - t, 1)})
  train_seconds = time.perf_counter() - t
  params = optirag.merge_params(trainable, frozen)
  with open(os.path.join(wd, 'params.msgpack'), 'wb') as f:
    f.write(serialization.to_bytes(jax.tree.map(np.asarray, params)))

  results = {'retriever': c.retriever, 'latency': latency, 'train_seconds': train_seconds,
             'config': c.to_dict()}
  eval_config = dataclasses.replace(bert_config, dropout_rate=0.0)
  margins = {}
  for split in ('valid', 'test'):
    x = inputs[split]
    t = time.perf_counter()
    m = optirag.predict_margins(eval_config, params, x['input_ids'], x['attention_mask'],
                                c.eval_batch_size)
    margins[split] = m
    results[split] = {'auc_per_head': [auc(x['label'], m[l]) for l in range(L)],
                      'rows': int(len(x['label'])), 'seconds': time.perf_counter() - t}
    _log(log_path, {'event': 'eval', 'split': split, **results[split]})
  np.savez(os.path.join(wd, 'margins.npz'), valid_margins=margins['valid'],
           test_margins=margins['test'], valid_label=inputs['valid']['label'],
           test_label=inputs['test']['label'], test_input_ids=inputs['test']['input_ids'],
           test_attention_mask=inputs['test']['attention_mask'], valid_rows=splits['valid'],
           test_rows=splits['test'])
  results['total_seconds'] = time.perf_counter() - t0
  with open(os.path.join(wd, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
