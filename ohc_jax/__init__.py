"""Online hard clustering (Mahon & Lukasiewicz, AAAI 2024) in JAX/Flax."""

__version__ = '0.1.0'
