"""Importance plugins: one score per unit; higher means keep."""

from .activation import ActivationImportance
from .base import Calibration, Importance, available, get_importance, register
from .bn_scale import BNScale
from .cfdp import CFDP
from .hrank import HRank
from .llm import FLAP, WandaSP
from .magnitude import GroupMagnitude
from .qsfm import QSFM
from .random import RandomImportance
from .taylor import Taylor

__all__ = ["BNScale", "CFDP", "FLAP", "ActivationImportance", "Calibration", "GroupMagnitude",
           "HRank", "Importance", "QSFM", "RandomImportance", "Taylor", "WandaSP", "available",
           "get_importance", "register"]
