"""Training: config schema and loading, datasets, noise and loss, optimizers, the loop, saving, resume."""
