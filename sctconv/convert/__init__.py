"""The `sctconv convert` application: read, mask, synthesize and write an sCT folder with its report."""
