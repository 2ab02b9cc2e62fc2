"""jaxrec: faithful, sharded JAX/Flax reimplementations of recommender papers."""
__version__ = "0.1.0"
