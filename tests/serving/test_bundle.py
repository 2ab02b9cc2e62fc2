"""The serving bundle: pruned word table, remapped ids, identical predictions; the run loader."""

import os

import jax
import numpy as np
import pytest

from jaxrec.serving import bundle
from tests.serving.fake_run import CONFIG, full_margins_fn, make_fake_run, random_params


@pytest.fixture(scope='module')
def model():
  params = random_params(CONFIG, seed=3)
  rng = np.random.default_rng(3)
  ids = rng.choice([0, 3, 7, 8, 21, 39], (12, 10)).astype(np.int32)  # 6 of the 40 ids
  mask = (ids > 0).astype(np.int32)
  mask[:, 0] = 1
  return params, ids, mask


def test_round_trip_predicts_exactly_as_the_unpruned_model(model, tmp_path):
  params, ids, mask = model
  label = np.arange(12) % 2
  path = str(tmp_path / 'bundle')  # no suffix: written exactly there
  config = bundle.save_bundle(path, CONFIG, params, ids, mask, label)
  assert os.path.exists(path) and config.vocab_size == 6
  b_config, b_params, arrays = bundle.load_bundle(path)
  assert b_config == config
  np.testing.assert_array_equal(arrays['vocab'], [0, 3, 7, 8, 21, 39])
  np.testing.assert_array_equal(arrays['vocab'][arrays['input_ids']], ids)  # remapped
  np.testing.assert_array_equal(arrays['attention_mask'], mask)
  np.testing.assert_array_equal(arrays['label'], label)
  assert b_params['encoder']['embeddings']['word'].shape == (6, CONFIG.hidden_size)
  np.testing.assert_array_equal(b_params['encoder']['embeddings']['word'],
                                np.asarray(params['encoder']['embeddings']['word'])[[0, 3, 7, 8,
                                                                                      21, 39]])
  # every other leaf travels unchanged, in float32
  flat = lambda p: {jax.tree_util.keystr(k): v for k, v in
                    jax.tree_util.tree_flatten_with_path(p)[0]}
  got, want = flat(b_params), flat(params)
  assert got.keys() == want.keys()
  for k in want:
    if 'word' not in k:
      assert got[k].dtype == np.float32
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # the lookup gathers the same rows, so the margins are bitwise those of the unpruned model
  np.testing.assert_array_equal(full_margins_fn(b_config)(b_params, arrays['input_ids'],
                                                          arrays['attention_mask']),
                                full_margins_fn(CONFIG)(params, ids, mask))


def test_bad_bundles_and_ids_are_named(model, tmp_path):
  params, ids, mask = model
  with pytest.raises(ValueError, match=r'input_ids outside \[0, 40\)'):
    bundle.save_bundle(str(tmp_path / 'b.npz'), CONFIG, params, ids + 35, mask)
  with pytest.raises(ValueError, match='must both be'):
    bundle.save_bundle(str(tmp_path / 'b.npz'), CONFIG, params, ids, mask[:, :3])
  other = str(tmp_path / 'other.npz')
  np.savez(other, x=np.ones(2))
  with pytest.raises(ValueError, match='not a serving bundle'):
    bundle.load_bundle(other)


def test_load_run_reads_a_train_optirag_run(tmp_path):
  z = make_fake_run(str(tmp_path / 'run'), seed=1, rows=6)
  results, margins, config, params = bundle.load_run(str(tmp_path / 'run'))
  assert config == CONFIG and results['retriever'] == 'r1'
  np.testing.assert_array_equal(margins['test_input_ids'], z['test_input_ids'])
  np.testing.assert_array_equal(full_margins_fn(config)(params, z['test_input_ids'],
                                                        z['test_attention_mask']),
                                z['test_margins'])
