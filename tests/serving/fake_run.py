"""A random OptiRAG model and a run directory as scripts/train_optirag.py writes it.

For the tests of the servers and the scripts, and for the doc checks (tests/test_docs.py), which
build a run with ``python -m tests.serving.fake_run PATH``. ``--minilm_shaped`` gives the
all-MiniLM-L6-v2 shapes (6 layers of 384, 30,522 word pieces, 64 tokens) with random weights:
the compute of the real model, for timing on a machine without the trained run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os

import jax
import numpy as np
from flax import serialization

from jaxrec.layers.bert import BertConfig
from jaxrec.models import optirag
from jaxrec.train.metrics import auc

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_layers=4, num_heads=2,
                    intermediate_size=32, max_position=12, dropout_rate=0.0)
MINILM_SHAPED = BertConfig(dropout_rate=0.0)


def random_params(config: BertConfig = CONFIG, seed: int = 0, head_hidden: int = 8,
                  length: int = 10, spread: float = 2.0):
  """Random model params whose heads give every layer's margins mean 0 and standard deviation
  ``spread`` on random prompts of ``length`` tokens, so samples exit at every layer over
  thresholds of a few units (a random encoder alone gives nearly one margin for every input)."""
  params = _init_fn(config, head_hidden)(jax.random.PRNGKey(seed))
  ids, mask = random_prompts(np.random.default_rng(seed + 1000), 64, length, config.vocab_size)
  m = np.asarray(full_margins_fn(config)(params, ids, mask))  # [L, 64]
  scale = spread / np.maximum(m.std(axis=1), 1e-6)  # [L]
  heads = params['heads']
  heads['kernel_2'] = heads['kernel_2'] * scale[:, None, None]
  # margin = logit_yes - logit_no: shift the Yes bias by the scaled mean
  heads['bias_2'] = (heads['bias_2'] * scale[:, None]).at[:, 0].add(-scale * m.mean(axis=1))
  return params


def random_prompts(rng: np.random.Generator, rows: int, length: int, vocab_size: int):
  """``(input_ids, attention_mask)``, ``int32 [rows, length]``: random ids, right padding (id 0)
  after 2..length tokens."""
  ids = rng.integers(1, vocab_size, (rows, length)).astype(np.int32)
  mask = (np.arange(length)[None, :] < rng.integers(2, length + 1, rows)[:, None])
  return ids * mask, mask.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _init_fn(config: BertConfig, head_hidden: int):
  model = optirag.OptiRAGCTR(config, head_hidden)
  return jax.jit(lambda key: optirag.init_params(model, key))


@functools.lru_cache(maxsize=None)
def full_margins_fn(config: BertConfig):
  """``jit(full_depth_margins)`` for ``config``: ``(params, ids, mask) -> [L, B]``."""
  return jax.jit(functools.partial(optirag.full_depth_margins, config))


def make_fake_run(path, seed: int = 0, rows: int = 24, length: int = 10,
                  config: BertConfig = CONFIG, head_hidden: int = 8) -> dict:
  """Writes ``params.msgpack``, ``margins.npz`` and ``results.json`` (with ``bert_config``, so
  the loaders need no MiniLM) for a random model into the new folder ``path``.

  Returns the arrays of ``margins.npz`` (``{valid,test}_{margins,label,input_ids,
  attention_mask}``)."""
  os.makedirs(path)
  params = random_params(config, seed, head_hidden, length)
  rng = np.random.default_rng(seed)
  z = {}
  for split in ('valid', 'test'):
    ids, mask = random_prompts(rng, rows, length, config.vocab_size)
    margins = np.asarray(full_margins_fn(config)(params, ids, mask))  # [L, rows]
    z.update({f'{split}_margins': margins, f'{split}_label': (margins[-1] > 0) ^ (
        rng.random(rows) < 0.3), f'{split}_input_ids': ids, f'{split}_attention_mask': mask})
  np.savez(os.path.join(path, 'margins.npz'), **z)
  with open(os.path.join(path, 'params.msgpack'), 'wb') as f:
    f.write(serialization.msgpack_serialize(jax.device_get(params)))
  per_head = [auc(z['test_label'], m) for m in z['test_margins']]
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump({'retriever': f'r{seed}', 'config': {'head_hidden': head_hidden},
               'bert_config': dataclasses.asdict(config), 'test': {'auc_per_head': per_head}}, f)
  return z


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('path', help='the run directory to create')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--rows', type=int, default=24)
  p.add_argument('--minilm_shaped', action='store_true',
                 help='all-MiniLM-L6-v2 shapes and 64 tokens (default: a tiny encoder)')
  a = p.parse_args(argv)
  if a.minilm_shaped:
    make_fake_run(a.path, a.seed, a.rows, 64, MINILM_SHAPED, head_hidden=128)
  else:
    make_fake_run(a.path, a.seed, a.rows)


if __name__ == '__main__':
  main()
