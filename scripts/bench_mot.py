"""Mixed-modal decoder LMs against dense: compiled FLOPs, train-step time and parameters.

    python scripts/bench_mot.py [--sizes xs,s,m] [--batch_size 8] [--steps 10] [--warmup 3]
        [--variants dense,mot,mot_every_modality] [--out docs/mot_bench]

``--variants`` may also name the MoMa study's models (``jaxrec.train.config.MOMA_VARIANTS``:
moe, moe_mod, moma, moma_mod; ``moma_config``), each measured the same way (their goal column
applies the same limits: compute-matched to dense; MoD variants are cheaper by design).

For each size of ``jaxrec.train.config.MIXED_MODAL_SIZES``, builds the dense (``untie='none'``) and
the MoT (``untie='mot'``, grouped routing by the static per-modality counts) ``decoder_lm`` of
``mixed_modal_config`` on 256-token rows of the default data's vocabulary (2048 BPE tokens + 5
special + 256 image codes; no data is read: rows are random ids laid out as the data pipeline
lays them out, text with two ``BOI <49 codes> EOI`` blocks at random places, so every row holds
158 text and 98 image tokens), and the trainer's step (``jaxrec.train.state``: the config's
Adam with clipping and cosine schedule, the language-model loss), then reports

* compiled FLOPs (XLA ``cost_analysis``) of the forward pass and of the whole train step
  (forward, backward, Adam update). XLA counts a scanned loop body once, so these are compiled
  from the model with ``scan_layers=False``;
* the median wall time of ``--steps`` train steps after ``--warmup`` (the model as training runs
  it, ``scan_layers=True``; the models' steps alternate so they see the same load);
* parameters, and the analytic forward matmul FLOPs (``mixed_modal_lm_flops``).

Goals: MoT's compiled FLOPs (forward and train step) within 1.1x of dense, its step time within
1.25x: PASS / FAIL per size. The smallest size also gets MoT with ``modality_capacity=None`` (every
modality's weights on every token, the fallback), to show what the grouped routing saves.
Writes ``{out}.md`` (machine, load average, command) and ``{out}.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from jaxrec.data.mixed_modal import pack_row, row_arrays
from jaxrec.data.schema import SequenceSchema
from jaxrec.models.mixed_modal_lm import DecoderLM, check_modality_counts, mixed_modal_lm_flops
from jaxrec.train import loop
from jaxrec.train import state as state_lib
from jaxrec.train.config import MIXED_MODAL_SIZES, MOMA_VARIANTS, mixed_modal_config, moma_config
from jaxrec.train.study import machine_line

FLOPS_GOAL, TIME_GOAL = 1.1, 1.25
SEQ_LEN, IMAGES, TEXT_VOCAB, CODEBOOK = 256, 2, 2048, 256
VARIANTS = ('dense', 'mot', 'mot_every_modality')
COLUMNS = ('size', 'variant', 'batch', 'params', 'fwd_flops', 'train_flops', 'analytic_fwd_flops',
           'step_ms', 'fwd_flops_ratio', 'train_flops_ratio', 'step_time_ratio', 'goal')


class EveryModalityMoT(DecoderLM):
  """``DecoderLM(untie='mot')`` with ``modality_capacity=None``: every modality's weights run on
  every token (the fallback the grouped routing replaces)."""

  def lm(self, **kwargs):
    parent, name = kwargs.pop('parent', None), kwargs.pop('name', None)
    return super().lm(**kwargs).clone(parent=parent, name=name, modality_capacity=None)


def random_batch(schema: SequenceSchema, batch: int, seed: int) -> dict:
  """Rows laid out as the data pipeline's (random text, ``images_per_sequence`` blocks of
  ``BOI codes EOI`` cut in at random places; no captions needed for costs)."""
  rng = np.random.default_rng(seed)
  block_len = schema.tokens_per_image + 2
  text_len = schema.seq_len + 1 - schema.images_per_sequence * block_len
  rows = []
  for _ in range(batch):
    text = rng.integers(0, schema.text_vocab_size, text_len).astype(np.int32)
    blocks = [np.concatenate([[schema.boi_id], schema.image_offset + rng.integers(
        0, schema.codebook_size, schema.tokens_per_image), [schema.eoi_id]]).astype(np.int32)
              for _ in range(schema.images_per_sequence)]
    cuts = np.sort(rng.integers(0, text_len + 1, schema.images_per_sequence))
    tokens, _ = pack_row(text, blocks, cuts, schema.seq_len + 1, schema.pad_id)
    rows.append(row_arrays(tokens, schema))
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  check_modality_counts(out['modality'], schema.modality_counts)
  out['weight'] = np.ones(batch, np.float32)
  return out


def build(size: str, variant: str, schema: SequenceSchema, batch: dict, scan_layers: bool,
          abstract: bool):
  """``(model, train_step, state)`` as ``scripts/train.py`` builds them; ``abstract``: the state
  as shapes only (enough to compile and count FLOPs), else initialised (jitted, as the trainer)."""
  if variant in MOMA_VARIANTS:
    config = moma_config(variant, size)
  else:
    config = mixed_modal_config('mot', size)
  config.model_kwargs.scan_layers = scan_layers
  model = loop.make_model(config, schema)
  if variant == 'mot_every_modality':
    model = EveryModalityMoT(**{f: getattr(model, f) for f in model.__dataclass_fields__
                                if f not in ('parent', 'name')})
  task = loop.make_task(config, schema)
  ocfg = loop.optim_config(config, total_steps=1000)
  recipe = loop.make_recipe(config, task, total_steps=1000)
  tx = state_lib.make_optimizer(ocfg)
  example = state_lib.zero_features(batch)
  init = lambda: state_lib.init_boxed_state(model, example, tx, config.seed, recipe)
  boxed = jax.eval_shape(init) if abstract else jax.jit(init)()
  mask = state_lib.embedding_mask(boxed.params)
  loss_and_grad = state_lib.make_loss_and_grad(model, mask, ocfg, task=task, recipe=recipe)
  return (model, state_lib.make_train_step(model, tx, mask, ocfg, loss_and_grad),
          nn.meta.unbox(boxed))


def compiled_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def measure_size(size: str, variants, schema: SequenceSchema, a) -> list[dict]:
  batch = random_batch(schema, a.batch_size, a.seed)
  feats = state_lib.features(batch)
  rows, steppers = [], []
  for variant in variants:
    model, step, shapes = build(size, variant, schema, batch, scan_layers=False, abstract=True)
    fwd = compiled_flops(lambda p, f, m=model: m.apply({'params': p}, f, train=False),
                         shapes.params, feats)
    train = compiled_flops(step, shapes, batch)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.params))
    analytic = a.batch_size * mixed_modal_lm_flops(model.lm(), schema.seq_len)
    rows.append({'size': size, 'variant': variant, 'batch': a.batch_size, 'params': params,
                 'fwd_flops': fwd, 'train_flops': train, 'analytic_fwd_flops': analytic})
    _, step, state = build(size, variant, schema, batch, scan_layers=True, abstract=False)
    steppers.append([jax.jit(step, donate_argnums=0), state])
    print(f'{size} {variant}: {params:,} params, forward {fwd / 1e9:.3f} GFLOP, train step '
          f'{train / 1e9:.3f} GFLOP', flush=True)
  times = [[] for _ in steppers]
  for i in range(a.warmup + a.steps):
    for k, s in enumerate(steppers):  # alternating: every model sees the same load
      t0 = time.perf_counter()
      s[1], metrics = s[0](s[1], batch)
      jax.block_until_ready(metrics['loss'])
      if i >= a.warmup:
        times[k].append(time.perf_counter() - t0)
  dense = rows[0]
  for row, t in zip(rows, times):
    row['step_ms'] = 1e3 * statistics.median(t)
    row['fwd_flops_ratio'] = row['fwd_flops'] / dense['fwd_flops']
    row['train_flops_ratio'] = row['train_flops'] / dense['train_flops']
    row['step_time_ratio'] = row['step_ms'] / dense['step_ms']
    ok = (max(row['fwd_flops_ratio'], row['train_flops_ratio']) <= FLOPS_GOAL
          and row['step_time_ratio'] <= TIME_GOAL)
    row['goal'] = '' if row['variant'] == 'dense' else 'PASS' if ok else 'FAIL'
  return rows


def markdown(rows: list[dict], a, load_start: float, load_end: float, command: str) -> str:
  g = 1e9
  lines = [
      '# Mixed-modal decoders vs dense: compiled FLOPs and train-step time', '',
      f'Batch {a.batch_size} x {SEQ_LEN} tokens (158 text, 98 image per row), vocabulary '
      f'{TEXT_VOCAB} + 5 + {CODEBOOK} = {TEXT_VOCAB + 5 + CODEBOOK}; the `decoder_lm` of '
      '`mixed_modal_config` with its Adam (clip, cosine schedule) and language-model loss. FLOPs: '
      'XLA `cost_analysis` of the compiled forward and of the whole train step (forward, backward, '
      'Adam), compiled with `scan_layers=False` because XLA counts a scanned loop body once. Step '
      f'time: median of {a.steps} steps after {a.warmup} warm-up, the models alternating, compiled '
      'as training runs them (`scan_layers=True`). Analytic: `mixed_modal_lm_flops` (forward '
      'matmuls only) for the batch. Goals: FLOPs (forward and train step) within '
      f'{FLOPS_GOAL}x of dense, step time within {TIME_GOAL}x. `mot_every_modality` is MoT with '
      '`modality_capacity=None` (every modality on every token), measured at the smallest size '
      'only.', '',
      machine_line(load_start), f'load average at end {load_end:.1f}', '',
      f'Command: `{command}`', '',
      '| size | variant | params | fwd GFLOP | fwd / dense | train-step GFLOP | train / dense | '
      'analytic fwd GFLOP | step ms | step time / dense | goal |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for r in rows:
    lines.append(
        f"| {r['size']} | {r['variant']} | {r['params']:,} | {r['fwd_flops'] / g:.3f} | "
        f"{r['fwd_flops_ratio']:.3f} | {r['train_flops'] / g:.3f} | "
        f"{r['train_flops_ratio']:.3f} | {r['analytic_fwd_flops'] / g:.3f} | "
        f"{r['step_ms']:.1f} | {r['step_time_ratio']:.2f} | {r['goal']} |")
  return '\n'.join(lines) + '\n'


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='xs,s,m', help=f'of {list(MIXED_MODAL_SIZES)}')
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--seed', type=int, default=0, help='seeds the random rows')
  p.add_argument('--variants', default=','.join(VARIANTS),
                 help=f'dense first, then any of {VARIANTS[1:] + tuple(MOMA_VARIANTS)[1:]}')
  p.add_argument('--out', default='', help='writes {out}.md and {out}.csv')
  a = p.parse_args(argv)
  a.sizes = [s for s in a.sizes.split(',') if s]
  bad = [s for s in a.sizes if s not in MIXED_MODAL_SIZES]
  if bad or not a.sizes:
    p.error(f'--sizes {bad or a.sizes}: each must be one of {list(MIXED_MODAL_SIZES)}')
  a.variants = [v for v in a.variants.split(',') if v]
  known = set(VARIANTS) | set(MOMA_VARIANTS)
  if not a.variants or a.variants[0] != 'dense' or any(v not in known for v in a.variants):
    p.error(f'--variants {a.variants}: dense first, then any of {sorted(known - {"dense"})}')
  if a.batch_size < 1 or a.steps < 1 or a.warmup < 0:
    p.error('--batch_size and --steps must be >= 1, --warmup >= 0')
  return a


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  a = parse(argv)
  load_start = os.getloadavg()[0]
  schema = SequenceSchema(seq_len=SEQ_LEN, images_per_sequence=IMAGES, text_vocab_size=TEXT_VOCAB,
                          codebook_size=CODEBOOK)
  smallest = min(a.sizes, key=list(MIXED_MODAL_SIZES).index)
  rows = []
  for size in a.sizes:
    variants = [v for v in a.variants if v != 'mot_every_modality' or size == smallest]
    rows += measure_size(size, variants, schema, a)
  text = markdown(rows, a, load_start, os.getloadavg()[0],
                  'python scripts/bench_mot.py ' + shlex.join(argv))
  print(text)
  if a.out:
    os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)
    with open(a.out + '.md', 'w', encoding='utf-8') as f:
      f.write(text)
    with open(a.out + '.csv', 'w', newline='', encoding='utf-8') as f:
      w = csv.DictWriter(f, fieldnames=COLUMNS)
      w.writeheader()
      w.writerows(rows)
    print(f'wrote {a.out}.md and {a.out}.csv')


if __name__ == '__main__':
  main()
