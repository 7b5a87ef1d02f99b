"""What compress did: the Report (numbers, frozen reasons, verify, timings), its per-layer
table and picture, the counters budgets use, and the record kept on the pruned module."""

from ..records import remember, result_of
from .counting import count_cost, count_flops, count_params
from .summary import CompressResult, Models, Report

__all__ = ["CompressResult", "Models", "Report", "count_cost", "count_flops", "count_params",
           "remember", "result_of"]
