"""The algorithm, pure JAX and NumPy with no I/O: combination assignment, the cost table, the
training methods, the prior for imbalanced data, metrics and representation probes."""
