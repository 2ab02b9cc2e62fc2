"""NeuroShard's cost models: structure, training, files."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.planner import cost_model as cm
from jaxrec.planner import measure, pretrain
from tests.planner.common import tables, tiny_cost_model


@pytest.fixture(scope='module')
def model():
  return tiny_cost_model()


def test_device_cost_is_a_function_of_the_set_of_shards(model):
  ts = tables(5)
  x = model.compute_ms(ts)
  assert model.compute_ms(ts[::-1]) == pytest.approx(x, rel=1e-5)  # order does not matter
  assert model.compute_ms([]) == 0.0
  # numpy forward == the Flax network (padding rows masked out).
  norm = model.norm(np.stack([t.vector() for t in ts]))
  xs = np.zeros((1, 7, norm.shape[1]), np.float32)
  xs[0, :5] = norm
  mask = np.array([[1, 1, 1, 1, 1, 0, 0]], np.float32)
  flax_out = cm.ComputeCostNet().apply(model.params, jnp.asarray(xs), jnp.asarray(mask))
  assert max(float(flax_out[0]) * model.scale, 0.0) == pytest.approx(x, rel=1e-4, abs=1e-9)
  assert x > 0


def test_training_fits_an_additive_cost(model):
  # The tiny model was fitted to analytic costs; it ranks loads like them.
  analytic = cm.AnalyticCostModel(64)
  loads = [tables(k, seed=10 + k) for k in (1, 3, 6, 9)]
  got = [model.compute_ms(load) for load in loads]
  want = [analytic.compute_ms(load) for load in loads]
  assert np.corrcoef(got, want)[0, 1] > 0.9
  assert set(model.meta['compute_mse']) == {'train', 'val', 'test'}


def test_comm_model_is_trained_for_a_new_mesh(model):
  dims = np.array([64.0, 16.0, 32.0, 8.0])
  ms = model.comm_ms(dims, num_hosts=1)  # the test model's hand-set linear comm model
  assert (1, 4) in model.comm and ms.shape == (4,)
  np.testing.assert_allclose(ms, measure.comm_ms_of_dims(dims, 64, 1), rtol=1e-6)
  # The library trains an MLP on the analytic all-to-all (few samples here).
  trained = pretrain.analytic_comm_trainer(64, samples=256, epochs=30)(1, 4)
  got = trained.predict(dims)
  assert got.shape == (4,) and np.argmax(got) == 0  # the widest device sends most


def test_files_round_trip_and_refuse_another_layout(model, tmp_path):
  model.comm_ms(np.ones(2))  # a comm model to save too
  path = tmp_path / 'm.npz'
  cm.save(model, path)
  back = cm.load(path)
  ts = tables(4, seed=3)
  assert back.compute_ms(ts) == pytest.approx(model.compute_ms(ts), rel=1e-6)
  two = np.array([3.0, 9.0])
  np.testing.assert_allclose(back.comm_ms(two), model.comm_ms(two), rtol=1e-6)
  assert back.meta['batch_size'] == 64

  # The same file with another feature layout in its header.
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  header = json.loads(bytes(arrays['header']).decode())
  header['feature_layout'] = ['rows', 'dim', 'pooling'] + [f'bin_{i}' for i in range(16)]
  arrays['header'] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  other = tmp_path / 'other.npz'
  np.savez(other, **arrays)
  with pytest.raises(cm.CostModelFormatError, match=r"trained on features \[.*'bin_15'\], "
                                                    r"but this jaxrec uses \[.*'bin_16'\]"):
    cm.load(other)
  (tmp_path / 'junk.npz').write_text('not a model')
  with pytest.raises(cm.CostModelFormatError, match='is not a jaxrec cost model'):
    cm.load(tmp_path / 'junk.npz')
  with pytest.raises(cm.CostModelFormatError, match='not found'):
    cm.load(tmp_path / 'missing.npz')
