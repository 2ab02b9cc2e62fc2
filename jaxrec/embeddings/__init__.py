"""Embedding tables as TorchRec has them: configs, jagged batches, collections, sparse optimizers.

* ``config``: ``EmbeddingBagConfig`` (name, rows, dim, features, pooling, per-sample weights).
* ``jagged``: ``KeyedJagged``, per-feature bags in a static padded layout ``[B, F, L]``.
* ``collection``: unsharded ``EmbeddingBagCollection`` (pooled) / ``EmbeddingCollection``
  (sequences) and the lookup functions they are built from.
* ``sparse_optim``: row-wise Adagrad, Adagrad, SGD and Adam applied to the touched rows only.

The sharded versions live in ``jaxrec.sharding.embedding_plan`` / ``embedding_shard``; the one
trainer uses them through ``jaxrec.train.table_trainer`` (``config.embedding``); see
docs/embeddings.md.
"""

from jaxrec.embeddings.collection import EmbeddingBagCollection, EmbeddingCollection
from jaxrec.embeddings.config import EmbeddingBagConfig, configs_from_schema, validate_configs
from jaxrec.embeddings.jagged import KeyedJagged
