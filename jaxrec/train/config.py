"""The fields every training config has, with the BARS protocol defaults.

Experiment files in configs/ start from :func:`base_config` and override what differs.

Dataset options: ``config.dataset_options`` holds one group per dataset, each with every option of
that dataset's ``load`` at its default (:func:`jaxrec.data.datasets.dataset_options`; the options
are documented in each dataset module). Only the group of ``config.dataset`` is used, so switching
datasets on the command line needs nothing else::

    --config.dataset=criteo --config.data_dir=DIR --config.dataset_options.criteo.train_file=x.csv

A config file sets its dataset's options in that group
(``c.dataset_options.synthetic.num_train = 400_000``). A flat ``dataset_options`` (``num_train=...``
directly, as older configs and run directories have it) still works and is read as the options of
``config.dataset``. Either way an option the dataset does not take is a
:class:`~jaxrec.errors.ConfigError` naming it and the valid ones.
"""

from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from jaxrec.data.datasets import DATASETS, check_options, dataset_options
from jaxrec.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Fields every run has (BARS protocol defaults)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = 'synthetic'  # synthetic | frappe | movielens | criteo | avazu | libffm
  c.data_dir = ''  # folder of the dataset's files (unused for synthetic)
  c.dataset_options = all_dataset_options()  # dataset_options.<dataset>.<option>
  # Model.
  c.model = 'dcnv2'  # lr | fm | deepfm | dlrm | dcnv2
  c.embedding_dim = 10
  c.model_kwargs = ml_collections.ConfigDict()
  # Optimisation (BARS: Adam 1e-3, batch 4096, grad-norm clip 10 as FuxiCTR).
  c.batch_size = 4096
  c.eval_batch_size = 4096
  c.learning_rate = 1e-3
  c.max_grad_norm = 10.0
  c.embedding_regularizer = 0.0
  c.net_regularizer = 0.0
  # BARS protocol: validate every epoch; lr x0.1 on no improvement (floor 1e-6); stop after 2
  # epochs without improvement; test the best checkpoint.
  c.num_epochs = 100
  c.monitor = 'auc'  # CTR: auc | logloss | auc-logloss; classification: accuracy | nll
  c.min_delta = 1e-6
  c.lr_decay_factor = 0.1
  c.min_learning_rate = 1e-6
  c.early_stop_patience = 2
  c.seed = 2021
  # Optimizer beyond BARS' Adam: sgd (momentum, nesterov; net_regularizer is then PyTorch's
  # coupled weight decay) and the cosine schedule (instead of the plateau rule above).
  c.optimizer = 'adam'  # adam | sgd
  c.momentum = 0.9
  c.nesterov = False
  c.lr_schedule = 'plateau'  # plateau | cosine
  c.warmup_epochs = 0.0  # cosine: linear warm-up epochs
  # Task (jaxrec.train.tasks): auto = by the data (CTR on tabular data, classification on
  # images), with its options (classification: augment_padding, augment_flip, ece_bins).
  c.task = 'auto'  # auto | ctr | classification | lm
  c.task_options = ml_collections.ConfigDict()
  # Symmetric label noise on the training labels (rate in [0, 1); seed -1 = config.seed).
  c.label_noise = 0.0
  c.label_noise_seed = -1
  # Training recipe (jaxrec.train.recipes): none | label_smoothing | dlb | smc.
  c.recipe = 'none'
  c.label_smoothing = 0.1
  c.dlb = ml_collections.ConfigDict({'alpha': 1.0, 'temperature': 3.0})
  c.smc = ml_collections.ConfigDict({'channels': 2, 'views': 'independent', 'alpha': 0.9,
                                     'temperature': 1.5, 'ramp': 'cosine'})
  # Bookkeeping.
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200  # latest checkpoint; also at every epoch end
  c.max_steps = 0  # 0 = no limit; else stop (resumably) after this many steps
  c.progress = True
  c.tensorboard = True
  # Sharding (jaxrec.sharding, docs/fsdp.md): a mesh over every device of every process and the
  # FSDP strategy. The default is plain data parallelism over all devices.
  c.sharding = ml_collections.ConfigDict()
  # -1: the rest. expert > 1: a MoE model's experts (decoder_lm, ffn='moe') and the batch split
  # over that many devices, all-to-all dispatch (jaxrec.sharding.expert_parallel); 1: no such axis.
  c.sharding.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'expert': 1, 'tensor': 1})
  c.sharding.hosts = 0  # 0: flat mesh; N, or -1 = one per process: (host, local) mesh, sizes per host
  c.sharding.strategy = 'NO_SHARD'  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
  c.sharding.implementation = 'gspmd'  # gspmd | shard_map (explicit collectives; FULL/HYBRID)
  c.sharding.param_dtype = 'float32'  # dtype of the gathered parameters (masters stay float32)
  c.sharding.reduce_dtype = ''  # dtype of the gradient reduction ('' = param_dtype)
  c.sharding.compute_dtype = ''  # dtype of the floating inputs ('' = param_dtype)
  c.sharding.remat_policy = 'none'  # none | full | dots | dots_no_batch | everything
  c.sharding.offload_params = False  # keep parameters in host memory between steps
  c.sharding.offload_opt_state = False  # keep the optimizer state in host memory between steps
  c.sharding.indivisible = 'error'  # error | replicate: a dimension that does not divide its axes
  c.sharding.max_unsharded_fraction = 0.1  # guardrail: fail above this unsharded fraction
  # Embedding tables sharded by a plan (jaxrec.train.table_trainer, docs/embeddings.md).
  c.embedding = ml_collections.ConfigDict()
  c.embedding.plan = 'none'  # none | auto | a sharding type for every table | path to a JSON plan
  # plan=auto: jaxrec.planner method (neuroshard | neuroshard_refined | torchrec | random |
  # size_greedy | dim_greedy | lookup_greedy | size_lookup_greedy) and, for neuroshard*, its
  # cost-model file ('' = the one shipped for this device kind)
  c.embedding.planner = 'neuroshard'
  c.embedding.cost_model = ''
  # dense (optax, with the other parameters) | sgd | adagrad | rowwise_adagrad | adam (fused)
  c.embedding.optimizer = 'dense'
  c.embedding.learning_rate = 0.0  # fused sparse optimizer's rate (0 = config.learning_rate)
  c.embedding.id_check = 'none'  # none | error (an id outside its table stops the run)
  c.embedding.memory_cap_bytes = 0  # per device (0 = no cap): a plan that does not fit is refused
  c.embedding.hosts = 0  # hosts of the (host, local) embedding mesh (0 = one per process)
  c.embedding.table_wise_below_bytes = 0  # with a type plan: smaller tables stay whole (mixed)
  # Row-split types send each id only to its shard, in buckets of a static capacity: 0 = auto
  # (uniform-id expectation + 6 sigma), f > 0 = f x the expected ids per destination; a step
  # that overflows sends the rest in an exact second pass (jaxrec.sharding.id_buckets).
  c.embedding.id_capacity_factor = 0.0
  return c


FRAPPE_DATA_DIR = '../shared/data/frappe'  # relative to the repo root; --config.data_dir overrides


def frappe_config(model: str, **model_kwargs) -> ml_collections.ConfigDict:
  """:func:`base_config` for ``model`` on Frappe_x1; the BARS protocol defaults (embedding dim 10,
  batch 4096, Adam 1e-3, monitor AUC, 100 epochs, patience 2, seed 2021) already hold there."""
  c = base_config()
  c.dataset = 'frappe'
  c.data_dir = FRAPPE_DATA_DIR
  c.model = model
  c.model_kwargs = ml_collections.ConfigDict(model_kwargs)
  return c


FASHION_MNIST_DATA_DIR = '../shared/data/fashion-mnist'


def fashion_mnist_config(model: str, num_epochs: int = 30,
                         **model_kwargs) -> ml_collections.ConfigDict:
  """:func:`base_config` for image classifier ``model`` on Fashion-MNIST (10,000 validation images
  carved from the training file, ``jaxrec.data.fashion_mnist``): batch 128, every one of
  ``num_epochs`` epochs trained (patience = epochs), the best validation accuracy kept, random
  crop (2 px padding) and flip. The optimizer is left at Adam 1e-3; configs set theirs."""
  c = base_config()
  c.dataset = 'fashion_mnist'
  c.data_dir = FASHION_MNIST_DATA_DIR
  c.model = model
  c.model_kwargs = ml_collections.ConfigDict(model_kwargs)
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = num_epochs
  c.early_stop_patience = num_epochs
  c.monitor = 'accuracy'
  c.max_grad_norm = 0.0
  c.task_options = ml_collections.ConfigDict({'augment_padding': 2, 'augment_flip': True,
                                              'ece_bins': 15})
  return c


MIXED_MODAL_DATA_DIR = '../shared/data'  # holds frappe_raw/ and fashion-mnist/
# Decoder sizes of the Mixture-of-Transformers study (dense parameter counts at the default
# vocabulary of 2,309 tokens, tied embedding: s ~1.1M, m ~5.3M, l ~15M; MoT doubles the
# non-embedding part). mlp_dim ~ 8/3 embed_dim (SwiGLU at a 4x MLP's parameters).
MIXED_MODAL_SIZES = {
    'xs': dict(num_layers=2, embed_dim=64, num_heads=4, head_dim=16, mlp_dim=172),
    's': dict(num_layers=4, embed_dim=128, num_heads=4, head_dim=32, mlp_dim=344),
    'm': dict(num_layers=6, embed_dim=256, num_heads=8, head_dim=32, mlp_dim=684),
    'l': dict(num_layers=8, embed_dim=384, num_heads=6, head_dim=64, mlp_dim=1024),
}


def mixed_modal_config(untie: str = 'none', size: str = 's') -> ml_collections.ConfigDict:
  """:func:`base_config` for the mixed-modal decoder LM (``model='decoder_lm'``, dense
  ``untie='none'`` or Mixture-of-Transformers ``untie='mot'``) of ``MIXED_MODAL_SIZES[size]`` on
  the ``mixed_modal`` data (Frappe descriptions + Fashion-MNIST image tokens, 256-token rows with
  two images): AdamW-style Adam 1e-3 with cosine decay and 5% warm-up, batch 32, gradient clip
  1, validation loss monitored every epoch (no early stop)."""
  if size not in MIXED_MODAL_SIZES:
    raise ValueError(f'mixed_modal_config: size {size!r} is not one of {list(MIXED_MODAL_SIZES)}')
  c = base_config()
  c.dataset = 'mixed_modal'
  c.data_dir = MIXED_MODAL_DATA_DIR
  c.model = 'decoder_lm'
  c.model_kwargs = ml_collections.ConfigDict(dict(MIXED_MODAL_SIZES[size], untie=untie))
  c.batch_size = 32
  c.eval_batch_size = 64
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 0.05
  c.max_grad_norm = 1.0
  c.num_epochs = 2
  c.early_stop_patience = c.num_epochs
  c.monitor = 'loss'
  c.log_every_steps = 25
  return c


# MoMa study variants (docs/moma.md): model_kwargs over mixed_modal_config's. Experts have the
# dense FFN's width and capacity factor 1, so a token is processed once on average (compute
# matched); MoD layers (every 2nd) take 25% of each row's tokens.
MOMA_VARIANTS = {
    'dense': dict(untie='none'),
    'mot': dict(untie='mot'),
    'moe': dict(ffn='moe', experts_per_group=(4,), modality_blind=True),
    'moe_mod': dict(ffn='moe', experts_per_group=(4,), modality_blind=True, mod_fraction=0.25),
    'moma': dict(ffn='moe', experts_per_group=(2, 2)),
    'moma_mod': dict(ffn='moe', experts_per_group=(2, 2), mod_fraction=0.25),
}


def moma_config(variant: str = 'moma', size: str = 's') -> ml_collections.ConfigDict:
  """:func:`mixed_modal_config` with the model of ``MOMA_VARIANTS[variant]`` (dense, MoT, the
  modality-blind expert-choice MoE, MoMa 2 text + 2 image experts, each MoE with and without
  mixture-of-depths)."""
  if variant not in MOMA_VARIANTS:
    raise ValueError(f'moma_config: variant {variant!r} is not one of {list(MOMA_VARIANTS)}')
  c = mixed_modal_config('none', size)
  c.model_kwargs.update(MOMA_VARIANTS[variant])
  return c


def aux_router_config(variant: str = 'moma', size: str = 's') -> ml_collections.ConfigDict:
  """MoMa's second phase for a :func:`moma_config` run: ``recipe='aux_router'`` trains only the
  auxiliary routers (fork the trained run with ``--fork_from``; parameters only, fresh
  optimizer) and ``routing_mode='causal_inference'`` makes validation score causal inference
  (each token routed by the auxiliary routers alone)."""
  c = moma_config(variant, size)
  if c.model_kwargs.get('ffn', 'dense') != 'moe' and not c.model_kwargs.get('mod_fraction'):
    raise ValueError(f'aux_router_config: variant {variant!r} has no router to learn')
  c.recipe = 'aux_router'
  c.model_kwargs.routing_mode = 'causal_inference'
  c.num_epochs = 1
  c.early_stop_patience = 1
  return c


def dataset_options_config(name: str) -> ml_collections.ConfigDict:
  """Every option of dataset ``name`` at its default (a typed placeholder where that is None, so
  that the command line can set it)."""
  c = ml_collections.ConfigDict()
  for option, spec in dataset_options(name).items():
    c[option] = config_dict.placeholder(spec.type) if spec.default is None else spec.default
  return c


def all_dataset_options() -> ml_collections.ConfigDict:
  """One :func:`dataset_options_config` group per dataset of :data:`DATASETS`."""
  return ml_collections.ConfigDict({name: dataset_options_config(name) for name in DATASETS})


def _plain(d: Any) -> dict:
  if d is None:
    return {}
  if isinstance(d, ml_collections.ConfigDict):
    return d.to_dict()
  return dict(d)


def chosen_dataset_options(config: Mapping[str, Any]) -> dict[str, Any]:
  """The options ``config.dataset`` is loaded with: its defaults updated by the config's.

  ``config`` is a ConfigDict or the dict of a run's ``config.json``; ``dataset_options`` is one
  group per dataset or flat (module docstring). Raises ConfigError for an unknown dataset or an
  option the dataset does not take.
  """
  name = config['dataset']
  defaults = {k: spec.default for k, spec in dataset_options(name).items()}
  given = _plain(config.get('dataset_options'))
  if any(k in DATASETS for k in given):
    stray = sorted(k for k in given if k not in DATASETS)
    if stray:
      raise ConfigError(f'config.dataset_options holds one group per dataset {sorted(DATASETS)}, '
                        f'but also {stray}; set them as config.dataset_options.{name}.<option>')
    check_options(name, _plain(given.get(name)), f'config.dataset_options.{name}')
    return {**defaults, **_plain(given.get(name))}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ConfigError(f'config.dataset_options: dataset {name!r} does not take {unknown}; its '
                      f'options are {list(defaults)}. Options set for another dataset (a flat '
                      f'dataset_options) cannot be switched: give each dataset its own group, '
                      f'config.dataset_options.{name}.<option> (jaxrec.train.config)')
  return {**defaults, **given}
