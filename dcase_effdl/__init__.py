"""dcase_effdl: efficient deep learning for DCASE-style acoustic scene classification."""

__version__ = "0.1.0"
