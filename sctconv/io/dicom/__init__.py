"""DICOM: reading a source MR, CT or CBCT series; writing the sCT as a CT Image Storage series."""
