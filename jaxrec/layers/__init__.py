"""Small pure Flax building blocks: embeddings, the MLP, interaction operators.

Every parameter is created through ``nn.with_logical_partitioning`` and so carries one logical
axis name per dimension; a rules table in ``jaxrec.sharding`` maps these names to mesh axes (the
layers and models never import it). The names in use:

=============  =================================================================================
name           dimension
=============  =================================================================================
``vocab``      rows of an embedding table ``[vocab, embed]`` (embedding.py; also the dim-1
               first-order tables of LR/FM/DeepFM); the trainer's embedding regularizer finds
               tables by this name.
``embed``      embedding width ``d`` (1 for first-order tables).
``mlp_in``     input width of any dense kernel of ``MLP`` (hidden and output layers).
``mlp``        width of an ``MLP`` hidden layer: hidden kernels ``('mlp_in', 'mlp')``, their
               biases and BatchNorm scale/bias ``('mlp',)``.
``mlp_out``    width of an ``MLP`` output layer (usually 1, the logit; ``d`` for DLRM's bottom
               MLP): kernel ``('mlp_in', 'mlp_out')``, bias ``('mlp_out',)``.
``cross_in``   input width ``D`` of a cross kernel ``('cross_in', 'cross')``, of low-rank ``V``
               ``('expert', 'cross_in', 'rank')`` and of the expert gate ``('cross_in', 'expert')``.
``cross``      output width ``D`` of a cross layer: its bias ``('cross',)``, low-rank ``U``
               ``('expert', 'rank_in', 'cross')``.
``expert``     experts of a low-rank mixture cross layer.
``rank``       low-rank space ``r`` (output side): ``V`` and ``C``.
``rank_in``    low-rank space ``r`` (input side): ``C`` ``('expert', 'rank_in', 'rank')`` and ``U``.
=============  =================================================================================

Scalar parameters (the global bias of the first-order term) have no axes: ``()``.
"""

LOGICAL_AXIS_NAMES = ('vocab', 'embed', 'mlp_in', 'mlp', 'mlp_out', 'cross_in', 'cross', 'expert',
                      'rank', 'rank_in')
