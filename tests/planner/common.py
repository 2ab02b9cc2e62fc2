"""Small synthetic tables and a tiny trained cost model for the planner tests."""

import functools

import numpy as np

from jaxrec.planner import cost_model as cm
from jaxrec.planner import features as F
from jaxrec.planner import measure


def table(name, rows, dim, pooling=2.0, skew=0.0):
  """Features of a table: ``skew`` moves access counts up (0: mostly read once)."""
  hist = np.exp(-np.arange(17) * (2.0 - skew))
  return F.TableFeatures(name, rows, dim, pooling, tuple(hist / hist.sum()))


def tables(n=12, seed=0, dims=(4, 8, 16, 32, 64)):
  rng = np.random.default_rng(seed)
  return [table(f't{i}', int(rng.integers(50, 400)), int(rng.choice(dims)),
                float(rng.uniform(0.5, 6.0)), float(rng.uniform(0, 1.5))) for i in range(n)]


@functools.lru_cache(maxsize=None)
def tiny_cost_model(batch_size=64, seed=0, samples=60, epochs=30):
  """A NeuroShard model fitted in seconds to analytic costs (not measurements): enough to drive
  the search in tests. Cached: one per pytest process (its comm models are added on use)."""
  rng = np.random.default_rng(seed)
  analytic = cm.AnalyticCostModel(batch_size)
  pool = tables(40, seed)
  loads = [[pool[j] for j in rng.integers(0, len(pool), rng.integers(1, 6))]
           for _ in range(samples)]
  costs = [analytic.compute_ms(load) for load in loads]
  result = cm.train_compute(loads, costs, epochs=epochs, seed=seed)
  return cm.from_training(result, {}, {'batch_size': batch_size},
                          functools.partial(linear_comm, batch_size))


def linear_comm(batch_size, num_hosts, per_host):
  """A ``CommModel`` whose MLP is set by hand to the analytic all-to-all (every layer passes the
  ``D <= 16`` widths through; the last scales them by ``2 B 4 / bw``): no training to wait for.
  ``pretrain.analytic_comm_trainer`` is what the library uses."""
  d = num_hosts * per_host
  slope = float(measure.comm_ms_of_dims(1.0, batch_size, num_hosts))
  params, width = {}, d
  for i, n in enumerate(cm.COMM_MLP + (d,)):
    kernel = np.zeros((width, n), np.float32)
    kernel[np.arange(d), np.arange(d)] = slope if i == len(cm.COMM_MLP) else 1.0
    params[f'Dense_{i}'] = {'kernel': kernel, 'bias': np.zeros(n, np.float32)}
    width = n
  norm = cm.Normalizer(np.zeros(d, np.float32), np.ones(d, np.float32))
  return cm.CommModel(num_hosts, per_host, {'params': params}, norm)
