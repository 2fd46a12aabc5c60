"""Reports on runs: the HTML report, plots, workflow pictures, trace printing, export."""

from flowbot.report.html import write_report
from flowbot.report.pictures import draw_workflow

__all__ = ["draw_workflow", "write_report"]
