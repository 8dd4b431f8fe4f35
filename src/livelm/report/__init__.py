"""What a replay leaves behind: `metrics.json`, `docs.jsonl`, `curve.png`, `report.html`,
`surprises.jsonl` and `emerging_terms.json`."""

from livelm.report.curve import plot_curves, smooth
from livelm.report.docs import DocRecord
from livelm.report.html import write_html
from livelm.report.metrics import StrategyResult, build_metrics, write_metrics
from livelm.report.writer import ReportInput, write_report, write_text

__all__ = [
    "DocRecord",
    "ReportInput",
    "StrategyResult",
    "build_metrics",
    "plot_curves",
    "smooth",
    "write_html",
    "write_metrics",
    "write_report",
    "write_text",
]
