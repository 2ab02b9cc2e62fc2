"""Plain PyTorch DLRM / DLRM_DCN <-> jaxrec: same logits, gradients and Adam steps; exact round
trips. Needs torch only (never TorchRec); skipped without it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxrec.compat import plain_torch as pt
from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.models.dcnv2 import DCNv2
from jaxrec.models.dlrm import DLRM
from jaxrec.train import state as state_lib
from tests.models.tiny import MIXED, SPARSE, make_batch, random_variables

RTOL, ATOL = 1e-5, 1e-6
LR = 1e-3  # scripts/compare_torch.py's LEARNING_RATE
D = 4
KINDS = ('dlrm', 'dlrm_dcn')


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
  """Full float32 jax matmuls, as torch's: jax defaults to TF32 on recent GPUs (no-op on CPU)."""
  with jax.default_matmul_precision('float32'):
    yield


def _model(kind: str, schema=MIXED):
  if kind == 'dlrm':
    return DLRM(schema, embedding_dim=D, bottom_mlp_units=(5,), top_mlp_units=(6, 4))
  return DLRMDCN(schema, embedding_dim=D, bottom_mlp_units=(5,), num_cross_layers=2, low_rank=3,
                 top_mlp_units=(6, 4))


def _batch(schema=MIXED, rows: int = 16, seed: int = 0, edge_cases: bool = True) -> dict:
  """A random batch; with ``edge_cases`` (MIXED only): one-hot ids outside their vocabulary,
  an empty bag, an out-of-range multi-hot id inside a bag, padding rows (weight 0)."""
  batch = make_batch(schema, rows=rows, seed=seed)
  if edge_cases:
    batch['sparse'][0, 0] = -1
    batch['sparse'][1, 1] = 7  # item's vocabulary is [0, 7)
    batch['multi_hot_lengths'][2, 0] = 0  # an empty 'mean' bag
    batch['multi_hot_lengths'][3, 1] = 2
    batch['multi_hot_ids'][3, 1, :2] = [1, 99]  # ctx: 99 is outside [0, 4)
    batch['multi_hot_ids'][4, 0, 2] = 5  # a padding slot past a length-1 bag
    batch['multi_hot_lengths'][4, 0] = 1
    batch['weight'][-3:] = 0.0
  return batch


def _setup(kind: str, schema=MIXED, seed: int = 1):
  jax_model = _model(kind, schema)
  params = random_variables(jax_model, _batch(schema, edge_cases=False), seed=seed)['params']
  torch_model = pt.plain_torch_like(jax_model)
  pt.params_to_plain_torch(params, jax_model, torch_model)
  return jax_model, params, torch_model


def _torch_logits(torch_model, batch, schema=MIXED, device='cpu') -> np.ndarray:
  with torch.no_grad():
    return torch_model(*pt.batch_to_plain_torch(batch, schema, device, targets=False)).cpu().numpy()


@pytest.mark.parametrize('schema,edge_cases', [(MIXED, True), (MIXED, False), (SPARSE, False)],
                         ids=['mixed-edge-cases', 'mixed', 'no-dense'])
@pytest.mark.parametrize('kind', KINDS)
def test_same_logits(kind, schema, edge_cases):
  jax_model, params, torch_model = _setup(kind, schema)
  batch = _batch(schema, edge_cases=edge_cases)
  prepared = pt.batch_to_plain_torch(batch, schema)
  assert (prepared[2] is None) == (not edge_cases)  # plain lookups when every id is in range
  logits = np.asarray(jax_model.apply({'params': params}, batch, train=False))
  expected = _torch_logits(torch_model, batch, schema)
  assert expected.shape == (16,) and expected.dtype == np.float32
  assert np.std(expected) > 1e-3  # the inputs matter
  np.testing.assert_allclose(expected, logits, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('kind', KINDS)
def test_round_trips_are_exact(kind):
  jax_model, params, torch_model = _setup(kind)
  again = pt.params_from_plain_torch(torch_model, jax_model)
  assert jax.tree.structure(again) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  # torch -> jaxrec -> a fresh torch model: the same state dict.
  torch.manual_seed(0)
  fresh = pt.plain_torch_like(jax_model)
  original = pt.params_from_plain_torch(fresh, jax_model)
  copy = pt.plain_torch_like(jax_model)
  pt.params_to_plain_torch(original, jax_model, copy)
  for (name, a), (_, b) in zip(fresh.state_dict().items(), copy.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


@pytest.mark.parametrize('kind', KINDS)
def test_same_gradients(kind):
  """Every gradient agrees: ``rtol`` per element plus an ``atol`` relative to the tensor's
  largest gradient (float32 sums err relative to their largest terms)."""
  jax_model, params, torch_model = _setup(kind)
  batch = _batch(seed=3)

  def loss(p):
    logits = jax_model.apply({'params': p}, batch, train=True)
    return state_lib.weighted_bce(logits, batch['label'], batch['weight'])

  grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(params))
  *inputs, label, weight = pt.batch_to_plain_torch(batch, MIXED)
  pt.weighted_bce(torch_model(*inputs), label, weight).backward()
  with torch.no_grad():  # the converter maps weights linearly, so it maps gradients too
    for p in torch_model.parameters():
      p.copy_(p.grad)
  torch_grads = traverse_util.flatten_dict(pt.params_from_plain_torch(torch_model, jax_model))
  for path, g in grads.items():
    g = np.asarray(g)
    np.testing.assert_allclose(torch_grads[path], g, rtol=RTOL,
                               atol=ATOL * max(np.max(np.abs(g)), 1e-30), err_msg='/'.join(path))


@pytest.mark.parametrize('kind', KINDS)
def test_same_adam_steps(kind):
  """Two steps of the jaxrec trainer (Adam as scripts/compare_torch.py's JaxTrainer builds it)
  and of torch.optim.Adam (default foreach and fused, as the script runs it) from the same
  weights give the same losses and weights."""
  jax_model, params, _ = _setup(kind)
  cfg = state_lib.OptimConfig(learning_rate=LR, max_grad_norm=0.0)
  tx = state_lib.make_optimizer(cfg)
  batches = [_batch(seed=s) for s in (1, 2)]
  # create_train_state's state and mask, without running the (slow, eager) initialisers.
  boxed = jax.eval_shape(lambda: state_lib.init_boxed_state(jax_model, batches[0], tx, 0))
  mask = state_lib.embedding_mask(boxed.params)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
  step = jax.jit(state_lib.make_train_step(jax_model, tx, mask, cfg))
  sides = []
  for fused in (False, True):
    torch_model = pt.plain_torch_like(jax_model)
    pt.params_to_plain_torch(params, jax_model, torch_model)
    sides.append((torch_model, torch.optim.Adam(torch_model.parameters(), lr=LR,
                                                betas=(0.9, 0.999), eps=1e-8, fused=fused)))
  for batch in batches:
    state, metrics = step(state, batch)
    want = traverse_util.flatten_dict(jax.device_get(state.params))
    for torch_model, opt in sides:
      loss = pt.plain_train_step(torch_model, opt, *pt.batch_to_plain_torch(batch, MIXED))
      np.testing.assert_allclose(loss.item(), metrics['loss'], rtol=RTOL, atol=ATOL)
      got = traverse_util.flatten_dict(pt.params_from_plain_torch(torch_model, jax_model))
      moved = 0
      for path, value in want.items():
        np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=ATOL,
                                   err_msg=f'{"/".join(path)} (fused={opt.defaults["fused"]})')
        moved += not np.array_equal(value, traverse_util.flatten_dict(params)[path])
      assert moved == len(want)  # every parameter took a step


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('kind', KINDS)
def test_same_logits_on_cuda(kind):
  jax_model, params, torch_model = _setup(kind)
  batch = _batch()
  logits = np.asarray(jax_model.apply({'params': params}, batch, train=False))
  np.testing.assert_allclose(_torch_logits(torch_model.cuda(), batch, device='cuda'), logits,
                             rtol=RTOL, atol=ATOL)


def test_bad_inputs_name_the_problem():
  dlrm = _model('dlrm')
  for change, match in [({'interaction': 'cat'}, "interaction='cat'"),
                        ({'batch_norm': True}, 'batch_norm=True'),
                        ({'activation': 'tanh'}, "activation='tanh'"),
                        ({'top_dropout_rate': 0.1}, 'top_dropout_rate=0.1')]:
    with pytest.raises(ValueError, match=match):
      pt.plain_torch_like(dataclasses.replace(dlrm, **change))
  with pytest.raises(ValueError, match="DLRMDCN: activation='gelu'"):
    pt.plain_torch_like(dataclasses.replace(_model('dlrm_dcn'), activation='gelu'))
  with pytest.raises(TypeError, match='expected jaxrec DLRM or DLRMDCN, got DCNv2'):
    pt.plain_torch_like(DCNv2(MIXED))
  jax_model, params, torch_model = _setup('dlrm')
  with pytest.raises(TypeError, match='pairs with PlainDLRMDCN'):
    pt.params_from_plain_torch(torch_model, _model('dlrm_dcn'))
  renamed = dataclasses.replace(MIXED, sparse=(dataclasses.replace(MIXED.sparse[0], name='u'),)
                                + MIXED.sparse[1:])
  with pytest.raises(ValueError, match='differ from the jaxrec schema fields'):
    pt.params_from_plain_torch(torch_model, dataclasses.replace(jax_model, schema=renamed))
  wrong = dict(params, top_mlp={**params['top_mlp'], 'output': {
      'kernel': np.zeros((3, 1), np.float32), 'bias': np.zeros(1, np.float32)}})
  with pytest.raises(ValueError, match='top_mlp/output/kernel has shape'):
    pt.params_to_plain_torch(wrong, jax_model, torch_model)
  batch = _batch()
  with pytest.raises(ValueError, match="no 'sparse'"):
    pt.batch_to_plain_torch({k: v for k, v in batch.items() if k != 'sparse'}, MIXED)
  with pytest.raises(ValueError, match=r"'dense' has shape \(16, 1\), expected \(16, 2\)"):
    pt.batch_to_plain_torch(dict(batch, dense=batch['dense'][:, :1]), MIXED)
  opt = torch.optim.Adam(torch_model.parameters(), lr=LR)
  with pytest.raises(ValueError, match='expected the 8 tensors'):
    pt.plain_train_step(torch_model, opt, *pt.batch_to_plain_torch(batch, MIXED, targets=False))
