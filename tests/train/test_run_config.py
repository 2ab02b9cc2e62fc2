"""Runs a user can trust: config checks on resume and fork, dataset options, JSON-native results."""

import json
import os
import pathlib
import shutil

import ml_collections
import pytest

from jaxrec.data import datasets
from jaxrec.errors import ConfigError, ConfigMismatchError, RunDirError, UserError
from jaxrec.train import loop, run_config
from jaxrec.train.config import base_config, chosen_dataset_options

STEPS_PER_EPOCH = 5  # 600 train rows / batch 128


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options.synthetic.update(dict(num_train=600, num_valid=200, num_test=200, seed=3,
                                          num_sparse=3, num_dense=2, max_vocab=20, min_vocab=5))
  c.model = 'deepfm'
  c.embedding_dim = 4
  c.model_kwargs = ml_collections.ConfigDict(dict(hidden_units=(8,), dropout_rate=0.0))
  c.batch_size = 128
  c.eval_batch_size = 200
  c.learning_rate = 0.01
  c.num_epochs = 1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 3
  c.progress = False
  c.tensorboard = False
  for k, v in overrides.items():
    c[k] = v
  return c


def snapshot(workdir) -> dict:
  """Every path under ``workdir`` with its bytes (None for a folder)."""
  root = pathlib.Path(workdir)
  return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
          for p in sorted(root.rglob('*'))}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished one-epoch run: (workdir, results)."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  results = loop.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, results


@pytest.fixture
def run_copy(finished_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run[0], workdir)
  return workdir


@pytest.mark.parametrize('overrides, shown', [
    (dict(model='lr'), "model: 'deepfm' -> 'lr'"),
    (dict(learning_rate=0.02, seed=7), 'learning_rate: 0.01 -> 0.02\n  seed: 2021 -> 7'),
    (dict(embedding_dim=8), 'embedding_dim: 4 -> 8'),
])
def test_a_changed_config_is_refused_and_the_workdir_left_as_it_was(run_copy, overrides, shown):
  before = snapshot(run_copy)
  with pytest.raises(ConfigMismatchError) as info:
    loop.train_and_evaluate(tiny_config(**overrides), str(run_copy))
  assert shown in str(info.value)
  for hint in ('--override_config_check', '--fork_from', 'new --workdir', 'num_epochs'):
    assert hint in str(info.value)
  assert snapshot(run_copy) == before


def test_changed_dataset_options_and_model_kwargs_are_listed(run_copy):
  c = tiny_config()
  c.dataset_options.synthetic.num_train = 700
  c.model_kwargs.hidden_units = (16,)
  before = snapshot(run_copy)
  with pytest.raises(ConfigMismatchError) as info:
    loop.train_and_evaluate(c, str(run_copy))
  assert 'dataset_options.synthetic.num_train: 600 -> 700' in str(info.value)
  assert 'model_kwargs.hidden_units: [8] -> [16]' in str(info.value)
  assert snapshot(run_copy) == before


def test_changed_data_is_refused(run_copy):
  path = run_copy / 'dataset_state.json'
  state = json.loads(path.read_text())
  state['num_rows']['train'] += 1  # as if the files had changed since the run started
  path.write_text(json.dumps(state))
  before = snapshot(run_copy)
  with pytest.raises(ConfigMismatchError, match='dataset loaded now differs'):
    loop.train_and_evaluate(tiny_config(), str(run_copy))
  assert snapshot(run_copy) == before


def test_resumable_fields_may_change_and_the_message_counts_epochs_from_1(run_copy, capsys,
                                                                           finished_run):
  results = loop.train_and_evaluate(tiny_config(log_every_steps=1, eval_batch_size=100),
                                    str(run_copy))
  assert 'training finished after 1 epochs' in capsys.readouterr().out
  for k, v in finished_run[1]['valid'].items():  # other eval batches: float32 sums reorder
    assert results['valid'][k] == pytest.approx(v, rel=1e-6), k
  stored = json.loads((run_copy / 'config.json').read_text())
  assert stored['log_every_steps'] == 1 and stored['eval_batch_size'] == 100


def test_override_config_check_resumes_with_the_new_config(run_copy, capsys):
  loop.train_and_evaluate(tiny_config(learning_rate=0.02), str(run_copy),
                          override_config_check=True)
  assert 'learning_rate: 0.01 -> 0.02' in capsys.readouterr().out
  assert json.loads((run_copy / 'config.json').read_text())['learning_rate'] == 0.02


def test_fork_from_starts_a_new_workdir_from_the_old_checkpoint(finished_run, tmp_path):
  old = finished_run[0]
  before = snapshot(old)
  new = tmp_path / 'fork'
  results = loop.train_and_evaluate(tiny_config(learning_rate=0.002, num_epochs=2), str(new),
                                    fork_from=str(old))
  assert results['steps'] == 2 * STEPS_PER_EPOCH and results['epochs_run'] == 2
  assert json.loads((new / 'config.json').read_text())['learning_rate'] == 0.002
  assert snapshot(old) == before
  with pytest.raises(RunDirError, match='already holds a run'):
    loop.train_and_evaluate(tiny_config(), str(new), fork_from=str(old))


def test_config_json_without_checkpoint_starts_afresh_then_resume_counts_from_1(tmp_path,
                                                                                 capsys):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'model': 'lr', 'dataset': 'synthetic'}))
  out = loop.train_and_evaluate(tiny_config(max_steps=7, num_epochs=2), str(workdir))
  assert out == {'stopped_at_step': 7}
  assert 'no checkpoint' in capsys.readouterr().out
  assert json.loads((workdir / 'config.json').read_text())['model'] == 'deepfm'
  out = loop.train_and_evaluate(tiny_config(max_steps=8, num_epochs=2), str(workdir))
  assert out == {'stopped_at_step': 8}
  # Step 7 is batch 2 of epoch 2, which the progress bar calls 'epoch 2'.
  assert f'at step 7 (epoch 2, 2 of {STEPS_PER_EPOCH} batches done)' in capsys.readouterr().out


def _assert_json_native(x, where='results'):
  if isinstance(x, dict):
    for k, v in x.items():
      assert type(k) is str, where  # pylint: disable=unidiomatic-typecheck
      _assert_json_native(v, f'{where}.{k}')
  elif isinstance(x, list):
    for i, v in enumerate(x):
      _assert_json_native(v, f'{where}[{i}]')
  else:
    assert type(x) in (int, float, str, bool, type(None)), f'{where}: {type(x)}'


def test_results_are_json_native(finished_run):
  workdir, results = finished_run
  _assert_json_native(results)
  assert json.loads((workdir / 'results.json').read_text()) == results


# Dataset options.


def test_every_dataset_option_is_in_the_base_config_at_its_default():
  c = base_config()
  for name in datasets.DATASETS:
    group = c.dataset_options[name].to_dict()
    want = {k: spec.default for k, spec in datasets.dataset_options(name).items()}
    assert group == want, name
  # A None default is a typed placeholder, so the command line can set it.
  c.dataset_options.criteo.valid_file = 'valid.txt'
  with pytest.raises(TypeError):
    c.dataset_options.criteo.valid_file = 3


def test_switching_dataset_uses_that_datasets_options():
  c = tiny_config()
  c.dataset = 'criteo'
  c.dataset_options.criteo.train_file = 'x.csv'
  got = chosen_dataset_options(c)
  assert got['train_file'] == 'x.csv' and 'num_train' not in got
  assert run_config.run_record(c)['dataset_options'] == {'criteo': got | {'split': [0.8, 0.1, 0.1]}}


def test_options_a_dataset_does_not_take_are_named():
  with pytest.raises(ConfigError) as info:
    datasets.load_dataset('criteo', '/nonexistent', num_test=5, train_file='x.csv')
  assert "['num_test']" in str(info.value) and 'train_file' in str(info.value)
  # A flat dataset_options (older configs) is read as config.dataset's options.
  c = tiny_config()
  c.dataset_options = ml_collections.ConfigDict(dict(num_train=600, num_test=5))
  assert chosen_dataset_options(c)['num_train'] == 600
  c.dataset = 'criteo'
  with pytest.raises(ConfigError) as info:
    chosen_dataset_options(c)
  assert "['num_test', 'num_train']" in str(info.value)
  assert 'config.dataset_options.criteo.<option>' in str(info.value)
  assert isinstance(info.value, UserError)


def test_a_flat_stored_config_matches_its_grouped_equivalent(finished_run):
  old = json.loads((finished_run[0] / 'config.json').read_text())
  flat = dict(old, dataset_options=old['dataset_options']['synthetic'])
  assert not run_config.config_changes(flat, run_config.run_record(tiny_config()))
  assert os.path.isfile(finished_run[0] / 'results.json')


def test_a_field_added_since_the_record_is_a_change_only_off_its_default(finished_run):
  old = json.loads((finished_run[0] / 'config.json').read_text())
  del old['embedding']['planner']  # a record written before the field existed
  new = run_config.run_record(tiny_config())
  assert not run_config.config_changes(old, new)
  new['embedding']['planner'] = 'torchrec'
  assert run_config.config_changes(old, new) == [('embedding.planner', '<absent>', 'torchrec')]
