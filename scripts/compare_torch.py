"""jaxrec vs TorchRec (or plain PyTorch), side by side: train-step throughput and validation AUC.

    python scripts/compare_torch.py [--models dlrm,dlrm_dcn] [--datasets criteo_like,frappe]
        [--batch_sizes 1024,4096] [--warmup 3] [--steps 8] [--compile_batch_sizes 4096]
        [--epochs criteo_like=1,frappe=1] [--profile_batch_size 4096] [--out docs/torch_comparison.md]
        [--baseline torchrec|plain] [--torch_device cpu|cuda]

Baselines (``--baseline``):

* ``torchrec`` (default; needs ``jaxrec[torch]`` with TorchRec and fbgemm-gpu): for each dataset
  and model, one TorchRec model (``torchrec.models.dlrm.DLRM`` or ``DLRM_DCN``, TorchRec's
  default initialisation) is built and converted with ``jaxrec.compat.torchrec``. CPU only.
* ``plain`` (needs torch alone, for machines where TorchRec cannot be installed, e.g. a CUDA
  machine without fbgemm-gpu): the jaxrec model's parameters are drawn with TorchRec's default
  initialisation (``jaxrec.compat.torchrec_init``: the same distributions as the TorchRec
  baseline, not the same draws) and copied into the same architecture in plain ``torch.nn``
  (``jaxrec.compat.plain_torch``: one ``nn.EmbeddingBag`` per field, jaxrec's field order).
  Its columns read "PyTorch" instead of "TorchRec". ``--torch_device cuda`` puts the PyTorch
  model and its prepared batches on the GPU (jaxrec runs on jax's default device, a GPU when jax
  has one); a timed step then ends with ``torch.cuda.synchronize()`` (jaxrec's blocks until
  ready), and there is a single eager variant (``--torch_threads`` matters only on CPU). On a
  GPU both sides use one float32 matmul precision, ``--gpu_matmul`` (default full float32;
  jax's own default there is TF32, PyTorch's float32).

Either way both sides start from the same weights and compute the same function:

* throughput: examples/s of one full training step (forward, backward, Adam update, embeddings
  included), median over ``--steps`` timed steps after ``--warmup``; jaxrec is the trainer's
  jitted step (state donated, XLA on every core), the baseline runs eager once per
  ``--torch_threads`` intra-op thread count (once on CUDA) and, at ``--compile_batch_sizes``,
  under ``torch.compile`` (default Inductor mode; the first step, compilation included, is
  printed). The frameworks take turns step by step, so a shared machine's load hits all alike;
  the last column compares jaxrec with the fastest baseline variant. Inputs are prepared before
  timing on both sides (jaxrec: device arrays; TorchRec: dense tensor and KeyedJaggedTensor;
  plain PyTorch: the tensors of ``plain_torch.batch_to_plain_torch`` on ``--torch_device``).
* quality: each side trains ``--epochs`` epochs from the same weights on the same batches in the
  same order (Adam lr 1e-3, batch 4096, no clipping or regularisation), then scores validation.

Same optimizer on both sides: Adam (beta 0.9 / 0.999, eps 1e-8) over every parameter with dense
embedding gradients (TorchRec ``EmbeddingBagCollection`` or ``nn.EmbeddingBag``, PyTorch
``Adam(fused=True)``, its fastest Adam on CPU and GPU; jaxrec ``optax.adam`` via
``jaxrec.train.state.make_optimizer``).

Datasets: ``criteo_like`` is ``jaxrec.data.synthetic`` with Criteo's layout (13 dense, 26 sparse
fields) and power-law vocabularies capped at ``--max_vocab``; ``frappe`` is Frappe_x1 from
``--frappe_dir`` plus one constant dense feature (TorchRec's DLRM needs dense features; the
constant goes through the bottom MLP and becomes a learned bias field on both sides; the plain
baseline gets the same input).

``--profile_batch_size`` also times the phases of a step on each side (forward, backward, the
embedding lookup and its gradient, the Adam update). ``--out`` writes the tables with the
machine, load average, versions and date between the markers ``BEGIN`` / ``END`` of that file,
keeping the text around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterator, Optional

# jax and torch may share one GPU: jax allocates on demand instead of taking 75% of it up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jaxrec.compat import plain_torch as pt
from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.compat.torchrec_init import torchrec_init
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
# --baseline -> the name its columns carry.
BASELINES = {'torchrec': 'TorchRec', 'plain': 'PyTorch'}


def _torchrec():
  """``jaxrec.compat.torchrec``, imported on first use: only ``--baseline torchrec`` needs it."""
  from jaxrec.compat import torchrec as tc  # pylint: disable=g-import-not-at-top
  return tc


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


def jax_model_of(kind: str, schema: FeatureSchema, dim: int):
  """The jaxrec model ``kind`` compared here (DLRM: dot interaction, ReLU, no BatchNorm)."""
  if kind == 'dlrm':
    return DLRM(schema, embedding_dim=dim, bottom_mlp_units=(512, 256),
                top_mlp_units=(512, 256), interaction='dot')
  if kind == 'dlrm_dcn':
    return DLRMDCN(schema, embedding_dim=dim, bottom_mlp_units=(512, 256),
                   num_cross_layers=3, low_rank=128, top_mlp_units=(512, 256))
  raise ValueError(f'--models: unknown model {kind!r}; valid: dlrm, dlrm_dcn')


def build_pair(kind: str, schema: FeatureSchema, dim: int, seed: int, baseline: str = 'torchrec',
               device: str = 'cpu'):
  """``(jaxrec model, params, torch model)`` with the same (TorchRec-initialised) weights.

  ``baseline='torchrec'``: a TorchRec model (``torch.manual_seed(seed)``, TorchRec's own init)
  and its weights converted to jaxrec. ``'plain'``: jaxrec parameters drawn by
  ``torchrec_init`` (key ``seed``) and copied into a plain PyTorch model on ``device``.
  """
  jax_model = jax_model_of(kind, schema, dim)
  if baseline == 'torchrec':
    tc = _torchrec()
    torch.manual_seed(seed)
    torch_model = tc.torchrec_model_like(jax_model)
    return jax_model, tc.params_from_torchrec(torch_model, jax_model), torch_model
  if baseline != 'plain':
    raise ValueError(f'--baseline: unknown baseline {baseline!r}; valid: {sorted(BASELINES)}')
  shapes = jax.eval_shape(functools.partial(jax_model.init, train=False), jax.random.key(0),
                          pt.example_batch(schema))
  params = torchrec_init(nn.unbox(shapes)['params'], jax.random.key(seed))
  torch_model = pt.plain_torch_like(jax_model)
  pt.params_to_plain_torch(params, jax_model, torch_model)
  return jax_model, params, torch_model.to(device)


class JaxTrainer:
  """The jaxrec trainer's jitted step (state donated) and eval step."""

  def __init__(self, model, params, example: dict):
    cfg = state_lib.OptimConfig(learning_rate=LEARNING_RATE, max_grad_norm=0.0)
    tx = state_lib.make_optimizer(cfg)
    # create_train_state(model, example, tx, seed=0) with ``params``, without running the
    # (eager, slow) initialisers whose output would be replaced: the mask needs shapes only.
    boxed = jax.eval_shape(lambda: state_lib.init_boxed_state(model, example, tx, 0))
    if boxed.batch_stats:
      raise ValueError(f'{type(model).__name__}: models with BatchNorm are not compared here')
    mask = state_lib.embedding_mask(boxed.params)
    self.state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
        rng=jax.random.split(jax.random.PRNGKey(0))[1])
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
    dense, kjt = _torchrec().batch_to_torchrec(batch, self.schema)
    kjt.offsets()  # fill the KJT's lazy caches now, so every prepared batch looks alike
    kjt.sync()
    return dense, kjt, torch.from_numpy(batch['label']), torch.from_numpy(batch['weight'])

  def step(self, prepared) -> None:
    torch.set_num_threads(self.threads)
    _torchrec().torch_train_step(self._run, self.optimizer, *prepared)

  def logits(self, batch: dict) -> np.ndarray:
    torch.set_num_threads(self.threads)
    dense, kjt = _torchrec().batch_to_torchrec(batch, self.schema)
    with torch.no_grad():
      return self.model(dense, kjt)[:, 0].numpy()

  def loss(self, prepared) -> torch.Tensor:
    """jaxrec's loss of the eager model on a prepared batch (for the profile)."""
    dense, kjt, label, weight = prepared
    return pt.weighted_bce(self.model(dense, kjt)[:, 0], label, weight)

  def embeddings(self, prepared) -> torch.Tensor:
    """The pooled embeddings of a prepared batch (the EmbeddingBagCollection alone)."""
    return self.model.sparse_arch(prepared[1])

  def sync(self) -> None:
    """Nothing to wait for on CPU."""


class PlainTorchTrainer:
  """A plain PyTorch model (eager or ``torch.compile`` d) on ``device`` with fused Adam and
  jaxrec's loss. On CPU it runs with ``threads`` intra-op threads (set before every step); on
  CUDA (``threads=None``) every step ends with ``torch.cuda.synchronize()``, so a timed step
  covers the GPU's work."""

  def __init__(self, model: torch.nn.Module, schema: FeatureSchema, compile_model: bool,
               threads: Optional[int], device: str = 'cpu'):
    self.model = model
    self.schema = schema
    self.threads = threads
    self.device = torch.device(device)
    self._run = torch.compile(model) if compile_model else model
    self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                      eps=1e-8, fused=True)

  def _threads(self) -> None:
    if self.threads:
      torch.set_num_threads(self.threads)

  def sync(self) -> None:
    """Waits for the GPU's queued work (nothing on CPU)."""
    if self.device.type == 'cuda':
      torch.cuda.synchronize(self.device)

  def prepare(self, batch: dict):
    prepared = pt.batch_to_plain_torch(batch, self.schema, self.device)
    self.sync()
    return prepared

  def step(self, prepared) -> None:
    self._threads()
    pt.plain_train_step(self._run, self.optimizer, *prepared)
    self.sync()

  def logits(self, batch: dict) -> np.ndarray:
    self._threads()
    inputs = pt.batch_to_plain_torch(batch, self.schema, self.device, targets=False)
    with torch.no_grad():
      return self.model(*inputs).cpu().numpy()

  def loss(self, prepared) -> torch.Tensor:
    """jaxrec's loss of the eager model on a prepared batch (for the profile)."""
    *inputs, label, weight = prepared
    return pt.weighted_bce(self.model(*inputs), label, weight)

  def embeddings(self, prepared) -> torch.Tensor:
    """The pooled embeddings ``[B, F, d]`` of a prepared batch (the EmbeddingBags alone)."""
    return self.model.sparse_arch(*prepared[1:6])


def torch_trainers(kind: str, schema: FeatureSchema, dim: int, args, threads: list[int],
                   compile_model: bool) -> dict:
  """``name -> trainer`` of the baseline's variants, each from the same initial weights.

  TorchRec and plain PyTorch on CPU: eager once per thread count in ``threads`` (names
  ``'<baseline> eager <n>t'``), plus ``'<baseline> compile <threads[0]>t'`` if
  ``compile_model``. Plain PyTorch on CUDA: ``'PyTorch eager'`` (and ``'PyTorch compile'``).
  """
  label = BASELINES[args.baseline]

  def model():
    return build_pair(kind, schema, dim, 0, args.baseline, args.torch_device)[2]

  def trainer(compile_model: bool, n: Optional[int]):
    if args.baseline == 'torchrec':
      return TorchTrainer(model(), schema, compile_model, n)
    return PlainTorchTrainer(model(), schema, compile_model, n, args.torch_device)

  if args.torch_device == 'cuda':
    out = {f'{label} eager': trainer(False, None)}
    if compile_model:
      out[f'{label} compile'] = trainer(True, None)
    return out
  out = {f'{label} eager {n}t': trainer(False, n) for n in threads}
  if compile_model:
    out[f'{label} compile {threads[0]}t'] = trainer(True, threads[0])
  return out


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


def profile_pair(jax_model, params, trainer, torch_name: str, schema: FeatureSchema,
                 batch: dict, warmup: int, steps: int) -> dict:
  """Milliseconds per phase of a training step, per framework (the torch side: ``trainer``, an
  eager ``TorchTrainer`` or ``PlainTorchTrainer``, reported as ``torch_name``).

  Phases: ``forward`` (loss, train mode), ``forward+backward``, ``optimizer`` (the Adam update
  alone) and, for jaxrec, its split into embedding tables and the rest; ``embedding
  fwd+bwd`` is the lookup (gather) and its gradient (scatter-add) alone. Every torch phase ends
  with ``trainer.sync()`` (the GPU's work included).
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
  if trainer.threads:
    torch.set_num_threads(trainer.threads)
  prepared = trainer.prepare(batch)

  def synced(fn: Callable[[], None]) -> Callable[[], None]:
    def run_and_sync():
      fn()
      trainer.sync()
    return run_and_sync

  def t_forward():
    with torch.no_grad():
      trainer.loss(prepared)

  def t_backward():
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.loss(prepared).backward()

  def t_embedding():
    x = trainer.embeddings(prepared)
    (x * x).sum().backward()

  synced(t_backward)()
  out[torch_name] = {
      'forward': _median_time(synced(t_forward), warmup, steps),
      'forward+backward': _median_time(synced(t_backward), warmup, steps),
      'embedding fwd+bwd': _median_time(synced(t_embedding), warmup, steps),
      'optimizer': _median_time(synced(trainer.optimizer.step), warmup, steps),
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


def throughput_table(rows: list[Row], label: str = 'TorchRec') -> str:
  """One column per framework; the last compares jaxrec with the fastest ``label`` (baseline)
  variant."""
  names = [n for n in dict.fromkeys(k for r in rows for k in r.results) if n != 'jaxrec']
  lines = ['| dataset | model | batch | jaxrec jit | ' + ' | '.join(names) +
           f' | jaxrec / fastest {label} |', '|---|---|---:|' + '---:|' * (len(names) + 2)]
  for r in rows:
    jx = r.results['jaxrec']
    best = max(v['examples_per_sec'] for k, v in r.results.items() if k != 'jaxrec')
    cells = ' | '.join(_fmt_tp(r.results.get(n)) for n in names)
    lines.append(f"| {r.dataset} | {r.model} | {r.batch_size} | {_fmt_tp(jx)} | {cells} | "
                 f"{jx['examples_per_sec'] / best:.2f}x |")
  return '\n'.join(lines)


def quality_table(rows: list[dict], label: str = 'TorchRec') -> str:
  """AUC and logloss of both sides; ``label`` names the baseline's columns."""
  lines = [f'| dataset | model | epochs | jaxrec AUC | {label} AUC | jaxrec logloss | '
           f'{label} logloss |', '|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    j, t = r['jaxrec'], r['torch']
    lines.append(f"| {r['dataset']} | {r['model']} | {r['epochs']} | {j['auc']:.5f} | "
                 f"{t['auc']:.5f} | {j['logloss']:.5f} | {t['logloss']:.5f} |")
  return '\n'.join(lines)


def uses_gpu(torch_device: str) -> bool:
  return jax.default_backend() != 'cpu' or torch_device == 'cuda'


def set_gpu_matmul(precision: str) -> None:
  """One float32 matmul precision for both frameworks on a GPU (they differ by default: jax
  uses TF32 on Ampere and later, PyTorch full float32)."""
  jax.config.update('jax_default_matmul_precision',
                    'float32' if precision == 'float32' else 'tensorfloat32')
  torch.set_float32_matmul_precision('highest' if precision == 'float32' else 'high')


def gpu_description(torch_device: str = 'cpu') -> str:
  """The GPU(s) the run uses: jax's default device when it is not a CPU, torch's with
  ``torch_device='cuda'``; ``'no GPU'`` when neither is."""
  used = {}
  if jax.default_backend() != 'cpu':
    used.setdefault(jax.devices()[0].device_kind, []).append('jax')
  if torch_device == 'cuda':
    used.setdefault(torch.cuda.get_device_name(), []).append('torch')
  if not used:
    return 'no GPU'
  return ', '.join(f'GPU {kind} ({" and ".join(who)})' for kind, who in used.items())


def machine_line(torch_device: str = 'cpu') -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
  return f'{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {gpu_description(torch_device)}'


def versions_line(baseline: str = 'torchrec', torch_device: str = 'cpu',
                  gpu_matmul: str = 'float32') -> str:
  """jax, torch (with its CUDA version on ``cuda``), the float32 matmul precision when a GPU is
  used and, for TorchRec only, torchrec and fbgemm (imported here, so ``--baseline plain`` never
  needs them)."""
  line = f'jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}'
  if torch_device == 'cuda':
    line += f' (CUDA {torch.version.cuda})'
  if uses_gpu(torch_device):
    line += f'; float32 matmuls on GPU: {gpu_matmul} (both sides)'
  if baseline == 'plain':
    return line
  import fbgemm_gpu  # pylint: disable=g-import-not-at-top
  import torchrec  # pylint: disable=g-import-not-at-top
  return f'{line}, torchrec {torchrec.__version__}, fbgemm-gpu-cpu {fbgemm_gpu.__version__}'


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
  label = BASELINES[args.baseline]
  epochs = _parse_epochs(args.epochs)
  batch_sizes = [int(b) for b in args.batch_sizes.split(',') if b]
  compile_sizes = {int(b) for b in args.compile_batch_sizes.split(',') if b}
  threads = [int(n) for n in args.torch_threads.split(',') if n]
  cuda = args.torch_device == 'cuda'
  for name, train, valid in _datasets(args):
    log(f'{name}: {train.num_rows:,} train / {valid.num_rows:,} valid rows, '
        f'{sum(train.schema.vocab_sizes):,} embedding rows')
    for kind in filter(None, args.models.split(',')):
      for bs in batch_sizes:
        jax_model, params, _ = build_pair(kind, train.schema, args.embedding_dim, 0,
                                          args.baseline, args.torch_device)
        trainers = {'jaxrec': JaxTrainer(jax_model, params, next(train.batches(bs)))}
        trainers.update(torch_trainers(kind, train.schema, args.embedding_dim, args, threads,
                                       bs in compile_sizes))
        batches = [b for _, b in zip(range(4), train.batches(bs, shuffle=True, seed=1))]
        res = throughput(trainers, batches, args.warmup, args.steps)
        tp_rows.append(Row(name, kind, bs, res))
        log(throughput_table(tp_rows[-1:], label).splitlines()[-1] + '  first steps (s): ' +
            ', '.join(f"{k} {v['first_step_s']:.1f}" for k, v in res.items()))
        del trainers
      if args.profile_batch_size:
        bs = args.profile_batch_size
        jax_model, params, _ = build_pair(kind, train.schema, args.embedding_dim, 0,
                                          args.baseline, args.torch_device)
        (t_name, trainer), = torch_trainers(kind, train.schema, args.embedding_dim, args,
                                            threads[:1], False).items()
        times = profile_pair(jax_model, params, trainer, t_name, train.schema,
                             next(train.batches(bs, shuffle=True, seed=1)), args.warmup,
                             args.steps)
        prof_rows.append({'dataset': name, 'model': kind, 'batch_size': bs, 'times': times})
        log(profile_table(prof_rows[-1:]))
      if epochs.get(name, 0) > 0:
        jax_model, params, torch_model = build_pair(kind, train.schema, args.embedding_dim, 0,
                                                    args.baseline, args.torch_device)
        if args.baseline == 'torchrec':
          torch_trainer = TorchTrainer(torch_model, train.schema, False, threads[0])
        else:
          torch_trainer = PlainTorchTrainer(torch_model, train.schema, False,
                                            None if cuda else threads[0], args.torch_device)
        q = {'dataset': name, 'model': kind, 'epochs': epochs[name],
             'jaxrec': train_and_score(JaxTrainer(jax_model, params, next(train.batches(
                 AUC_BATCH))), train, valid, epochs[name]),
             'torch': train_and_score(torch_trainer, train, valid, epochs[name])}
        q_rows.append(q)
        log(quality_table([q], label).splitlines()[-1])
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
                 help='on CPU, the torch baseline runs eager once per intra-op thread count '
                      'listed; torch.compile, the profile and the AUC run use the first (jaxrec '
                      'uses every core). Unused with --torch_device cuda')
  p.add_argument('--baseline', choices=sorted(BASELINES), default='torchrec',
                 help='torchrec: TorchRec DLRM / DLRM_DCN (needs torchrec and fbgemm-gpu); '
                      'plain: the same models in plain PyTorch (nn.EmbeddingBag), torch only')
  p.add_argument('--torch_device', choices=('cpu', 'cuda'), default='cpu',
                 help='where the torch baseline runs (cuda: --baseline plain only)')
  p.add_argument('--gpu_matmul', choices=('float32', 'tf32'), default='float32',
                 help='float32 matmul precision of both sides on a GPU: float32 (full, PyTorch\'s '
                      'default) or tf32 (jax\'s default on Ampere and later)')
  p.add_argument('--out', default='', help='also write the tables (Markdown) to this file')
  args = p.parse_args(argv)
  if args.torch_device == 'cuda':
    if args.baseline != 'plain':
      p.error('--torch_device cuda needs --baseline plain (the TorchRec baseline runs on CPU)')
    if not torch.cuda.is_available():
      p.error('--torch_device cuda: torch sees no CUDA device')
    if jax.default_backend() == 'cpu':
      print('warning: --torch_device cuda but jax runs on CPU: jaxrec is timed on the CPU',
            flush=True)
  if uses_gpu(args.torch_device):
    set_gpu_matmul(args.gpu_matmul)
  label = BASELINES[args.baseline]
  load_before = _load_average()
  started = time.time()
  tp_rows, q_rows, prof_rows = run(args, lambda s: print(s, flush=True))
  text = ('### Train-step throughput: examples/s (median step time)\n\n' +
          throughput_table(tp_rows, label) +
          '\n\n### Validation quality after the same training\n\n' +
          quality_table(q_rows, label) + '\n')
  if prof_rows:
    text += ('\n### Where the time goes: ms per phase of one step (medians)\n\n' +
             profile_table(prof_rows) + '\n')
  print(text)
  if args.out:
    header = (f'Command: `python scripts/compare_torch.py {" ".join(sys.argv[1:])}`  \n'
              f'Machine: {machine_line(args.torch_device)}  \n'
              f'Versions: {versions_line(args.baseline, args.torch_device, args.gpu_matmul)}'
              '  \n'
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
