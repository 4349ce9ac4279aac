"""sctconv as a DICOM node: receive MR/CBCT series, convert each complete one, send its sCT on."""
