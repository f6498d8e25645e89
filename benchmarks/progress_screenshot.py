"""docs/img/progress.png: `corpusflow run` in a tmux pane of fixed size, as a user sees it mid-job.

Runs the job in a detached tmux session (100x12 by default), captures the pane with its colours
(`tmux capture-pane -p -e`) every two seconds, keeps the first capture whose display shows the job
part done (else the last one), renders its ANSI text as HTML and photographs that with headless
chromium, as tests/test_report.py photographs the report.

    python -m benchmarks.progress_screenshot --corpus examples/sample --config job.yaml --png docs/img/progress.png
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# xterm's palette for the 16 basic colours (30-37, 90-97).
_PALETTE = ["#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
            "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"]
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_MID = re.compile(r" (\d+)/(\d+) files ")


def ansi_html(text: str) -> str:
    """The pane's text with its SGR colours (bold, dim, 16 and 256 colours) as HTML spans."""
    out, style = [], {"fg": None, "bold": False, "dim": False}
    pos = 0
    for m in _SGR.finditer(text):
        out.append(_span(text[pos:m.start()], style))
        pos = m.end()
        codes = [int(c) if c else 0 for c in m.group(1).split(";")]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                style = {"fg": None, "bold": False, "dim": False}
            elif c == 1:
                style["bold"] = True
            elif c == 2:
                style["dim"] = True
            elif c == 22:
                style["bold"] = style["dim"] = False
            elif 30 <= c <= 37 or 90 <= c <= 97:
                style["fg"] = _PALETTE[c - 30 if c < 90 else c - 82]
            elif c == 39:
                style["fg"] = None
            elif c == 38 and codes[i + 1:i + 2] == [5]:
                n = codes[i + 2] if i + 2 < len(codes) else 7
                style["fg"] = _PALETTE[n] if n < 16 else "#%02x%02x%02x" % ((n * 37) % 256, (n * 59) % 256, (n * 83) % 256)
                i += 2
            i += 1
    out.append(_span(text[pos:], style))
    return "".join(out)


def _span(text: str, style: dict) -> str:
    if not text:
        return ""
    css = []
    if style["fg"]:
        css.append(f"color:{style['fg']}")
    if style["bold"]:
        css.append("font-weight:bold")
    if style["dim"]:
        css.append("opacity:0.55")
    body = html.escape(text)
    return f'<span style="{";".join(css)}">{body}</span>' if css else body


def render(capture: str, png: Path, cols: int, rows: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium package")
    cell_w, cell_h = 8.4, 18  # DejaVu Sans Mono at 14 px
    width, height = int(cols * cell_w) + 24, rows * cell_h + 24
    page = ("<!doctype html><meta charset=utf-8><style>body{margin:0;background:#1e1e1e}"
            "pre{margin:12px;font:14px/18px 'DejaVu Sans Mono',monospace;color:#d4d4d4}</style>"
            f"<pre>{ansi_html(capture)}</pre>")
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "pane.html"
        page_file.write_text(page)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--disable-component-update", "--no-first-run",
                        f"--user-data-dir={Path(tmp) / 'profile'}", f"--screenshot={png}",
                        f"--window-size={width},{height}", page_file.as_uri()], check=True, capture_output=True,
                       timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="examples/sample")
    ap.add_argument("--out", help="the job's OUT (default: a fresh temporary folder)")
    ap.add_argument("--config", help="job config YAML")
    ap.add_argument("--png", default="docs/img/progress.png")
    ap.add_argument("--cols", type=int, default=100)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="progress-shot-")
    command = [sys.executable, "-m", "corpusflow", "run", a.corpus, "--out", out, *(["--config", a.config] if a.config else [])]
    session = f"corpusflow-shot-{int(time.time())}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(a.cols), "-y", str(a.rows),
                    " ".join(command) + "; sleep 3600"], check=True)
    chosen, deadline = "", time.time() + a.timeout
    try:
        while time.time() < deadline:
            time.sleep(2)
            chosen = subprocess.run(["tmux", "capture-pane", "-p", "-e", "-t", session], capture_output=True,
                                    text=True, check=True).stdout
            plain = _SGR.sub("", chosen)
            done = [(int(d), int(n)) for d, n in _MID.findall(plain)]
            if done and 0 < done[-1][0] < done[-1][1]:
                break
            if "finished in" in plain:  # the job's summary: it ended before a capture caught it mid-way
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    render(chosen, Path(a.png), a.cols, a.rows)
    print(f"{a.png}: {Path(a.png).stat().st_size} bytes\n{_SGR.sub('', chosen)}")


if __name__ == "__main__":
    main()
