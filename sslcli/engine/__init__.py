"""The training engine, split by concern: the loop (trainer), optimisers and schedule (optim),
the data order (order), checkpoints, and what a run writes besides them (records)."""

from . import ranks
from .optim import LARS, build_optimizer, lr_factor, scaled_lr
from .order import epoch_order, iterate_batches
from .trainer import Interrupted, Trainer, TrainingError

__all__ = ["LARS", "ranks", "Interrupted", "Trainer", "TrainingError", "build_optimizer", "epoch_order", "iterate_batches",
           "lr_factor", "scaled_lr"]
