"""DLRM on synthetic data shaped like Criteo 1TB, tables sharded beyond one device's memory.

    python scripts/train.py --config configs/dlrm_criteo_synth.py --workdir runs/criteo_synth \
        --cpu_devices=8

The data (jaxrec/data/synthetic.py): 13 dense features and 26 categorical fields whose vocabulary
sizes fall as a power law, ``round(9.96M / i**2)`` for field ``i = 1..26`` (9.96M down to 14.7k,
16.0M rows in all; Criteo 1TB's largest tables have 10-40M rows), Zipf ids, a planted teacher. Embedding dim 64, so the
tables hold 4.1 GB (float32). DLRM as the MLPerf reference: bottom MLP 512-256-64, dot
interaction, top MLP 1024-1024-512-256-1.

Tables: the 6 tables of at least ``table_wise_below_bytes`` (64 MiB) row-wise over the 8 devices,
the 20 smaller ones whole on the least loaded device (a mixed plan), trained by the fused row-wise
Adagrad (fbgemm's ``EXACT_ROWWISE_ADAGRAD``, the DLRM standard) inside the step, under a cap of
768 MiB per device that the 4.1 GB collection exceeds (``--config.embedding.plan=data_parallel``
is refused with an error naming the device, its bytes and its tables). See docs/embeddings.md.
"""

import ml_collections

from jaxrec.train.config import base_config

def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.dataset = 'synthetic'
  c.dataset_options.synthetic.update(dict(
      num_train=2_000_000, num_valid=100_000, num_test=100_000, seed=0,
      num_sparse=26, num_dense=13, max_vocab=9_960_000, min_vocab=4, vocab_exponent=2.0,
      teacher_dim=4))
  c.model = 'dlrm'
  c.embedding_dim = 64
  c.model_kwargs = ml_collections.ConfigDict(dict(
      bottom_mlp_units=(512, 256), top_mlp_units=(1024, 1024, 512, 256), interaction='dot',
      activation='relu', batch_norm=False))
  c.batch_size = 8192
  c.eval_batch_size = 16384
  c.learning_rate = 1e-3  # dense part (Adam)
  c.num_epochs = 1
  c.embedding.plan = 'row_wise'
  c.embedding.table_wise_below_bytes = 64 << 20
  c.embedding.optimizer = 'rowwise_adagrad'
  c.embedding.learning_rate = 0.05
  c.embedding.memory_cap_bytes = 768 << 20
  c.embedding.hosts = 1
  return c
