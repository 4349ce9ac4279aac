"""Paired data without patients: MR and CBCT simulated from a CT, and a procedural CT phantom."""
