"""NeuroShard's cost models in Flax: a device's compute cost and the plan's all-to-all cost.

Compute (``ComputeCostNet``, NeuroShard's ``ComputeCostNet``): every shard on a device is a row
of table features (``features.FEATURE_LAYOUT``, standardised by the training set's mean and
std), each row goes through the per-table MLP ``features -> 128 -> 32`` (ReLU), the rows of a
device are summed, and an MLP ``32 -> 64 -> 1`` gives the device's cost in ms::

  x [S, T, F] --table MLP--> [S, T, 32] --masked sum over T--> [S, 32] --MLP--> [S]

Communication (``CommCostNet``, NeuroShard's ``CommCostNet`` for one mesh of ``D`` devices): the
``D`` per-device output widths (``measure.device_comm_dims``: the floats per sample each device
sends in the pooled all-to-all, the sum of its shards' dims for table- and column-wise shards)
through an MLP ``D -> 128 -> 64 -> 32 -> 16 -> D`` give each device's all-to-all time in ms.
NeuroShard's forward model also takes each device's compute delay; here a plan's cost is the
slowest device's compute + communication, which already counts the straggler.

Training (``train_compute`` / ``train_comm``): optax Adam on the mean squared error, shuffled
80/10/10 split, the epoch with the best validation error kept (NeuroShard's recipe); targets are
divided by their root mean square (recorded as ``scale``) so that any unit of time trains alike.

Files (``save`` / ``load``): one ``.npz`` with the parameters and a JSON header recording the
feature layout, normalisation, sizes, the device kind measured and the batch size; the package
ships one per device platform (``default_file``). Loading a file
whose layout differs from ``FEATURE_LAYOUT`` raises ``CostModelFormatError`` naming both.

``AnalyticCostModel`` is a closed-form stand-in with the same interface (TorchRec's estimator
for table-wise shards, ``torchrec_port``), for tests and for comparing searches without a
trained model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.errors import UserError
from jaxrec.planner import measure, torchrec_port
from jaxrec.planner.features import FEATURE_LAYOUT, TableFeatures

TABLE_MLP = (128, 32)
PRED_MLP = (64,)
COMM_MLP = (128, 64, 32, 16)
FORMAT_VERSION = 1
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def default_file() -> pathlib.Path:
  """The model shipped for this device kind: ``cost_model_<platform>.npz`` in the package."""
  return PACKAGE_DIR / f'cost_model_{jax.devices()[0].platform}.npz'


class CostModelFormatError(UserError, ValueError):
  """A cost-model file this code cannot use (another feature layout, version or a bad file)."""


# ---- networks -----------------------------------------------------------------------------------

class ComputeCostNet(nn.Module):
  """``x [S, T, F]``, ``mask [S, T]`` -> ``[S]`` (module docstring)."""
  table_sizes: Sequence[int] = TABLE_MLP
  pred_sizes: Sequence[int] = PRED_MLP

  @nn.compact
  def __call__(self, x, mask):
    h = x
    for n in self.table_sizes:
      h = nn.relu(nn.Dense(n)(h))  # [S, T, n]
    h = jnp.sum(h * mask[..., None], axis=1)  # [S, 32]
    for n in self.pred_sizes:
      h = nn.relu(nn.Dense(n)(h))
    return nn.Dense(1)(h)[:, 0]


class CommCostNet(nn.Module):
  """``dims [S, D]`` -> ``[S, D]`` (module docstring)."""
  num_devices: int
  sizes: Sequence[int] = COMM_MLP

  @nn.compact
  def __call__(self, x):
    for n in self.sizes:
      x = nn.relu(nn.Dense(n)(x))
    return nn.Dense(self.num_devices)(x)


def _np_dense(params: dict, x: np.ndarray, relu: bool) -> np.ndarray:
  y = x @ params['kernel'] + params['bias']
  return np.maximum(y, 0) if relu else y


# ---- the trained model --------------------------------------------------------------------------

@dataclasses.dataclass
class Normalizer:
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, x: np.ndarray) -> 'Normalizer':
    x = np.asarray(x, np.float64)
    return cls(x.mean(0).astype(np.float32), (x.std(0) + 1e-6).astype(np.float32))

  def __call__(self, x):
    return (np.asarray(x, np.float32) - self.mean) / self.std


@dataclasses.dataclass
class CommModel:
  """A trained ``CommCostNet`` for ``num_hosts x devices_per_host`` devices."""
  num_hosts: int
  devices_per_host: int
  params: dict
  norm: Normalizer
  scale: float = 1.0  # ms per unit of the network's output

  def predict(self, dims) -> np.ndarray:
    """``[..., D]`` output widths -> ``[..., D]`` ms (numpy; clipped at 0)."""
    h = self.norm(dims)
    p = self.params['params']
    names = sorted(p, key=lambda k: int(k.split('_')[-1]))
    for i, name in enumerate(names):
      h = _np_dense(p[name], h, relu=i < len(names) - 1)
    return np.maximum(h * self.scale, 0.0)


@dataclasses.dataclass
class NeuroShardCostModel:
  """The compute model plus comm models per device count (module docstring).

  Attributes:
    params: ``ComputeCostNet`` parameters (numpy).
    norm: feature standardisation.
    scale: ms per unit of the network's output (targets are trained divided by it).
    comm: ``{(num_hosts, devices_per_host): CommModel}``.
    meta: the header (device kind, batch size, training errors, ...).
  """
  params: dict
  norm: Normalizer
  scale: float
  comm: dict[tuple[int, int], CommModel]
  meta: dict
  comm_trainer: Optional[Callable[[int, int], CommModel]] = None

  # Per-shard embeddings are independent of the device they sit on: the search sums them.
  def embed(self, shards: Sequence[TableFeatures]) -> np.ndarray:
    """``[n, 32]``: the per-table MLP of each shard."""
    if not shards:
      return np.zeros((0, TABLE_MLP[-1]), np.float32)
    h = self.norm(np.stack([s.vector() for s in shards]))
    p = self.params['params']
    for i in range(len(TABLE_MLP)):
      h = _np_dense(p[f'Dense_{i}'], h, relu=True)
    return h

  def head(self, summed: np.ndarray) -> np.ndarray:
    """``[..., 32]`` summed embeddings -> ``[...]`` ms (an empty device costs 0)."""
    p = self.params['params']
    h = summed
    k = len(TABLE_MLP)
    for i in range(len(PRED_MLP)):
      h = _np_dense(p[f'Dense_{k + i}'], h, relu=True)
    out = _np_dense(p[f'Dense_{k + len(PRED_MLP)}'], h, relu=False)[..., 0]
    return np.maximum(out * self.scale, 0.0)

  def compute_ms(self, shards: Sequence[TableFeatures]) -> float:
    if not shards:
      return 0.0
    return float(self.head(self.embed(shards).sum(0)))

  def comm_ms(self, dims: Sequence[float], num_hosts: int = 1) -> np.ndarray:
    """Per device all-to-all ms from the devices' output widths ``[N]``."""
    key = (num_hosts, len(dims) // num_hosts)
    if key not in self.comm:
      if self.comm_trainer is None:
        raise CostModelFormatError(f'the cost model has no communication model for {key[0]} '
                                   f'host(s) x {key[1]} devices (it has {sorted(self.comm)})')
      self.comm[key] = self.comm_trainer(*key)
    return self.comm[key].predict(np.asarray(dims, np.float32))


@dataclasses.dataclass
class AnalyticCostModel:
  """Closed-form costs with the ``NeuroShardCostModel`` interface: a shard costs TorchRec's
  table-wise forward + backward compute estimate, the all-to-all is the ground truth's analytic
  form (``measure.comm_ms_of_dims``).

  Attributes:
    batch_size: the global batch.
    device_bw: bytes per ms of a device's memory (default TorchRec's DDR: this CPU).
  """
  batch_size: int
  device_bw: float = torchrec_port.DDR_MEM_BW

  def shard_ms(self, s: TableFeatures) -> float:
    return torchrec_port.table_wise_compute_ms(s, self.batch_size, self.device_bw)

  def embed(self, shards: Sequence[TableFeatures]) -> np.ndarray:
    return np.array([[self.shard_ms(s)] for s in shards], np.float64).reshape(-1, 1)

  def head(self, summed: np.ndarray) -> np.ndarray:
    return np.asarray(summed)[..., 0]

  def compute_ms(self, shards: Sequence[TableFeatures]) -> float:
    return float(sum(self.shard_ms(s) for s in shards))

  def comm_ms(self, dims: Sequence[float], num_hosts: int = 1) -> np.ndarray:
    return measure.comm_ms_of_dims(dims, self.batch_size, num_hosts)


# ---- training -----------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
  params: dict
  norm: Normalizer
  scale: float  # targets were divided by it
  mse: dict  # {'train', 'val', 'test'} at the best validation epoch, ms^2
  test_index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def _splits(n: int, rng: np.random.Generator, train=0.8, val=0.1):
  idx = rng.permutation(n)
  a, b = int(n * train), int(n * (train + val))
  return idx[:a], idx[a:b], idx[b:]


def _pad(samples: Sequence[Sequence[TableFeatures]], norm: Normalizer):
  t = max(1, max(len(s) for s in samples))
  x = np.zeros((len(samples), t, len(FEATURE_LAYOUT)), np.float32)
  mask = np.zeros((len(samples), t), np.float32)
  for i, s in enumerate(samples):
    if s:
      x[i, :len(s)] = norm(np.stack([f.vector() for f in s]))
      mask[i, :len(s)] = 1
  return x, mask


def _fit(loss_fn, params, data: dict, y: np.ndarray, epochs: int, batch_size: int, lr: float,
         seed: int):
  """Adam on ``loss_fn(params, batch) -> [rows] squared errors``; every batch (evaluation too) is
  padded to ``batch_size`` rows of weight 0, so each function compiles once. Returns the
  best-validation params, their mean squared errors and the held-out (test) rows."""
  rng = np.random.default_rng(seed)
  tr, va, te = _splits(len(y), rng)
  batch_size = min(batch_size, max(1, len(tr)))
  tx = optax.adam(lr)
  opt = tx.init(params)

  def mean_loss(params, batch):
    err = loss_fn(params, batch)
    return jnp.sum(err * batch['w']) / jnp.maximum(jnp.sum(batch['w']), 1.0)

  @jax.jit
  def step(params, opt, batch):
    loss, g = jax.value_and_grad(mean_loss)(params, batch)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  sum_loss = jax.jit(lambda p, b: jnp.sum(loss_fn(p, b) * b['w']))

  def take(idx):
    pad = batch_size - len(idx)
    full = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    w = np.concatenate([np.ones(len(idx)), np.zeros(pad)]).astype(np.float32)
    return {k: v[full] for k, v in data.items()} | {'y': y[full], 'w': w}

  def mse(params, idx):
    if not len(idx):
      return float('nan')
    total = sum(float(sum_loss(params, take(idx[i:i + batch_size])))
                for i in range(0, len(idx), batch_size))
    return total / len(idx)

  best = (np.inf, params, {})
  for _ in range(epochs):
    order = rng.permutation(tr)
    losses = []
    for i in range(0, len(order), batch_size):
      params, opt, loss = step(params, opt, take(order[i:i + batch_size]))
      losses.append(float(loss))
    val = mse(params, va) if len(va) else float(np.mean(losses))
    if val < best[0]:
      best = (val, params, {'train': float(np.mean(losses)), 'val': val, 'test': mse(params, te)})
  return jax.device_get(best[1]), best[2], te


def train_compute(samples: Sequence[Sequence[TableFeatures]], costs_ms: Sequence[float], *,
                  epochs: int = 200, batch_size: int = 64, lr: float = 1e-3,
                  seed: int = 0) -> TrainResult:
  """Fits ``ComputeCostNet`` to measured device costs (``samples[i]``: the shards measured);
  the targets are scaled by their root mean square."""
  y = np.asarray(costs_ms, np.float32)
  if len(samples) != len(y) or len(y) < 3:
    raise ValueError(f'need >= 3 samples with one cost each, got {len(samples)} and {len(y)}')
  scale = float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) or 1.0
  y = y / scale
  norm = Normalizer.fit(np.stack([f.vector() for s in samples for f in s]))
  x, mask = _pad(samples, norm)
  net = ComputeCostNet()
  params = net.init(jax.random.PRNGKey(seed), x[:1], mask[:1])

  def loss_fn(p, batch):
    return (net.apply(p, batch['x'], batch['mask']) - batch['y']) ** 2

  params, errors, test = _fit(loss_fn, params, {'x': x, 'mask': mask}, y, epochs, batch_size, lr,
                              seed)
  return TrainResult(params, norm, scale, {k: v * scale ** 2 for k, v in errors.items()}, test)


def train_comm(dims: np.ndarray, costs_ms: np.ndarray, num_hosts: int = 1, *, epochs: int = 100,
               batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[CommModel, dict]:
  """Fits ``CommCostNet`` to per-device all-to-all times ``[S, D]`` from output widths."""
  dims, y = np.asarray(dims, np.float32), np.asarray(costs_ms, np.float32)
  scale = float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) or 1.0
  y = y / scale
  norm = Normalizer.fit(dims)
  net = CommCostNet(dims.shape[1])
  x = norm(dims)
  params = net.init(jax.random.PRNGKey(seed), x[:1])

  def loss_fn(p, batch):
    return jnp.mean((net.apply(p, batch['x']) - batch['y']) ** 2, axis=-1)

  params, errors, _ = _fit(loss_fn, params, {'x': x}, y, epochs, batch_size, lr, seed)
  model = CommModel(num_hosts, dims.shape[1] // num_hosts, params, norm, scale)
  return model, {k: v * scale ** 2 for k, v in errors.items()}


# ---- files --------------------------------------------------------------------------------------

def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else k
    if isinstance(v, dict):
      out.update(_flatten(v, key))
    else:
      out[key] = np.asarray(v)
  return out


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    parts = key.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def save(model: NeuroShardCostModel, path) -> None:
  """Writes ``model`` (module docstring: parameters + JSON header)."""
  arrays = {f'compute/{k}': v for k, v in _flatten(model.params).items()}
  arrays['compute_norm/mean'], arrays['compute_norm/std'] = model.norm.mean, model.norm.std
  for (h, p), c in model.comm.items():
    arrays.update({f'comm{h}x{p}/{k}': v for k, v in _flatten(c.params).items()})
    arrays[f'comm{h}x{p}_norm/mean'], arrays[f'comm{h}x{p}_norm/std'] = c.norm.mean, c.norm.std
  header = dict(model.meta, version=FORMAT_VERSION, feature_layout=list(FEATURE_LAYOUT),
                table_mlp=list(TABLE_MLP), pred_mlp=list(PRED_MLP), comm_mlp=list(COMM_MLP),
                comm_devices=[list(k) for k in sorted(model.comm)], scale=model.scale,
                comm_scales={f'{h}x{p}': c.scale for (h, p), c in model.comm.items()})
  arrays['header'] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8)
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  pathlib.Path(path).write_bytes(buf.getvalue())


def load(path,
         comm_trainer: Optional[Callable[[int, int], CommModel]] = None) -> NeuroShardCostModel:
  """Reads a ``save``d model; ``CostModelFormatError`` for another layout / version / bad file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CostModelFormatError(f'cost model file {path} not found')
  try:
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays.pop('header')).decode())
  except Exception as e:  # pylint: disable=broad-except (any unreadable file)
    raise CostModelFormatError(f'cost model file {path} is not a jaxrec cost model: {e}') from None
  layout = tuple(header.get('feature_layout', ()))
  if layout != FEATURE_LAYOUT:
    raise CostModelFormatError(
        f'cost model file {path} was trained on features {list(layout)}, but this jaxrec uses '
        f'{list(FEATURE_LAYOUT)}; re-train it (scripts/pretrain_cost_model.py)')
  sizes = (tuple(header.get('table_mlp', ())), tuple(header.get('pred_mlp', ())),
           tuple(header.get('comm_mlp', ())))
  if header.get('version') != FORMAT_VERSION or sizes != (TABLE_MLP, PRED_MLP, COMM_MLP):
    raise CostModelFormatError(f'cost model file {path}: version {header.get("version")} with MLP '
                               f'sizes {sizes}; this jaxrec reads version {FORMAT_VERSION} with '
                               f'{(TABLE_MLP, PRED_MLP, COMM_MLP)}')

  def group(prefix):
    return _unflatten({k[len(prefix) + 1:]: v for k, v in arrays.items()
                       if k.startswith(prefix + '/')})

  norm = Normalizer(arrays['compute_norm/mean'], arrays['compute_norm/std'])
  comm = {}
  for h, p in header.get('comm_devices', []):
    name = f'comm{h}x{p}'
    comm[(h, p)] = CommModel(h, p, group(name), Normalizer(arrays[f'{name}_norm/mean'],
                                                           arrays[f'{name}_norm/std']),
                             float(header['comm_scales'][f'{h}x{p}']))
  meta = {k: v for k, v in header.items()
          if k not in ('version', 'feature_layout', 'table_mlp', 'pred_mlp', 'comm_mlp',
                       'comm_devices', 'scale', 'comm_scales')}
  return NeuroShardCostModel(group('compute'), norm, float(header['scale']), comm, meta,
                             comm_trainer)


def from_training(result: TrainResult, comm: dict[tuple[int, int], CommModel], meta: dict,
                  comm_trainer: Optional[Callable[[int, int], CommModel]] = None
                  ) -> NeuroShardCostModel:
  return NeuroShardCostModel(jax.tree.map(np.asarray, result.params), result.norm, result.scale,
                             dict(comm), dict(meta, compute_mse=result.mse), comm_trainer)
