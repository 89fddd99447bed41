"""Evaluations. `bpb`: bits per byte on held-out text, the tokenizer-independent language-model score."""
