"""Online hard clustering (Mahon & Lukasiewicz, AAAI 2024) in JAX/Flax."""

__version__ = '0.1.0'

from ohc_jax.run import timing as _timing  # pylint: disable=g-import-not-at-top  (starts the run clock)
