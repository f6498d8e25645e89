"""The stage base class as a stage author relies on it: routing by kind, errors as rows, transient or not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corpusflow.contracts.stage import Row, Stage, StageContract, StageFailure, WorkerBroken


class Shout(Stage):
    """A stage for audio rows: its text upper-cased, or the failure its text names."""

    contract = StageContract(name="shout", reads=("text",), writes={"loud": "str"}, kinds=("audio",))

    def process_row(self, row: Row) -> dict:
        text = str(row["text"])
        if text == "throttled":
            raise OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.")
        if text == "throttled-read":
            try:
                raise ConnectionResetError("connection reset by peer")
            except ConnectionResetError as e:
                raise StageFailure("file could not be read: connection reset by peer") from e
        if text == "corrupt":
            raise StageFailure("file is corrupt")
        if text == "gpu-broken":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"loud": text.upper()}


def _batch(texts: list[str], kinds: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(texts)
    return {"text": np.asarray(texts, dtype=object), "kind": np.asarray(kinds or ["audio"] * n, dtype=object),
            "error_stage": np.asarray([""] * n, dtype=object), "error": np.asarray([""] * n, dtype=object)}


def test_rows_of_other_kinds_pass_through_untouched():
    out = Shout(None)(_batch(["hi", "page"], ["audio", "pdf"]))
    assert list(out["loud"]) == ["HI", ""]
    assert not np.isnan(out["shout_wall_s"][0]) and np.isnan(out["shout_wall_s"][1])  # no metrics row for pdf


def test_failures_are_rows_and_transient_ones_say_so():
    out = Shout(None)(_batch(["ok", "throttled", "throttled-read", "corrupt"]))
    assert list(out["error_stage"]) == ["", "shout", "shout", "shout"]
    assert out["error"][3] == "file is corrupt"
    assert list(out["error_retryable"]) == [False, True, True, False]


def test_a_broken_gpu_context_takes_the_worker_down_instead_of_stamping_errors():
    with pytest.raises(WorkerBroken, match="illegal memory access"):
        Shout(None)(_batch(["ok", "gpu-broken"]))


class Save(Stage):
    """A stage that writes each row somewhere: the disk may be full, the model may be missing."""

    contract = StageContract(name="save", reads=("text",), writes={"loud": "str"}, kinds=("audio",))

    def __init__(self, model_folder: str):
        super().__init__(None)
        self.model = self.load_model(lambda: Path(model_folder, "model.bin").read_bytes(), f"the model in {model_folder}")

    def process_row(self, row: Row) -> dict:
        if row["text"] == "disk-full":
            import errno

            raise OSError(errno.ENOSPC, "No space left on device", "/out/part-0.parquet")
        return {"loud": str(row["text"]).upper()}


def test_a_full_disk_or_a_missing_model_is_the_machines_fault_retryable_with_what_to_do(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights")
    out = Save(str(tmp_path))(_batch(["ok", "disk-full"]))
    assert list(out["error_retryable"]) == [False, True]
    assert out["error"][1].startswith("the disk is full (No space left on device: /out/part-0.parquet); free space")

    missing = Save(str(tmp_path / "nowhere"))(_batch(["ok", "also"]))  # the stage still starts
    assert list(missing["error_retryable"]) == [True, True]
    assert "is not on this machine" in missing["error"][0] and "--retry-errors" in missing["error"][0]
