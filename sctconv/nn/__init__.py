"""The networks and the model folders that carry them: the U-Net, model cards and weights, CT segmentation
teachers (PyTorch)."""
