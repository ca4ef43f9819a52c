"""Config files: each `NAME.py` defines `get_config()`; `--config=NAME` picks one (installed as ohc_jax.configs)."""
