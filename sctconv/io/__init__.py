"""Files in, files out: image files by name, reading volumes, writing images, DICOM, all-or-nothing output
folders (numpy, SimpleITK, pydicom; never PyTorch)."""
