"""Running a model over a volume: sliding-window prediction through PyTorch or ONNX Runtime."""
