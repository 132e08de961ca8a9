"""Results of a run: metrics files, saved model, curves and terminal progress."""

from fedloom.tracking.console import RoundProgress, format_bytes, render_summary_table
from fedloom.tracking.plots import plot_curves
from fedloom.tracking.results import RunRecorder, read_metrics, to_json_safe

__all__ = [
    "RoundProgress",
    "RunRecorder",
    "format_bytes",
    "plot_curves",
    "read_metrics",
    "render_summary_table",
    "to_json_safe",
]
