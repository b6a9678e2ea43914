"""corpmerge: consolidate rewarded weight-space perturbations into one model (CoRP)."""

__version__ = "0.1.0"
