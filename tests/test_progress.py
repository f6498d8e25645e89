"""What a running job shows, through the CLI: periodic lines in logs, a display redrawn in place on a terminal."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusflow.flows.cli import main
from tests import media

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^corpusflow: (\d+)/(\d+) files .* ETA (\S+)", re.M)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        media.make_pdf(root / f"leaflet_{i}.pdf", pages=1)
    (root / "notes.txt").write_text("not a medium\n")
    return root


def _config(tmp_path: Path, model_cache: str) -> str:
    f = tmp_path / "job.yaml"
    # Commits of one file, so that the progress moves (and has a rate) before the end of a 4-file job.
    f.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\nresources:\n  commit:\n    batch_size: 1\nindex:\n  enabled: false\n")
    return str(f)


def test_logs_get_periodic_lines_with_done_total_and_eta_and_no_line_per_file(corpus, tmp_path, model_cache, capsys):
    out = tmp_path / "out"
    assert main(["run", str(corpus), "--out", str(out), "--config", _config(tmp_path, model_cache),
                 "--progress-every", "0.5"]) == 0
    printed = capsys.readouterr()
    lines = LINE.findall(printed.err)
    assert len(lines) >= 2, printed.err
    assert all(total == "4" for _, total, _ in lines)
    assert lines[-1][0] == "4" and re.fullmatch(r"\d+:\d\d", lines[-1][2]), lines[-1]
    assert [int(done) for done, _, _ in lines] == sorted(int(done) for done, _, _ in lines)
    assert not re.search(r"^\[\d+/\d+\]", printed.err, re.M), "per-file lines without --verbose"
    # Ray's own INFO lines and the notice of the progress bars we turned off stay out of it.
    assert "streaming_executor" not in printed.err and "Progress bars disabled" not in printed.err
    assert "files: 4 listed" in printed.out and "cost: $" in printed.out


def test_a_terminal_gets_one_display_redrawn_in_place(corpus, tmp_path, model_cache):
    """Under a pseudo-terminal: the display is redrawn over itself; --verbose lines go above it."""
    parent, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "12", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(tmp_path / "out"),
                             "--config", _config(tmp_path, model_cache), "--verbose"],
                            stdin=child, stdout=child, stderr=child, cwd=ROOT, env=env, close_fds=True)
    os.close(child)
    chunks, deadline = [], time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([parent], [], [], 1.0)
        if ready:
            try:
                data = os.read(parent, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(parent)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    redraws = screen.count("\r\x1b[2K\x1b[1A\x1b[2K")  # back over both lines of the display
    assert redraws >= 3, screen[-2000:]
    assert screen.count(" files ") >= redraws, "the display is drawn again each time"
    assert re.search(r"\[\d/4\] ok +pdf ", screen), "--verbose: a line per committed file"
    final = screen.rsplit("\r\x1b[2K\x1b[1A\x1b[2K", 1)[1]  # what stays on the screen
    assert "4/4 files" in final and "finished" in final, final
    display = final.splitlines()[:2]  # the job's summary follows it, in lines of its own length
    assert max(len(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)) for line in display) < 100, display
