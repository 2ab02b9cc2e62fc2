"""The mixed-modal decoder LM, dense and Mixture-of-Transformers, on 8 emulated devices: every FSDP
strategy and tensor parallelism reproduce the single-device loss trajectory of the language-model
task (rtol 1e-5), with the collectives each strategy implies in the compiled step."""

import numpy as np
import pytest

from jaxrec.data.schema import SequenceSchema
from jaxrec.models.mixed_modal_lm import DecoderLM
from jaxrec.sharding import hlo
from jaxrec.sharding.fsdp import ShardingConfig
from jaxrec.train.tasks import LanguageModelTask
from tests.sharding import common

# Vocabulary 19 text + 5 special + 16 codes = 40 and widths divisible by 8: no sharding fallback.
# An 8x8 image in 4x4 patches is 4 tokens; one per 16-token row: 12 text and 4 image tokens.
SCHEMA = SequenceSchema(seq_len=16, images_per_sequence=1, text_vocab_size=19, codebook_size=16,
                        image_height=8, image_width=8, patch_size=4)
TASK = LanguageModelTask()
STEPS, ROWS = 8, 16
CASES = {  # name: (strategy, mesh axes, hosts)
    'NO_SHARD': ('NO_SHARD', {'data': -1, 'fsdp': 1, 'tensor': 1}, 0),
    'FULL_SHARD': ('FULL_SHARD', {'data': 2, 'fsdp': 4, 'tensor': 1}, 0),
    'SHARD_GRAD_OP': ('SHARD_GRAD_OP', {'data': 1, 'fsdp': -1, 'tensor': 1}, 0),
    'HYBRID_SHARD': ('HYBRID_SHARD', {'data': 1, 'fsdp': -1, 'tensor': 1}, 2),
    'FULL_SHARD+tensor': ('FULL_SHARD', {'data': 1, 'fsdp': 4, 'tensor': 2}, 0),
}


def make_batches():
  """Random rows with exactly the schema's per-modality counts, at random positions."""
  out = []
  counts = SCHEMA.modality_counts
  for i in range(STEPS):
    r = np.random.default_rng([7, i])
    modality = np.stack([r.permutation(np.repeat([0, 1], counts)) for _ in range(ROWS)])
    text = r.integers(0, SCHEMA.image_offset, (ROWS, SCHEMA.seq_len))
    image = r.integers(SCHEMA.image_offset, SCHEMA.vocab_size, (ROWS, SCHEMA.seq_len))
    inputs = np.where(modality == 1, image, text).astype(np.int32)
    target_modality = np.roll(modality, -1, axis=1).astype(np.int32)
    label = np.where(target_modality == 1, np.roll(image, -1, 1), np.roll(text, -1, 1))
    batch = {'inputs': inputs, 'modality': modality.astype(np.int32),
             'label': label.astype(np.int32), 'target_modality': target_modality,
             'loss_mask': np.ones((ROWS, SCHEMA.seq_len), np.float32),
             'weight': np.ones(ROWS, np.float32)}
    if i == STEPS - 1:
      batch['weight'][-3:] = 0.0
    out.append(batch)
  return out


def model(untie):
  return DecoderLM(SCHEMA, num_layers=2, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                   untie=untie)


@pytest.fixture(scope='module')
def references():
  """untie -> (batches, single-device losses, initial state), computed once per model."""
  cache = {}

  def get(untie):
    if untie not in cache:
      batches = make_batches()
      losses, initial = common.reference_run(model(untie), batches, task=TASK)
      cache[untie] = (batches, losses, initial)
    return cache[untie]
  return get


# MoT under every strategy (its per-modality copies add the 'modality' axis); the dense decoder
# under FULL_SHARD with a tensor axis (its kernels are MoT's without that axis).
@pytest.mark.parametrize('untie,name',
                         [('mot', n) for n in CASES] + [('none', 'FULL_SHARD+tensor')])
def test_strategy_matches_single_device(references, untie, name):
  batches, want, initial = references(untie)
  strategy, axes, hosts = CASES[name]
  got, trainer, compiled = common.sharded_run(model(untie), common.mesh_for(axes, hosts),
                                              ShardingConfig(strategy), batches, initial,
                                              task=TASK)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  kinds = {(op.kind, op.group_size) for op in hlo.collectives(compiled.as_text())}
  if name != 'FULL_SHARD+tensor':
    common.assert_strategy_gathers(name, kinds)
    if name == 'NO_SHARD':
      return
  assert trainer.report.fraction <= 0.1
  gate = trainer.plan.param_dims['lm']['layers']['ffn']['gate']['kernel']
  lead = ((), ()) if untie == 'mot' else ((),)  # 'layers' (and MoT's 'modality') unsharded
  if name == 'FULL_SHARD+tensor':  # the SwiGLU kernels' 'mlp' dimension over the tensor axis too
    assert gate == lead + (('fsdp',), ('tensor',)), gate
    assert any(k == 'all-gather' for k, _ in kinds)
