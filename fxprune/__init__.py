"""fxprune: exact structured pruning of PyTorch models as a torch.fx compiler pass."""

from . import deploy, regularize
from .analyze import ChannelGraph
from .api import analyze, compress, trace
from .deploy import apply_plan, load, save
from .errors import (
    FxPruneError,
    OptionError,
    RewriteError,
    SelectionError,
    TraceError,
    VerificationError,
)
from .importance import Importance, register
from .options import CompressOptions
from .passes import PruneChannels
from .pipeline.regions import regions_report
from .plan import Plan
from .report import Report, result_of
from .verify import VerifyResult, verify

__all__ = [
    "ChannelGraph", "CompressOptions", "FxPruneError", "Importance", "OptionError", "Plan",
    "PruneChannels", "Report", "RewriteError", "SelectionError", "TraceError",
    "VerificationError", "VerifyResult", "analyze", "apply_plan", "compress", "deploy", "load",
    "regions_report", "register", "regularize", "result_of", "save", "trace", "verify",
]
__version__ = "0.1.0"
