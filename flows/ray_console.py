"""Which of Ray's own messages reach the console of a corpusflow command.

The job shows its own progress (flows/progress.py); Ray Data's progress bars would draw through it,
and Ray's INFO lines (cluster started, execution plan, dataset finished) say nothing a user acts on.
So, unless ``--verbose``: Ray Data's bars are off, Ray and Ray Data print WARNING and above to the
console, and Ray Data's own log file in the session folder keeps every level as before. Two notices
about settings corpusflow chose itself are left out (see _CHOSEN); every other warning and every
error still shows.
"""
from __future__ import annotations

import logging

# Notices of settings made on the user's behalf, which the user has no reason to change.
_CHOSEN = (
    "Progress bars disabled.",  # Ray Data: the job shows its own progress instead
    # Ray's default for the local cluster a job starts and stops itself, announced on every start.
    "Token authentication is enabled for this Ray cluster.",
)


class _ChosenSettings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not str(record.msg).startswith(_CHOSEN)


def _consoles(logger: str) -> list[logging.Handler]:
    """The handlers of ``logger`` that print to the console (a file handler is a StreamHandler too)."""
    return [h for h in logging.getLogger(logger).handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _without_chosen(handler: logging.Handler) -> None:
    if not any(isinstance(f, _ChosenSettings) for f in handler.filters):
        handler.addFilter(_ChosenSettings())


def console_level(verbose: bool) -> int:
    """The level of Ray's driver logger (``ray.init(logging_level=...)``)."""
    return logging.INFO if verbose else logging.WARNING


def quiet_ray() -> None:
    """Ray core's console (the ``ray`` logger's handler, which Ray sets up when imported): without _CHOSEN."""
    import ray  # noqa: F401 - configures the ``ray`` logger

    for handler in _consoles("ray"):
        _without_chosen(handler)


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data on this driver: no progress bars, and its console handler at WARNING unless ``verbose``.

    Ray Data configures the ``ray.data`` logger when imported, with a file handler (the session's
    ``logs/ray-data/ray-data.log``, every level) and a console handler; only the console's level changes.
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in _consoles("ray.data"):
        handler.setLevel(console_level(verbose))
        _without_chosen(handler)
