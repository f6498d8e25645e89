"""Scanned PDFs: pages without a text layer are read by Tesseract OCR and marked so in pages/."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpusflow.actors.pdf import ExtractPdf
from corpusflow.contracts.config import JobConfig
from corpusflow.contracts.rows import rows_for_batch
from corpusflow.flows.evaluate.text import cer
from corpusflow.flows.tables import read_table, replace_rows
from tests import media

ENGLISH = ("Batch record 4711. The filling line was cleaned and inspected before use. The temperature stayed "
           "between two and eight degrees for the whole shift.")
GERMAN = "Die Qualitätskontrolle hat die Charge nach der Prüfung der Unterlagen freigegeben."

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="Debian's tesseract-ocr is not installed (.ci/run installs it)")


def _batch(paths: list[Path]) -> dict[str, np.ndarray]:
    n = len(paths)
    return {"uri": np.asarray([str(p) for p in paths]), "kind": np.asarray(["pdf"] * n),
            "bytes": np.asarray([p.stat().st_size for p in paths], np.int64),
            "error_stage": np.asarray([""] * n), "error": np.asarray([""] * n)}


def _config(**pdf) -> JobConfig:
    return JobConfig(corpus="/tmp/corpus", out="/tmp/out", pdf=pdf)


@needs_tesseract
def test_scanned_pages_are_read_by_ocr_and_marked_with_their_languages(tmp_path):
    scan = media.make_scanned_pdf(tmp_path / "scan.pdf", [ENGLISH, GERMAN])
    typed = media.make_pdf(tmp_path / "typed.pdf", pages=1, images=1, text=ENGLISH)
    out = ExtractPdf(_config(ocr_languages=["eng", "deu"]))(_batch([scan, typed]))

    assert list(out["error"]) == ["", ""]
    assert list(out["page_ocr_language"][0]) == ["eng+deu", "eng+deu"]
    assert list(out["page_ocr_language"][1]) == [""], "a page with a text layer is not OCR'd"
    assert cer([ENGLISH, GERMAN], list(out["page_text"][0])) < 0.03, list(out["page_text"][0])


@needs_tesseract
def test_pages_table_says_which_pages_were_ocrd_and_an_older_table_takes_the_column(tmp_path):
    scan = media.make_scanned_pdf(tmp_path / "scan.pdf", [ENGLISH])
    batch = ExtractPdf(_config())(_batch([scan]))
    batch.update(asset_id=np.asarray(["scan-id"]), format=np.asarray(["pdf"]))
    rows = rows_for_batch(batch, "fp", "job", {})["pages"]
    assert rows.column("ocr_language").to_pylist() == ["eng"]

    out = str(tmp_path / "out")  # a pages table written before ocr_language existed
    older = rows.drop_columns(["ocr_language"]).set_column(0, "asset_id", pa.array(["old-id"]))
    replace_rows(out, "pages", older, {"asset_id": ["old-id"]})
    replace_rows(out, "pages", rows, {"asset_id": ["scan-id"]})
    got = {r["asset_id"]: r for r in read_table(out, "pages").to_pylist()}
    assert got["old-id"]["ocr_language"] is None and got["scan-id"]["ocr_language"] == "eng"
    assert "filling line" in got["scan-id"]["text"]


def test_without_tesseract_a_scan_is_an_error_row_that_says_what_to_install(tmp_path, monkeypatch):
    scan = media.make_scanned_pdf(tmp_path / "scan.pdf", [ENGLISH])
    typed = media.make_pdf(tmp_path / "typed.pdf", pages=1)
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path / "no-tessdata"))  # where PyMuPDF looks first
    out = ExtractPdf(_config(ocr_languages=["eng", "fra"]))(_batch([scan, typed]))

    assert list(out["error_stage"]) == ["pdf", ""]
    assert out["error_retryable"][0], "the machine lacks a package: the file is fine, a later run may read it"
    assert "page 1" in out["error"][0] and "apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra" \
        in out["error"][0] and "pdf.ocr: false" in out["error"][0]
    assert out["pages"][1] == 1, "PDFs with a text layer are unaffected"

    kept = ExtractPdf(_config(ocr=False))(_batch([scan]))
    assert kept["error"][0] == "" and list(kept["page_text"][0]) == [""]
    assert list(kept["page_ocr_language"][0]) == [""]


@needs_tesseract
@pytest.mark.slow
def test_a_scan_failed_for_want_of_tesseract_is_read_by_retry_errors_once_it_is_installed(tmp_path, monkeypatch):
    """Through the CLI: the missing package is the machine's fault, so the row is retryable, a plain re-run leaves
    it, and ``--retry-errors`` reads it once Tesseract is there."""
    import ray

    from corpusflow.flows.cli import main

    media.make_scanned_pdf(tmp_path / "corpus" / "scan.pdf", [ENGLISH])
    out = str(tmp_path / "out")
    config = tmp_path / "job.yaml"
    config.write_text(f"models: tiny-random\nmodel_cache: {tmp_path / 'models'}\nindex:\n  enabled: false\n")
    run = ["run", str(tmp_path / "corpus"), "--out", out, "--config", str(config)]

    def scan_row() -> dict:
        return read_table(out, "assets").to_pylist()[0]

    try:
        monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path / "no-tessdata"))  # Tesseract's data is not here
        assert main(run) == 0
        row = scan_row()
        assert (row["status"], row["error_stage"], row["retryable"]) == ("error", "pdf", True)
        assert "apt-get install tesseract-ocr" in row["error"] and "--retry-errors" in row["error"]
        ray.shutdown()  # the next runs start workers that see the machine as it is now

        monkeypatch.delenv("TESSDATA_PREFIX")  # "installed"
        assert main(run) == 0
        assert scan_row()["status"] == "error", "a plain re-run keeps the recorded failure"
        assert main([*run, "--retry-errors"]) == 0
        row = scan_row()
        assert (row["status"], row["error"], row["retryable"]) == ("ok", None, None)
        assert "filling line" in " ".join(r["text"] for r in read_table(out, "pages").to_pylist())
    finally:
        ray.shutdown()
