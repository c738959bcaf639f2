"""Partial fine-tuning: the training loop, the multi-worker loop, training data, learning-rate groups, training outputs."""
