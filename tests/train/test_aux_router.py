"""MoMa's auxiliary-router phase: the configs and models it refuses. The phase end to end (a MoMa
run forked into ``recipe='aux_router'``: fresh optimizer, only the auxiliary routers updated,
every other parameter bit for bit, causal validation) is the doc check of docs/moma.md
(tests/doc_checks.py: moma_aux)."""

import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import loop
from jaxrec.train.config import aux_router_config, moma_config


def _small(c, data_dir, cache_dir, **overrides):
  c.data_dir = str(data_dir)
  c.model_kwargs.update(num_layers=2, embed_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
  c.dataset_options.mixed_modal.update(seq_len=128, images_per_sequence=1, train_rows=16,
                                       valid_rows=16, text_vocab_size=256, codebook_size=16,
                                       cache_dir=str(cache_dir))
  c.batch_size, c.eval_batch_size, c.max_steps = 8, 16, 1
  c.progress = c.tensorboard = False
  c.update(overrides)
  return c


def test_aux_router_recipe_refuses_models_it_cannot_train(shared_data, tmp_path):
  cache = tmp_path / 'cache'
  dense = _small(moma_config('dense', 'xs'), shared_data, cache, recipe='aux_router')
  with pytest.raises(ConfigError, match='has none'):
    loop.train_and_evaluate(dense, str(tmp_path / 'a'))
  causal = _small(aux_router_config('moma', 'xs'), shared_data, cache)
  causal.model_kwargs.routing_mode = 'causal'
  with pytest.raises(ConfigError, match='sowed no auxiliary-router terms'):
    loop.train_and_evaluate(causal, str(tmp_path / 'b'))
  with pytest.raises(ValueError, match='no router'):
    aux_router_config('mot', 'xs')
