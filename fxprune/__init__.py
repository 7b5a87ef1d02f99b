"""fxprune: exact structured pruning of PyTorch models as a torch.fx compiler pass."""

from . import deploy, regularize
from .analyze import ChannelGraph
from .api import analyze, compress
from .deploy import apply_plan, load, save
from .errors import (
    AnalysisError,
    FxPruneError,
    RewriteError,
    SelectionError,
    TraceError,
    VerificationError,
)
from .importance import Importance, register
from .passes import PruneChannels
from .report import Report
from .select import Plan
from .trace import trace
from .verify import VerifyResult, verify

__all__ = [
    "AnalysisError", "ChannelGraph", "FxPruneError", "Importance", "Plan", "PruneChannels",
    "Report", "RewriteError", "SelectionError", "TraceError", "VerificationError",
    "VerifyResult", "analyze", "apply_plan", "compress", "deploy", "load", "register",
    "regularize", "save", "trace", "verify",
]
__version__ = "0.1.0"
