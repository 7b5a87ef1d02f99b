"""Importance plugins: one score per unit; higher means keep."""

from .base import Importance, available, get_importance, register
from .magnitude import GroupMagnitude
from .random import RandomImportance

__all__ = ["GroupMagnitude", "Importance", "RandomImportance", "available", "get_importance",
           "register"]
