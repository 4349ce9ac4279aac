"""sctconv: synthetic CT from MRI or CBCT for radiotherapy planning.

A research tool, not a cleared medical device.
"""

__version__ = "0.1.0"
