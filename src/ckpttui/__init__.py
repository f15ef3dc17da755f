"""ckpttui: see inside, merge, average and export deep-learning checkpoints from the terminal."""

__version__ = "0.1.0"
