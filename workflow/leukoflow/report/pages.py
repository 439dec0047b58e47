"""How report items are written: tables as small self-contained HTML pages, figures as PNG.

Figures are drawn on `matplotlib.figure.Figure` (the Agg canvas, no display, no pyplot state);
the Snakemake report shows both inline. Nothing here reads the network.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLE_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #222; }
h2 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def html_tables(sections: Mapping[str, pd.DataFrame], title: str) -> str:
    """One self-contained HTML page: a heading and a table per section (numbers right-aligned)."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{TABLE_STYLE}</style></head><body>", f"<h1 style=\"font-size:17px\">{html.escape(title)}</h1>"]
    for heading, frame in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_html_table(frame) if len(frame) else "<p><em>none</em></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for value in values:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            text = _format(value)
            cells.append(f"<td class=\"num\">{text}</td>" if numeric else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.6g}"
    return str(value)


def write_html(sections: Mapping[str, pd.DataFrame], path: str | Path, title: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_tables(sections, title), encoding="utf-8")


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    """PNG without the software stamp, so two runs write the same bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, metadata={"Software": None})
