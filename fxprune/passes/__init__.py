"""FX rewriting passes (torch.fx PassBase convention)."""

from .prune import PruneChannels, check_shapes

__all__ = ["PruneChannels", "check_shapes"]
