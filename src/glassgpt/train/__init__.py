"""Training: optimisers and schedules (`optim`), checkpoints (`checkpoint`), the loop (`loop`)."""
