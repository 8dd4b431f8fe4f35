"""What a replay leaves behind: `metrics.json`, `curve.png` and `report.html`."""

from livelm.report.curve import plot_curves, smooth
from livelm.report.html import write_html
from livelm.report.metrics import StrategyResult, build_metrics, write_metrics

__all__ = [
    "StrategyResult",
    "build_metrics",
    "plot_curves",
    "smooth",
    "write_html",
    "write_metrics",
]
