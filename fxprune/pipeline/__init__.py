"""The pipeline: ``run(model, inputs, options)`` takes a model through the stages in
``stages.py`` (capture -> analyze -> score -> select -> rewrite -> verify -> compensate ->
recalibrate -> report) over one :class:`~fxprune.pipeline.state.State`; ``runner.py`` owns
timings, the freeze-and-retry policy and iterative steps; ``build.py`` applies the rule
table."""

from .build import build
from .runner import run

__all__ = ["build", "run"]
