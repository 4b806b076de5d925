"""Evaluation: feature extraction, weighted kNN (probe, finetune and neighbour grids come later)."""
