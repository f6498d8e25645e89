"""Where a running job is: files done of listed, media hours, errors, US$ so far and an ETA.

On a terminal it is one display of two lines, redrawn in place once a second; whatever else the
process prints (notes, ``--verbose`` per-file lines, a library's warning) appears above it, never
through it. Elsewhere (CI, ``ray job logs``, a file) it is a plain line every ``every_s`` seconds and
one at the end, which a log keeps readable. The ETA is the measured rate: elapsed time x the share of
the bytes still to do / the share done (bytes, not files: one long video outweighs many small PDFs).
"""
from __future__ import annotations

import os
import select
import shutil
import sys
import threading
import time
from typing import Callable, Optional, TextIO

# How often the terminal display is redrawn when nothing else happens (elapsed time and ETA move on).
REDRAW_S = 1.0

_RESET, _BOLD, _DIM, _RED, _GREEN, _CYAN = "\x1b[0m", "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[36m"


def clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def dollars(usd: float) -> str:
    """Cents where they matter, more digits for the fractions of a cent a small job costs."""
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


class JobProgress:
    """The progress of one job; a context manager (the display is on inside it).

    ``listed``: files under CORPUS; ``skipped``: those unchanged since committed (done before the job
    starts); ``todo_bytes``: the bytes of the others. It writes to stderr; ``live``: redraw in place
    (default: stderr is a terminal). ``verbose``: one line per committed file as well.
    """

    def __init__(self, listed: int, skipped: int, todo_bytes: int, live: Optional[bool] = None, verbose: bool = False,
                 every_s: float = 30.0, now: Callable[[], float] = time.monotonic):
        self.stream: TextIO = sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.color = self.live and not os.environ.get("NO_COLOR")
        self.verbose, self.every_s, self.now = verbose, every_s, now
        self.listed, self.done, self.todo_bytes, self.done_bytes = listed, skipped, todo_bytes, 0
        self.errors, self.media_s, self.pages, self.cost_usd = 0, 0.0, 0, 0.0
        self.phase = "processing"
        self.t0 = now()
        self._lines = 0  # lines of the display now on the screen
        self._last_line = self.t0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._above: tuple[_Above, ...] = ()
        self._pumper: Optional[threading.Thread] = None
        self._pumped = threading.Event()
        self._terminal_fd = -1
        self._saved: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)  # what __enter__ replaced

    # ------------------------------------------------------------------ what the job reports

    def file(self, status: str, kind: str, uri: str, size: int, media_s: float = 0.0, pages: int = 0,
             cost_usd: float = 0.0, note: str = "") -> None:
        """One file committed (or shared with a committed copy)."""
        with self._lock:
            self.done += 1
            self.done_bytes += size
            self.errors += status == "error"
            self.media_s += media_s
            self.pages += pages
            self.cost_usd += cost_usd
            self.phase = "processing"
            if self.verbose:
                self.say(f"[{self.done}/{self.listed}] {status:7s} {kind:5s} {uri}" + (f"  ({note})" if note else ""))
            elif self.live:
                self._draw()

    def say(self, text: str) -> None:
        """A line that always shows (above the display on a terminal)."""
        with self._lock:
            self._write_above(text + "\n")

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            if self.live:
                self._draw()

    # ------------------------------------------------------------------ figures

    def eta_s(self) -> Optional[float]:
        """Seconds left at the rate measured so far; None before anything is done."""
        share = self.done_bytes / self.todo_bytes if self.todo_bytes else None
        if share is None or share == 0:
            return None
        return (self.now() - self.t0) * (1 - min(share, 1.0)) / share

    def line(self) -> str:
        """The plain progress line (logs, and the last word on a terminal)."""
        eta = self.eta_s()
        pct = f" ({100 * self.done / self.listed:.0f}%)" if self.listed else ""
        parts = [f"{self.done}/{self.listed} files{pct}", f"{self.errors} error{'s' * (self.errors != 1)}",
                 f"{self.media_s / 3600:.3f} h media", f"{self.pages} pages", f"{dollars(self.cost_usd)} so far",
                 f"{clock(self.now() - self.t0)} elapsed",
                 "ETA " + (clock(eta) if eta is not None else "unknown until a file is done")]
        return "corpusflow: " + ", ".join(parts)

    def _display(self, width: int) -> list[str]:
        eta = self.eta_s()
        share = self.done / self.listed if self.listed else 0.0
        bar_w = max(10, min(40, width - 60))
        full = int(share * bar_w)
        c = (lambda code, text: f"{code}{text}{_RESET}") if self.color else (lambda code, text: text)  # noqa: E731
        errors = f"{self.errors} error{'s' * (self.errors != 1)}"
        err = c(_RED + _BOLD, errors) if self.errors else errors
        first = [(" ", ""), (c(_GREEN, "█" * full) + c(_DIM, "░" * (bar_w - full)), "x" * bar_w),
                 (f" {self.done}/{self.listed} files {100 * share:3.0f}%", None), (" · ", None),
                 (err, errors), (" · ", None),
                 (c(_CYAN + _BOLD, "ETA " + (clock(eta) if eta is not None else "--:--")), "ETA --:--")]
        second = [(f" {self.phase}: ", None), (f"{self.media_s / 3600:.3f} h media · {self.pages} pages · ", None),
                  (c(_BOLD, dollars(self.cost_usd)), dollars(self.cost_usd)),
                  (f" so far · {clock(self.now() - self.t0)} elapsed", None)]
        return [_fit(first, width - 1), _fit(second, width - 1)]

    # ------------------------------------------------------------------ drawing

    def _clear(self) -> str:
        if not self._lines:
            return ""
        return "\r\x1b[2K" + "\x1b[1A\x1b[2K" * (self._lines - 1)

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        lines = self._display(width)
        self.stream.write(self._clear() + "\n".join(lines))
        self.stream.flush()
        self._lines = len(lines)

    def _write_above(self, text: str, target: Optional[TextIO] = None) -> None:
        target = target or self.stream
        if self.live and self._lines:
            self.stream.write(self._clear())
            self.stream.flush()
            self._lines = 0
            target.write(text)
            target.flush()
            self._draw()
        else:
            target.write(text)
            target.flush()

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW_S if self.live else min(self.every_s, REDRAW_S)):
            with self._lock:
                if self.live:
                    self._draw()
                elif self.now() - self._last_line >= self.every_s:
                    self._last_line = self.now()
                    self._write_above(self.line() + "\n")

    def _pump(self, pipe: int) -> None:
        """Lines written to file descriptor 2 (Ray's C++ logs, Python's sys.stderr), above the display."""
        pending = b""
        while True:
            if not select.select([pipe], [], [], 0.2)[0]:
                if self._pumped.is_set():  # fd 2 restored and nothing left to read
                    break
                continue
            data = os.read(pipe, 65536)
            if not data:
                break
            pending += data
            if b"\n" in pending:
                lines, pending = pending.rsplit(b"\n", 1)
                with self._lock:
                    self._write_above(lines.decode(errors="replace") + "\n")
        if pending:
            with self._lock:
                self._write_above(pending.decode(errors="replace") + "\n")
        os.close(pipe)

    def __enter__(self) -> "JobProgress":
        self._saved = (sys.stdout, sys.stderr)
        if self.live:
            # Everything else this process prints goes above the display: nothing draws through it.
            # Native code (Ray's core worker) writes to file descriptor 2 itself, past sys.stderr, so
            # fd 2 becomes a pipe read here while the display draws on a copy of the terminal's fd.
            sys.stderr.flush()
            self._terminal_fd = os.dup(2)
            self.stream = open(os.dup(self._terminal_fd), "w", encoding="utf-8", errors="replace", closefd=True)
            pipe, end = os.pipe()
            os.dup2(end, 2)
            os.close(end)
            self._pumper = threading.Thread(target=self._pump, args=(pipe,), name="corpusflow-stderr", daemon=True)
            self._pumper.start()
            self._above = (_Above(self, sys.stdout),)
            sys.stdout = self._above[0]
            self.stream.write("\x1b[?25l")  # no blinking cursor on the bar
            self._draw()
        self._ticker = threading.Thread(target=self._tick, name="corpusflow-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if not self.live:
            self._write_above(self.line() + "\n")
            return
        sys.stderr.flush()
        os.dup2(self._terminal_fd, 2)  # the pipe's last writer closed: the pump reads what is left
        os.close(self._terminal_fd)
        self._pumped.set()
        if self._pumper is not None:
            self._pumper.join()
        with self._lock:
            self.phase = "finished" if exc[0] is None else "stopped"
            self._draw()
            self.stream.write("\n\x1b[?25h")
            self.stream.close()
            self.stream = self._saved[1]
            self._lines = 0
            sys.stdout = self._saved[0]
            for above in self._above:  # a last line without its newline
                if above._pending:
                    above.target.write(above._pending)


class _Above:
    """A text stream whose complete lines are written above the live display."""

    def __init__(self, progress: JobProgress, target: TextIO):
        self.progress, self.target, self._pending = progress, target, ""

    def write(self, text: str) -> int:
        with self.progress._lock:
            self._pending += text
            if "\n" in self._pending:
                done, self._pending = self._pending.rsplit("\n", 1)
                self.progress._write_above(done + "\n", self.target)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    def __getattr__(self, name: str):
        return getattr(self.target, name)


def _fit(parts: list[tuple[str, Optional[str]]], width: int) -> str:
    """Segments (shown text, its visible text when it holds colour codes) cut to ``width`` visible characters."""
    out, used = [], 0
    for shown, visible in parts:
        n = len(visible if visible is not None else shown)
        if used + n > width:
            if visible is None:  # plain text may be cut; coloured segments are left out whole
                out.append(shown[:max(0, width - used)])
            break
        out.append(shown)
        used += n
    return "".join(out)
