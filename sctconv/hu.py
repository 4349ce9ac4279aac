"""Hounsfield units that more than one step relies on, each defined once."""

HU_MIN, HU_MAX = -1024.0, 3071.0
"""The CT range of the paper and of the SynthRAD2025 evaluation; ``HU_MIN`` is air, the sCT outside the body."""

CT_BODY_THRESHOLD_HU = -500.0
"""Voxels above this value in a CT or CBCT (in HU) are body candidates."""

BONE_HU = 250.0
"""Bone: above this value in a CT or an sCT (bone Dice, and the bone weight of the L1 loss)."""
