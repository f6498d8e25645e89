"""Where an evaluation's results go: Delta tables under OUT (flows/tables.py) and one self-contained HTML report."""
from __future__ import annotations

import html
import io
import warnings
from typing import Sequence

import pyarrow as pa

from corpusflow.contracts import storage
from corpusflow.flows.tables import replace_table


def svg(fig) -> str:
    """A matplotlib figure as inline SVG (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with warnings.catch_warnings():  # a glyph the font lacks (model text in any script) is drawn as a box
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def html_table(table: pa.Table, digits: int = 3) -> str:
    def cell(v) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(n)}</th>" for n in table.column_names)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row.values()) + "</tr>" for row in table.to_pylist())
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: str, name: str, title: str, sections: Sequence[tuple[str, str]]) -> str:
    """``OUT/<name>.html``: a title and (heading, HTML) sections; returns its location."""
    style = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}")
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    uri = storage.join(out, f"{name}.html")
    storage.write_json("\n".join(parts), uri)
    return uri


def write_tables(out: str, tables: dict[str, pa.Table]) -> None:
    for name, rows in tables.items():
        replace_table(out, name, rows)
