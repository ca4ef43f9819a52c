"""Running an experiment: its construction, the jitted steps and their state, the training loop,
evaluation, resume and checkpoints, signals, logs, plots and timing."""
