"""t2diff: T2Diff (WWW '25) and its baselines as a trainable, evaluable, servable matching stage."""

__version__ = "0.1.0"
