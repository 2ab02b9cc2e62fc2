"""TorchRec DLRM / DLRM_DCN <-> jaxrec: same logits, same optimizer steps, exact round trips.

Needs the optional extra ``jaxrec[torch]``; skipped without it.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

torch = pytest.importorskip('torch')
pytest.importorskip('torchrec')

# pylint: disable=g-import-not-at-top,wrong-import-position
from torchrec.models.dlrm import DLRM as TorchDLRM
from torchrec.models.dlrm import DLRM_DCN as TorchDLRMDCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from jaxrec.compat import torchrec as tc
from jaxrec.compat.dlrm_dcn import DLRMDCN
from jaxrec.data.schema import FeatureSchema
from jaxrec.models.dlrm import DLRM
from jaxrec.train import state as state_lib
from tests.models.tiny import MIXED, make_batch

RTOL, ATOL = 1e-5, 1e-6
D = 4
KINDS = ('dlrm', 'dlrm_dcn')


def _torch_model(kind: str, seed: int = 0, order=None, schema: FeatureSchema = MIXED,
                 over=(6, 5, 1)):
  """A TorchRec model of ``schema`` with default TorchRec init; features in ``order`` (default
  reversed), tables named ``t_<field>`` so table and feature names differ."""
  torch.manual_seed(seed)
  fields = list(schema.sparse)
  order = order if order is not None else list(range(len(fields)))[::-1]
  tables = [EmbeddingBagConfig(name=f't_{fields[i].name}', embedding_dim=D,
                               num_embeddings=fields[i].vocab_size,
                               feature_names=[fields[i].name],
                               pooling=PoolingType.SUM if fields[i].pooling == 'sum'
                               else PoolingType.MEAN) for i in order]
  ebc = EmbeddingBagCollection(tables=tables)
  if kind == 'dlrm':
    return TorchDLRM(ebc, schema.num_dense, [5, D], list(over))
  return TorchDLRMDCN(ebc, schema.num_dense, [5, D], list(over), dcn_num_layers=2,
                      dcn_low_rank_dim=3)


def _batch(rows: int = 16, seed: int = 0) -> dict:
  batch = make_batch(MIXED, rows=rows, seed=seed)
  batch['multi_hot_weights'] = np.ones_like(batch['multi_hot_weights'])
  batch['weight'][-3:] = 0.0  # padding rows: excluded from the loss on both sides
  return batch


def _torch_logits(torch_model, batch) -> np.ndarray:
  dense, kjt = tc.batch_to_torchrec(batch, MIXED)
  with torch.no_grad():
    return torch_model(dense, kjt)[:, 0].numpy()


@pytest.mark.parametrize('kind', KINDS)
def test_same_logits(kind):
  torch_model = _torch_model(kind)
  jax_model, params = tc.from_torchrec(torch_model, schema=MIXED)
  assert isinstance(jax_model, DLRMDCN if kind == 'dlrm_dcn' else DLRM)
  batch = _batch()
  logits = jax_model.apply({'params': params}, batch, train=False)
  expected = _torch_logits(torch_model, batch)
  assert np.std(expected) > 1e-3  # the inputs matter
  np.testing.assert_allclose(logits, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('kind', KINDS)
def test_round_trips_are_exact(kind):
  torch_model = _torch_model(kind, order=[2, 0, 3, 1])
  jax_model, params = tc.from_torchrec(torch_model, schema=MIXED)
  # jaxrec -> TorchRec (a fresh model, features in schema order) -> jaxrec.
  other = tc.to_torchrec(jax_model, params)
  again = tc.params_from_torchrec(other, jax_model)
  jax.tree.map(np.testing.assert_array_equal, params, again)
  # TorchRec -> jaxrec -> TorchRec (the same feature order as the original).
  copy = _torch_model(kind, seed=1, order=[2, 0, 3, 1])
  tc.params_to_torchrec(params, jax_model, copy)
  for (name, a), (_, b) in zip(torch_model.state_dict().items(), copy.state_dict().items()):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
  np.testing.assert_allclose(_torch_logits(other, _batch()), _torch_logits(torch_model, _batch()),
                             rtol=RTOL, atol=ATOL)


def test_schema_from_torchrec():
  torch_model = _torch_model('dlrm')
  schema = tc.schema_from_torchrec(torch_model, dense_names=MIXED.dense,
                                   max_lengths={'tags': 3, 'ctx': 2})
  assert schema.dense == MIXED.dense
  assert [dataclasses.astuple(f) for f in schema.sparse] == [
      dataclasses.astuple(f) for f in MIXED.sparse[::-1]]
  plain = tc.schema_from_torchrec(torch_model)
  assert plain.dense == ('I1', 'I2') and plain.num_multi_hot == 0
  with pytest.raises(ValueError, match='unknown features'):
    tc.schema_from_torchrec(torch_model, max_lengths={'nope': 2})


def _loss(jax_model, params, batch):
  logits = jax_model.apply({'params': params}, batch, train=True)
  return state_lib.weighted_bce(logits, batch['label'], batch['weight'])


@pytest.mark.parametrize('kind', KINDS)
def test_same_gradients(kind):
  """Every gradient agrees to float32 rounding: ``rtol`` per element, plus an ``atol`` relative to
  the tensor's largest gradient (float32 sums err relative to their largest terms)."""
  torch_model = _torch_model(kind)
  jax_model, params = tc.from_torchrec(torch_model, schema=MIXED)
  batch = _batch(seed=3)
  grads = traverse_util.flatten_dict(jax.grad(_loss, argnums=1)(jax_model, params, batch))
  dense, kjt = tc.batch_to_torchrec(batch, MIXED)
  logits = torch_model(dense, kjt)[:, 0]
  per_row = torch.nn.functional.binary_cross_entropy_with_logits(
      logits, torch.from_numpy(batch['label']), reduction='none')
  weight = torch.from_numpy(batch['weight'])
  (torch.sum(per_row * weight) / torch.sum(weight)).backward()
  # The converter maps weights linearly (transposes, permutations), so it maps gradients too.
  saved = [p.detach().clone() for p in torch_model.parameters()]
  with torch.no_grad():
    for p in torch_model.parameters():
      p.copy_(p.grad)
  torch_grads = traverse_util.flatten_dict(tc.params_from_torchrec(torch_model, jax_model))
  with torch.no_grad():
    for p, v in zip(torch_model.parameters(), saved):
      p.copy_(v)
  for path, g in grads.items():
    g = np.asarray(g)
    np.testing.assert_allclose(torch_grads[path], g, rtol=RTOL,
                               atol=ATOL * max(np.max(np.abs(g)), 1e-30), err_msg='/'.join(path))


# Learning rates: SGD's step is linear in the gradient, so its error is lr times the gradient's
# rounding error. Adam's first step is lr * g / (|g| + eps) (eps = 1e-8), whose slope in g,
# eps / (|g| + eps)^2, reaches 1 / eps: a weight whose gradient is tiny (|g| ~ eps) inherits the
# gradient's float32 rounding (~1e-11 here, against the tensor's ~1e-4 gradients) amplified up to
# 1e8 times, times lr. At lr = 0.05 one such weight differs by 3.5e-6; at the trainer's default
# lr = 1e-3 every weight agrees within ATOL. test_same_gradients checks the gradients themselves.
LEARNING_RATES = {'sgd': 0.05, 'adam': 1e-3}


def _optimizers(name: str):
  lr = LEARNING_RATES[name]
  if name == 'sgd':
    return optax.sgd(lr), lambda p: torch.optim.SGD(p, lr=lr)
  # The trainer's own Adam (inject_hyperparams), without clipping.
  tx = state_lib.make_optimizer(state_lib.OptimConfig(learning_rate=lr, max_grad_norm=0.0))
  return tx, lambda p: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=1e-8)


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
@pytest.mark.parametrize('kind', KINDS)
def test_same_optimizer_steps(kind, optimizer):
  """Two steps of the jaxrec trainer's train step and of TorchRec (EmbeddingBagCollection,
  dense gradients) from the same weights give the same weights and losses."""
  torch_model = _torch_model(kind)
  jax_model, params = tc.from_torchrec(torch_model, schema=MIXED)
  tx, torch_opt = _optimizers(optimizer)
  batches = [_batch(seed=s) for s in (1, 2)]
  state, mask = state_lib.create_train_state(jax_model, batches[0], tx, seed=0)
  state = state.replace(params=params, opt_state=tx.init(params))
  cfg = state_lib.OptimConfig(max_grad_norm=0.0)
  step = jax.jit(state_lib.make_train_step(jax_model, tx, mask, cfg))
  opt = torch_opt(torch_model.parameters())
  for batch in batches:
    state, metrics = step(state, batch)
    dense, kjt = tc.batch_to_torchrec(batch, MIXED)
    loss = tc.torch_train_step(torch_model, opt, dense, kjt, torch.from_numpy(batch['label']),
                               torch.from_numpy(batch['weight']))
    np.testing.assert_allclose(metrics['loss'], loss.item(), rtol=RTOL, atol=ATOL)
    got = traverse_util.flatten_dict(tc.params_from_torchrec(torch_model, jax_model))
    want = traverse_util.flatten_dict(jax.device_get(state.params))
    moved = 0
    for path, value in want.items():
      np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=ATOL, err_msg='/'.join(path))
      moved += not np.array_equal(value, traverse_util.flatten_dict(params)[path])
    assert moved == len(want)  # every parameter took a step


def test_bad_inputs_name_the_problem():
  shared = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
      name='t', embedding_dim=D, num_embeddings=5, feature_names=['a', 'b'])])
  with pytest.raises(ValueError, match="table 't' serves features"):
    tc.from_torchrec(TorchDLRM(shared, 2, [5, D], [6, 1]))
  with pytest.raises(ValueError, match='over_arch_layer_sizes'):
    tc.from_torchrec(_torch_model('dlrm', over=(6, 2)), schema=MIXED)
  jax_model, params = tc.from_torchrec(_torch_model('dlrm'), schema=MIXED)
  with pytest.raises(ValueError, match='batch_norm'):
    tc.torchrec_model_like(dataclasses.replace(jax_model, batch_norm=True))
  with pytest.raises(ValueError, match='need dense features'):
    tc.torchrec_model_like(dataclasses.replace(jax_model, schema=FeatureSchema(MIXED.sparse)))
  with pytest.raises(TypeError, match='pairs with torchrec DLRM_DCN'):
    tc.params_from_torchrec(_torch_model('dlrm'), DLRMDCN(MIXED, embedding_dim=D))
  renamed = dataclasses.replace(MIXED, sparse=(dataclasses.replace(MIXED.sparse[0], name='u'),)
                                + MIXED.sparse[1:])
  with pytest.raises(ValueError, match='differ from the schema fields'):
    tc.params_from_torchrec(_torch_model('dlrm'), dataclasses.replace(jax_model, schema=renamed))
  wrong = dict(params, top_mlp={**params['top_mlp'], 'output': {
      'kernel': np.zeros((3, 1), np.float32), 'bias': np.zeros(1, np.float32)}})
  with pytest.raises(ValueError, match='top_mlp/output/kernel has shape'):
    tc.params_to_torchrec(wrong, jax_model, _torch_model('dlrm'))
  weighted = make_batch(MIXED)
  with pytest.raises(ValueError, match="multi_hot_weights of field 'tags'"):
    tc.batch_to_torchrec(weighted, MIXED)
