"""Reports over finished run folders (``task=report``): Markdown and a self-contained HTML page with tables and
plots, rebuilt from the files each run wrote (metrics.jsonl, history.jsonl, summary.json, correlate.json, ...),
so that rerunning the report never recomputes anything.

collect.py reads run and sweep folders, plots.py draws PNGs, render.py writes Markdown and HTML, build.py puts
the sections together.
"""

from kdnas.report.build import build_report

__all__ = ["build_report"]
