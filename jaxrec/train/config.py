"""The fields every training config has, with the BARS protocol defaults.

Experiment files in configs/ start from :func:`base_config` and override what differs.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Fields every run has (BARS protocol defaults)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = 'synthetic'  # synthetic | frappe | movielens | criteo | avazu | libffm
  c.data_dir = ''  # folder of the dataset's files (unused for synthetic)
  c.dataset_options = ml_collections.ConfigDict()
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
  c.monitor = 'auc'  # auc | logloss | auc-logloss
  c.min_delta = 1e-6
  c.lr_decay_factor = 0.1
  c.min_learning_rate = 1e-6
  c.early_stop_patience = 2
  c.seed = 2021
  # Bookkeeping.
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200  # latest checkpoint; also at every epoch end
  c.max_steps = 0  # 0 = no limit; else stop (resumably) after this many steps
  c.progress = True
  c.tensorboard = True
  # Sharding (jaxrec.sharding, docs/fsdp.md): a mesh over every device of every process and the
  # FSDP strategy. The default is plain data parallelism over all devices.
  c.sharding = ml_collections.ConfigDict()
  c.sharding.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})  # -1: rest
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
