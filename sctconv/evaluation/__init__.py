"""Scoring sCTs as the SynthRAD2025 challenge does: image metrics, Dice and HD95, `sctconv evaluate`."""
