"""Image classification through the one loop: train, resume exactly, score a file; recipes and
label noise from the config; clear errors for combinations the loop does not support."""

import json
import os

import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import loop
from jaxrec.train.config import fashion_mnist_config
from jaxrec.train.evaluation import evaluate_split_file
from tests.data.test_fashion_mnist import make_rows, write_split

PER_CLASS = 12  # 120 training rows: 20 validation (2 per class), 100 train


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('fmnist')
  images, labels = make_rows(PER_CLASS, 0)
  # Learnable: brighten a class-dependent band of rows.
  for c in range(10):
    images[labels == c, 2 * c:2 * c + 3, :] = 255
  write_split(d, 'train', images, labels)
  return d


def _config(data_dir, **overrides):
  c = fashion_mnist_config('cnn', num_epochs=2, channels=(4, 8), hidden=16)
  c.data_dir = str(data_dir)
  c.dataset_options.fashion_mnist.validation_per_class = 2
  c.batch_size = 16
  c.eval_batch_size = 32
  c.learning_rate = 3e-3
  c.lr_schedule = 'cosine'
  c.progress = False
  c.tensorboard = False
  c.log_every_steps = 3
  c.checkpoint_every_steps = 0
  for k, v in overrides.items():
    *groups, field = k.split('.')
    target = c
    for g in groups:
      target = target[g]
    target[field] = v
  return c


def test_cnn_trains_and_scores_a_split_file(data_dir, tmp_path):
  results = loop.train_and_evaluate(_config(data_dir), str(tmp_path / 'run'))
  assert set(results['valid']) == {'accuracy', 'nll', 'ece', 'rows'}
  assert results['valid']['rows'] == 20
  assert results['epochs_run'] == 2 and results['steps'] == 2 * 7
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert saved['valid'] == results['valid']
  # Score another IDX file by path (its labels found beside it), as scripts/evaluate.py does.
  images, labels = make_rows(3, 1)
  path = write_split(tmp_path, 't10k', images, labels)
  got = evaluate_split_file(str(tmp_path / 'run'), path)
  assert got['rows'] == 30 and 0.0 <= got['accuracy'] <= 1.0 and got['nll'] > 0
  # The best checkpoint scored on the validation rows gives results.json's numbers.
  best = evaluate_split_file(str(tmp_path / 'run'), str(data_dir / 'train-images-idx3-ubyte.gz'))
  assert best['rows'] == 120


@pytest.mark.parametrize('recipe', ['smc'])
def test_recipe_run_resumes_exactly(data_dir, tmp_path, recipe):
  """Killed after 5 steps (mid-epoch, held soft labels in the state) and resumed: the same final
  results as an uninterrupted run. (DLB holds its soft labels the same way; its step is checked
  against a hand reference in test_recipes.py.)"""
  straight = loop.train_and_evaluate(_config(data_dir, recipe=recipe), str(tmp_path / 'a'))
  part = loop.train_and_evaluate(_config(data_dir, recipe=recipe, max_steps=5),
                                 str(tmp_path / 'b'))
  assert part == {'stopped_at_step': 5}
  resumed = loop.train_and_evaluate(_config(data_dir, recipe=recipe), str(tmp_path / 'b'))
  assert resumed['valid'] == straight['valid']
  assert resumed['history'] == straight['history']


def test_label_noise_from_the_config(data_dir, tmp_path):
  c = _config(data_dir, label_noise=0.4, num_epochs=1)
  loop.train_and_evaluate(c, str(tmp_path / 'noisy'))
  state = json.loads((tmp_path / 'noisy' / 'dataset_state.json').read_text())
  noise = state['label_noise']
  assert noise['rate'] == 0.4 and noise['seed'] == c.seed
  assert 20 <= noise['flipped'] <= 60  # 100 training labels at rate 0.4


@pytest.mark.parametrize('overrides,message', [
    ({'label_noise': 1.0}, 'config.label_noise'),
    ({'monitor': 'auc'}, 'config.monitor'),
    ({'recipe': 'mixup'}, 'config.recipe'),
    ({'optimizer': 'lion'}, 'config.optimizer'),
    ({'task': 'ctr'}, 'config.task=ctr'),
    ({'task_options.blur': 1}, 'task_options'),
    ({'embedding.plan': 'table_wise'}, 'config.embedding.plan'),
])
def test_bad_configs_are_clear_errors(data_dir, tmp_path, overrides, message):
  if 'task_options.blur' in overrides:
    c = _config(data_dir)
    c.task_options.blur = 1
  else:
    c = _config(data_dir, **overrides)
  with pytest.raises(ConfigError, match=message.replace('.', r'\.')):
    loop.train_and_evaluate(c, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'config.json')


def test_image_model_on_ctr_data_is_an_error(tmp_path):
  c = _config('unused')
  c.dataset = 'synthetic'
  c.data_dir = ''
  c.monitor = 'auc'
  with pytest.raises(ConfigError, match='image model'):
    loop.train_and_evaluate(c, str(tmp_path / 'bad'))
