"""glassgpt: train your own ChatGPT-style model on a laptop CPU, and see through every tensor of it."""

__version__ = "0.1.0"
