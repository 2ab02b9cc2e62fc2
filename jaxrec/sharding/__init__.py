"""Meshes, the logical-axis rules table, FSDP strategies and sharded embedding collections.

Sharding decides where arrays live; it imports neither ``jaxrec.train`` nor ``jaxrec.data``
(the trainer plugs it in: ``jaxrec.train.sharded_trainer``; tests/test_imports.py keeps it so).

* ``mesh``: ``make_mesh`` / ``make_hierarchical_mesh`` / ``mesh_from_config`` (named axes data,
  fsdp, expert, tensor; -1 = the rest; (host, local) form; host-major global device order).
* ``rules``: ``LOGICAL_AXIS_RULES``, the one table mapping the models' logical axis names to mesh
  axes; ``embedding_mask`` (the parameters with a ``'vocab'`` axis).
* ``hooks``: ``ForwardHooks`` and ``LossAndGrad``, how the sharding code plugs into a train step.
* ``fsdp``: ``Strategy`` (FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD), ``MixedPrecision``,
  ``ShardingConfig``, ``plan_state`` and the GSPMD gather / reduce hooks.
* ``shard_map_fsdp``: FULL_SHARD with explicit all_gather / psum_scatter.
* ``expert_parallel``: MoE experts over the mesh's ``expert`` axis with an explicit all-to-all
  dispatch (shard_map), equal to the one-device expert choice (docs/moma.md).
* ``guardrail``: the unsharded-parameter report and check.
* ``offload``: parameters / optimizer state in host memory.
* ``padding``: zero-padded storage of indivisible dimensions.
* ``distributed``: ``jax.distributed`` initialisation from flags or environment variables.
* ``hlo``: collectives (kind, dtype, bytes) counted from compiled HLO text.
* ``embedding_plan``: embedding sharding plans (table -> type and devices; JSON, printing,
  validation).
* ``embedding_shard``: the seven TorchRec sharding types of an embedding-bag collection with
  shard_map and explicit collectives (docs/embeddings.md).

The trainer that runs them (``ShardedTrainer``) is ``jaxrec.train.sharded_trainer``; process-local
batches for multi-host runs are ``jaxrec.train.host_data``. See docs/fsdp.md and
docs/embeddings.md.
"""
