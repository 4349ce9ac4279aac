"""Training: paired cases and prepared datasets, the plan, the training loop and its curves."""
