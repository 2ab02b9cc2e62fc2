"""jaxrec vs TorchRec, side by side: train-step throughput and validation AUC (needs jaxrec[torch]).

    python scripts/compare_torch.py [--models dlrm,dlrm_dcn] [--datasets criteo_like,frappe]
        [--batch_sizes 1024,4096] [--warmup 3] [--steps 8] [--compile_batch_sizes 4096]
        [--epochs criteo_like=1,frappe=1] [--profile_batch_size 4096] [--out docs/torch_comparison.md]

For each dataset and model, one TorchRec model (``torchrec.models.dlrm.DLRM`` or ``DLRM_DCN``,
TorchRec's default initialisation) is built and converted with ``jaxrec.compat.torchrec``, so
both sides start from the same weights and compute the same function:

* throughput: examples/s of one full training step (forward, backward, Adam update, embeddings
  included), median over ``--steps`` timed steps after ``--warmup``; jaxrec is the trainer's
  jitted step (state donated, XLA on every core), TorchRec runs eager once per
  ``--torch_threads`` intra-op thread count and, at ``--compile_batch_sizes``, under
  ``torch.compile`` (default Inductor mode; the first step, compilation included, is printed).
  The frameworks take turns step by step, so a shared machine's load hits all alike; the last
  column compares jaxrec with the fastest TorchRec variant. Inputs are prepared before
  timing on both sides (jaxrec: device arrays; TorchRec: dense tensor and KeyedJaggedTensor).
* quality: each side trains ``--epochs`` epochs from the same weights on the same batches in the
  same order (Adam lr 1e-3, batch 4096, no clipping or regularisation), then scores validation.

Same optimizer on both sides: Adam (beta 0.9 / 0.999, eps 1e-8) over every parameter with dense
embedding gradients (TorchRec ``EmbeddingBagCollection``, PyTorch ``Adam(fused=True)``, its
fastest CPU Adam; jaxrec ``optax.adam`` via ``jaxrec.train.state.make_optimizer``).

Datasets: ``criteo_like`` is ``jaxrec.data.synthetic`` with Criteo's layout (13 dense, 26 sparse
fields) and power-law vocabularies capped at ``--max_vocab``; ``frappe`` is Frappe_x1 from
``--frappe_dir`` plus one constant dense feature (TorchRec's DLRM needs dense features; the
constant goes through the bottom MLP and becomes a learned bias field on both sides).

``--profile_batch_size`` also times the phases of a step on each side (forward, backward, the
embedding lookup and its gradient, the Adam update). ``--out`` writes the tables with the
machine, load average, versions and date between the markers ``BEGIN`` / ``END`` of that file,
keeping the text around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxrec.compat import torchrec as tc
from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.data import synthetic
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.datasets import load_dataset
from jaxrec.data.schema import FeatureSchema
from jaxrec.layers.embedding import FieldEmbedding
from jaxrec.models.dlrm import DLRM
from jaxrec.train import state as state_lib
from jaxrec.train.metrics import ctr_metrics

BEGIN = '<!-- compare_torch.py output: begin -->'
END = '<!-- compare_torch.py output: end -->'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATE = 1e-3
AUC_BATCH = 4096


# ---------------------------------------------------------------------------------------------
# Data.


def criteo_like_config(max_vocab: int) -> synthetic.SyntheticConfig:
  """Criteo's layout: 13 dense and 26 one-hot fields; vocabularies ``max_vocab * i^-1.5``
  (Criteo's own span 3 .. 10M ids; here capped) but at least 4."""
  return synthetic.SyntheticConfig(num_sparse=26, num_dense=13, max_vocab=max_vocab,
                                   vocab_exponent=1.5, min_vocab=4)


def load_criteo_like(max_vocab: int, num_train: int, num_valid: int
                     ) -> tuple[ArrayDataset, ArrayDataset]:
  splits = synthetic.make_splits(criteo_like_config(max_vocab), num_train, num_valid, 0)
  return splits['train'].materialize(), splits['valid'].materialize()


def with_constant_dense(data: ArrayDataset) -> ArrayDataset:
  """``data`` plus one dense feature ``const = 1`` (for models that need dense features)."""
  if data.schema.num_dense:
    raise ValueError(f'{data.name}: already has dense features {data.schema.dense}')
  schema = FeatureSchema(data.schema.sparse, ('const',))
  arrays = data.arrays()
  arrays['dense'] = np.ones((data.num_rows, 1), np.float32)
  return ArrayDataset(schema, name=data.name, **arrays)


def load_frappe(data_dir: str) -> tuple[ArrayDataset, ArrayDataset]:
  data = load_dataset('frappe', data_dir)
  return with_constant_dense(data.splits['train']), with_constant_dense(data.splits['valid'])


# ---------------------------------------------------------------------------------------------
# Models and trainers.


def build_pair(kind: str, schema: FeatureSchema, dim: int, seed: int):
  """``(jaxrec model, params, TorchRec model)`` with the same (TorchRec-initialised) weights."""
  if kind == 'dlrm':
    jax_model = DLRM(schema, embedding_dim=dim, bottom_mlp_units=(512, 256),
                     top_mlp_units=(512, 256), interaction='dot')
  elif kind == 'dlrm_dcn':
    jax_model = DLRMDCN(schema, embedding_dim=dim, bottom_mlp_units=(512, 256),
                        num_cross_layers=3, low_rank=128, top_mlp_units=(512, 256))
  else:
    raise ValueError(f'--models: unknown model {kind!r}; valid: dlrm, dlrm_dcn')
  torch.manual_seed(seed)
  torch_model = tc.torchrec_model_like(jax_model)
  return jax_model, tc.params_from_torchrec(torch_model, jax_model), torch_model


class JaxTrainer:
  """The jaxrec trainer's jitted step (state donated) and eval step."""

  def __init__(self, model, params, example: dict):
    cfg = state_lib.OptimConfig(learning_rate=LEARNING_RATE, max_grad_norm=0.0)
    tx = state_lib.make_optimizer(cfg)
    state, mask = state_lib.create_train_state(model, example, tx, seed=0)
    self.state = state.replace(params=params, opt_state=tx.init(params))
    self._step = jax.jit(state_lib.make_train_step(model, tx, mask, cfg), donate_argnums=0)
    self._eval = jax.jit(state_lib.make_eval_step(model))

  def prepare(self, batch: dict):
    return jax.device_put(batch)

  def step(self, prepared) -> None:
    self.state, metrics = self._step(self.state, prepared)
    jax.block_until_ready(metrics['loss'])

  def logits(self, batch: dict) -> np.ndarray:
    return np.asarray(self._eval(self.state, batch))


class TorchTrainer:
  """A TorchRec model (eager or ``torch.compile`` d) with fused Adam and jaxrec's loss, run with
  ``threads`` intra-op threads (set before every step: several trainers take turns)."""

  def __init__(self, model: torch.nn.Module, schema: FeatureSchema, compile_model: bool,
               threads: int):
    self.model = model
    self.schema = schema
    self.threads = threads
    self._run = torch.compile(model) if compile_model else model
    self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                      eps=1e-8, fused=True)

  def prepare(self, batch: dict):
    dense, kjt = tc.batch_to_torchrec(batch, self.schema)
    kjt.offsets()  # fill the KJT's lazy caches now, so every prepared batch looks alike
    kjt.sync()
    return dense, kjt, torch.from_numpy(batch['label']), torch.from_numpy(batch['weight'])

  def step(self, prepared) -> None:
    torch.set_num_threads(self.threads)
    tc.torch_train_step(self._run, self.optimizer, *prepared)

  def logits(self, batch: dict) -> np.ndarray:
    torch.set_num_threads(self.threads)
    dense, kjt = tc.batch_to_torchrec(batch, self.schema)
    with torch.no_grad():
      return self.model(dense, kjt)[:, 0].numpy()


# ---------------------------------------------------------------------------------------------
# Measurements.


def throughput(trainers: dict, batches: list[dict], warmup: int, steps: int) -> dict:
  """Interleaved timing: step ``i`` of every trainer runs before step ``i + 1`` of any.

  Returns ``name -> {'examples_per_sec', 'step_ms', 'first_step_s'}`` (the first step includes
  compilation).
  """
  prepared = {n: [t.prepare(b) for b in batches] for n, t in trainers.items()}
  times = {n: [] for n in trainers}
  for i in range(warmup + steps):
    for name, trainer in trainers.items():
      t0 = time.perf_counter()
      trainer.step(prepared[name][i % len(batches)])
      times[name].append(time.perf_counter() - t0)
  out = {}
  for name, ts in times.items():
    med = statistics.median(ts[warmup:])
    out[name] = {'examples_per_sec': len(batches[0]['label']) / med, 'step_ms': med * 1e3,
                 'first_step_s': ts[0]}
  return out


def train_and_score(trainer, train: ArrayDataset, valid: ArrayDataset, epochs: int) -> dict:
  """Trains ``epochs`` epochs (shuffle seed 0, the same order for every trainer) and scores."""
  for epoch in range(epochs):
    for batch in train.batches(AUC_BATCH, shuffle=True, seed=0, epoch=epoch):
      trainer.step(trainer.prepare(batch))
  logits, labels, weights = [], [], []
  for batch in valid.batches(AUC_BATCH):
    logits.append(trainer.logits(batch))
    labels.append(batch['label'])
    weights.append(batch['weight'])
  metrics = ctr_metrics(np.concatenate(labels), np.concatenate(logits), np.concatenate(weights))
  return metrics


def _median_time(fn: Callable[[], None], warmup: int, steps: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def profile_pair(jax_model, params, torch_model, schema: FeatureSchema, batch: dict,
                 warmup: int, steps: int, threads: int) -> dict:
  """Milliseconds per phase of a training step, per framework (TorchRec eager, ``threads``).

  Phases: ``forward`` (loss, train mode), ``forward+backward``, ``optimizer`` (the Adam update
  alone) and, for jaxrec, its split into embedding tables and the rest; ``embedding
  fwd+bwd`` is the lookup (gather) and its gradient (scatter-add) alone.
  """

  dev = jax.device_put(batch)

  def loss(p, b):
    logits = jax_model.apply({'params': p}, state_lib.features(b), train=True)
    return state_lib.weighted_bce(logits, b['label'], b['weight'])

  tx = optax.adam(LEARNING_RATE)
  emb = {'embedding': params['embedding']}
  rest = {k: v for k, v in params.items() if k != 'embedding'}
  grads = jax.jit(jax.grad(loss))(params, dev)

  def update(p, o, g):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  def emb_loss(e, b):
    x = FieldEmbedding(schema, jax_model.embedding_dim).apply({'params': e['embedding']}, b)
    return (x * x).sum()

  def timed_update(p, g) -> float:
    """The update with parameters and Adam state donated and carried, as in the train step."""
    fn = jax.jit(update, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, p), tx.init(p)]

    def one():
      carry[0], carry[1] = fn(carry[0], carry[1], g)
      jax.block_until_ready(carry[0])

    return _median_time(one, warmup, steps)

  fns = {
      'forward': (jax.jit(loss), (params, dev)),
      'forward+backward': (jax.jit(jax.value_and_grad(loss)), (params, dev)),
      'embedding fwd+bwd': (jax.jit(jax.grad(emb_loss)), (emb, dev)),
  }
  out = {'jaxrec': {name: _median_time(lambda f=f, a=a: jax.block_until_ready(f(*a)), warmup,
                                       steps) for name, (f, a) in fns.items()}}
  out['jaxrec'].update({
      'optimizer': timed_update(params, grads),
      'optimizer (tables)': timed_update(emb, {'embedding': grads['embedding']}),
      'optimizer (rest)': timed_update(rest, {k: v for k, v in grads.items() if k != 'embedding'}),
  })
  trainer = TorchTrainer(torch_model, schema, compile_model=False, threads=threads)
  torch.set_num_threads(threads)
  dense, kjt, label, weight = trainer.prepare(batch)

  def t_loss():
    logits = torch_model(dense, kjt)[:, 0]
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction='none')
    return torch.sum(per_row * weight) / torch.clamp(torch.sum(weight), min=1.0)

  def t_forward():
    with torch.no_grad():
      t_loss()

  def t_backward():
    trainer.optimizer.zero_grad(set_to_none=True)
    t_loss().backward()

  def t_embedding():
    ebc = torch_model.sparse_arch
    x = ebc(kjt)
    (x * x).sum().backward()

  t_backward()
  out[f'TorchRec eager {threads}t'] = {
      'forward': _median_time(t_forward, warmup, steps),
      'forward+backward': _median_time(t_backward, warmup, steps),
      'embedding fwd+bwd': _median_time(t_embedding, warmup, steps),
      'optimizer': _median_time(trainer.optimizer.step, warmup, steps),
  }
  return out


def profile_table(rows: list[dict]) -> str:
  phases = ('forward', 'forward+backward', 'embedding fwd+bwd', 'optimizer',
            'optimizer (tables)', 'optimizer (rest)')
  lines = ['| dataset | model | batch | framework | ' + ' | '.join(phases) + ' |',
           '|---|---|---:|---|' + '---:|' * len(phases)]
  for r in rows:
    for fw, times in r['times'].items():
      cells = ' | '.join(f'{times[p]:.0f}' if p in times else '-' for p in phases)
      lines.append(f"| {r['dataset']} | {r['model']} | {r['batch_size']} | {fw} | {cells} |")
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Main.


@dataclasses.dataclass
class Row:
  dataset: str
  model: str
  batch_size: int
  results: dict  # framework -> throughput dict


def _fmt_tp(r: dict | None) -> str:
  return '-' if r is None else f"{r['examples_per_sec']:,.0f} ({r['step_ms']:.0f} ms)"


def throughput_table(rows: list[Row]) -> str:
  """One column per framework; the last compares jaxrec with the fastest TorchRec variant."""
  names = [n for n in dict.fromkeys(k for r in rows for k in r.results) if n != 'jaxrec']
  lines = ['| dataset | model | batch | jaxrec jit | ' + ' | '.join(names) +
           ' | jaxrec / fastest TorchRec |', '|---|---|---:|' + '---:|' * (len(names) + 2)]
  for r in rows:
    jx = r.results['jaxrec']
    best = max(v['examples_per_sec'] for k, v in r.results.items() if k != 'jaxrec')
    cells = ' | '.join(_fmt_tp(r.results.get(n)) for n in names)
    lines.append(f"| {r.dataset} | {r.model} | {r.batch_size} | {_fmt_tp(jx)} | {cells} | "
                 f"{jx['examples_per_sec'] / best:.2f}x |")
  return '\n'.join(lines)


def quality_table(rows: list[dict]) -> str:
  lines = ['| dataset | model | epochs | jaxrec AUC | TorchRec AUC | jaxrec logloss | '
           'TorchRec logloss |', '|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    j, t = r['jaxrec'], r['torchrec']
    lines.append(f"| {r['dataset']} | {r['model']} | {r['epochs']} | {j['auc']:.5f} | "
                 f"{t['auc']:.5f} | {j['logloss']:.5f} | {t['logloss']:.5f} |")
  return '\n'.join(lines)


def machine_line() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
  return f'{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, no GPU'


def versions_line() -> str:
  import fbgemm_gpu  # pylint: disable=g-import-not-at-top
  import torchrec  # pylint: disable=g-import-not-at-top
  return (f'jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, '
          f'torchrec {torchrec.__version__}, fbgemm-gpu-cpu {fbgemm_gpu.__version__}')


def _parse_epochs(text: str) -> dict[str, int]:
  out = {}
  for item in filter(None, text.split(',')):
    name, _, value = item.partition('=')
    if not value.isdigit():
      raise ValueError(f'--epochs: expected name=int items, got {item!r}')
    out[name] = int(value)
  return out


def _datasets(args) -> Iterator[tuple[str, ArrayDataset, ArrayDataset]]:
  for name in filter(None, args.datasets.split(',')):
    if name == 'criteo_like':
      yield (name, *load_criteo_like(args.max_vocab, args.criteo_train_rows,
                                     args.criteo_valid_rows))
    elif name == 'frappe':
      yield (name, *load_frappe(args.frappe_dir))
    else:
      raise ValueError(f'--datasets: unknown dataset {name!r}; valid: criteo_like, frappe')


def run(args, log: Callable[[str], None]) -> tuple[list[Row], list[dict], list[dict]]:
  tp_rows, q_rows, prof_rows = [], [], []
  epochs = _parse_epochs(args.epochs)
  batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
  compile_sizes = {int(b) for b in args.compile_batch_sizes.split(',') if b}
  threads = [int(n) for n in args.torch_threads.split(',') if n]
  for name, train, valid in _datasets(args):
    log(f'{name}: {train.num_rows:,} train / {valid.num_rows:,} valid rows, '
        f'{sum(train.schema.vocab_sizes):,} embedding rows')
    for kind in filter(None, args.models.split(',')):
      for bs in batch_sizes:
        jax_model, params, torch_model = build_pair(kind, train.schema, args.embedding_dim, 0)
        trainers = {'jaxrec': JaxTrainer(jax_model, params, next(train.batches(bs)))}
        for i, n in enumerate(threads):
          model = torch_model if i == 0 else build_pair(kind, train.schema, args.embedding_dim,
                                                        0)[2]
          trainers[f'TorchRec eager {n}t'] = TorchTrainer(model, train.schema, False, n)
        if bs in compile_sizes:
          other = build_pair(kind, train.schema, args.embedding_dim, 0)[2]
          trainers[f'TorchRec compile {threads[0]}t'] = TorchTrainer(other, train.schema, True,
                                                                     threads[0])
        batches = [b for _, b in zip(range(4), train.batches(bs, shuffle=True, seed=1))]
        res = throughput(trainers, batches, args.warmup, args.steps)
        tp_rows.append(Row(name, kind, bs, res))
        log(throughput_table(tp_rows[-1:]).splitlines()[-1] + '  first steps (s): ' +
            ', '.join(f"{k} {v['first_step_s']:.1f}" for k, v in res.items()))
        del trainers
      if args.profile_batch_size:
        bs = args.profile_batch_size
        jax_model, params, torch_model = build_pair(kind, train.schema, args.embedding_dim, 0)
        times = profile_pair(jax_model, params, torch_model, train.schema,
                             next(train.batches(bs, shuffle=True, seed=1)), args.warmup,
                             args.steps, threads[0])
        prof_rows.append({'dataset': name, 'model': kind, 'batch_size': bs, 'times': times})
        log(profile_table(prof_rows[-1:]))
      if epochs.get(name, 0) > 0:
        jax_model, params, torch_model = build_pair(kind, train.schema, args.embedding_dim, 0)
        q = {'dataset': name, 'model': kind, 'epochs': epochs[name],
             'jaxrec': train_and_score(JaxTrainer(jax_model, params, next(train.batches(
                 AUC_BATCH))), train, valid, epochs[name]),
             'torchrec': train_and_score(TorchTrainer(torch_model, train.schema, False,
                                                      threads[0]), train, valid, epochs[name])}
        q_rows.append(q)
        log(quality_table([q]).splitlines()[-1])
  return tp_rows, q_rows, prof_rows


def _load_average() -> str:
  return ' / '.join(f'{x:.1f}' for x in os.getloadavg())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', default='dlrm,dlrm_dcn')
  p.add_argument('--datasets', default='criteo_like,frappe')
  p.add_argument('--batch_sizes', default='1024,4096')
  p.add_argument('--compile_batch_sizes', default='4096',
                 help='batch sizes at which TorchRec also runs under torch.compile ("" for none)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--epochs', default='criteo_like=1,frappe=1',
                 help='training epochs for the AUC comparison per dataset (0 or absent: skip)')
  p.add_argument('--embedding_dim', type=int, default=64)
  p.add_argument('--max_vocab', type=int, default=200_000)
  p.add_argument('--criteo_train_rows', type=int, default=200_000)
  p.add_argument('--criteo_valid_rows', type=int, default=50_000)
  p.add_argument('--frappe_dir', default=os.path.join(REPO, '..', 'shared', 'data', 'frappe'))
  p.add_argument('--profile_batch_size', type=int, default=4096,
                 help='time the phases of one step at this batch size (0: skip)')
  p.add_argument('--torch_threads', default=f'1,{os.cpu_count()}',
                 help='TorchRec eager runs once per intra-op thread count listed; torch.compile, '
                      'the profile and the AUC run use the first (jaxrec uses every core)')
  p.add_argument('--out', default='', help='also write the tables (Markdown) to this file')
  args = p.parse_args(argv)
  load_before = _load_average()
  started = time.time()
  tp_rows, q_rows, prof_rows = run(args, lambda s: print(s, flush=True))
  text = ('### Train-step throughput: examples/s (median step time)\n\n' +
          throughput_table(tp_rows) + '\n\n### Validation quality after the same training\n\n' +
          quality_table(q_rows) + '\n')
  if prof_rows:
    text += ('\n### Where the time goes: ms per phase of one step (medians)\n\n' +
             profile_table(prof_rows) + '\n')
  print(text)
  if args.out:
    header = (f'Command: `python scripts/compare_torch.py {" ".join(sys.argv[1:])}`  \n'
              f'Machine: {machine_line()}  \n'
              f'Versions: {versions_line()}  \n'
              f'Date: {datetime.date.today().isoformat()}; run time {time.time() - started:.0f} s;'
              f' load average (1/5/15 min) {load_before} at start, {_load_average()} at end.\n\n')
    write_between_markers(args.out, header + text)


def write_between_markers(path: str, block: str) -> None:
  """Writes ``block`` between ``BEGIN`` and ``END`` in ``path``, keeping the text around them
  (a new file holds just the block)."""
  text = f'{BEGIN}\n{block}{END}\n'
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = f.read()
    if BEGIN in old and END in old:
      text = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1:]
    else:
      raise ValueError(f'{path} exists without the markers {BEGIN!r} / {END!r}; refusing to '
                       'overwrite it')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


if __name__ == '__main__':
  main()
