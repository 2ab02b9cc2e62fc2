"""Every experiment config loads and builds its model on its dataset's schema."""

import pathlib
import runpy

import jax
import numpy as np
import pytest

from jaxrec.data import synthetic
from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.frappe import FIELD_NAMES, FIELD_SIZES
from jaxrec.data.schema import one_hot_schema
from jaxrec.train.config import chosen_dataset_options
from jaxrec.train.loop import check_config, make_model
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p for p in (REPO_ROOT / 'configs').glob('*.py'))


def _schema(config):
  if config.dataset == 'frappe':
    return one_hot_schema(FIELD_NAMES, FIELD_SIZES)
  if config.dataset == 'synthetic':
    options = {k: v for k, v in chosen_dataset_options(config).items()
               if k not in ('num_train', 'num_valid', 'num_test')}
    return synthetic.SyntheticConfig(**options).schema()
  pytest.skip(f'no schema fixture for dataset {config.dataset!r}')


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_its_model(path: pathlib.Path):
  module = runpy.run_path(str(path))
  if 'get_config' not in module:
    pytest.skip(f'{path.name} defines no get_config')
  config = module['get_config']()
  if 'model' not in config:
    pytest.skip(f'{path.name} is not a training config')
  check_config(config)
  schema = _schema(config)
  model = make_model(config, schema)
  rows = 4
  ds = ArrayDataset(schema, sparse=np.zeros((rows, schema.num_sparse), np.int32),
                    label=np.zeros(rows), dense=np.zeros((rows, schema.num_dense), np.float32),
                    multi_hot_ids=np.zeros((rows, schema.num_multi_hot,
                                            schema.max_multi_hot_length), np.int32)
                    if schema.num_multi_hot else None,
                    multi_hot_lengths=np.ones((rows, schema.num_multi_hot), np.int32)
                    if schema.num_multi_hot else None)
  batch = next(ds.batches(rows))
  feats = {k: v for k, v in batch.items() if k not in ('label', 'weight')}
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), feats, train=False)[0])
  assert out.shape == (rows,)
