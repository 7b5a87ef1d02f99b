"""Training-time sparsity over coupled groups: regularisers whose units are exactly what the
rewrite removes together, for plain PyTorch training loops (and DDP)."""

from .feature_flow import FeatureFlow
from .group_lasso import GroupLasso
from .swd import SelectiveWeightDecay
from .units import UnitNorms

__all__ = ["FeatureFlow", "GroupLasso", "SelectiveWeightDecay", "UnitNorms"]
