"""Pure loss functions, one file per method. Inputs are checked with a clear ValueError; nothing here holds state."""

from .barlow_twins import barlow_twins_loss, cross_correlation
from .byol import byol_loss
from .collapse import collapse_floor, embedding_std
from .colorization import weighted_cross_entropy
from .info_nce import info_nce, info_nce_logits
from .nt_xent import nt_xent
from .swav import code_entropy, sinkhorn_knopp, swav_loss
from .vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "code_entropy",
    "collapse_floor",
    "cross_correlation",
    "embedding_std",
    "info_nce",
    "info_nce_logits",
    "nt_xent",
    "sinkhorn_knopp",
    "swav_loss",
    "vicreg_loss",
    "weighted_cross_entropy",
]
