"""Between the patient's image and the network's input: body mask, body region, the model grid and
intensity normalization (numpy, SimpleITK, scipy; never PyTorch)."""
