"""ExtractPdf: text, image counts and metadata per document; protected, truncated and corrupt PDFs fail alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corpusflow.actors.pdf import ExtractPdf
from corpusflow.contracts.config import JobConfig
from tests import media


def batch(paths: list[Path | str], errors: list[str] | None = None) -> dict[str, np.ndarray]:
    errors = errors or [""] * len(paths)
    return {"uri": np.asarray([str(p) for p in paths]), "kind": np.asarray(["pdf"] * len(paths)),
            "bytes": np.asarray([Path(p).stat().st_size if Path(p).is_file() else 0 for p in paths], np.int64),
            "error_stage": np.asarray(["earlier" if e else "" for e in errors]), "error": np.asarray(errors)}


@pytest.fixture(scope="module")
def stage() -> ExtractPdf:
    return ExtractPdf(JobConfig(corpus="/tmp/corpus", out="/tmp/out"))


def test_text_images_and_metadata(stage, tmp_path):
    doc = media.make_pdf(tmp_path / "protocol.pdf", pages=3, images=2, text="Dose escalation of CF-101 in adults.")
    out = stage(batch([doc]))
    assert out["error"][0] == "" and out["pages"][0] == 3
    texts = out["page_text"][0]
    assert len(texts) == 3 and all("Dose escalation of CF-101" in t for t in texts) and "Page 2 of 3" in texts[1]
    assert out["page_images"][0].tolist() == [2, 0, 0] and out["page_images"][0].dtype == np.int32
    meta = json.loads(out["pdf_meta_json"][0])
    assert meta["title"] == "corpusflow test document" and meta["author"] == "corpusflow tests"
    assert meta["page_count"] == 3 and meta["encrypted"] is False
    assert meta["creation_date"] == "2026-01-01T12:00:00Z"


def test_bad_pdfs_fail_alone(stage, tmp_path):
    good = media.make_pdf(tmp_path / "good.pdf", pages=2)
    locked = media.make_pdf(tmp_path / "locked.pdf", encrypted=True)
    truncated = media.truncate_copy(good, tmp_path / "truncated.pdf", 0.6)
    corrupt = media.corrupt_copy(good, tmp_path / "corrupt.pdf", keep=16)
    not_pdf = tmp_path / "notes.pdf"
    not_pdf.write_text("plain text")
    out = stage(batch([locked, truncated, corrupt, not_pdf, good]))
    assert list(out["error_stage"]) == ["pdf"] * 4 + [""]
    assert out["error"][0] == "PDF is password-protected"
    assert out["error"][1] == "PDF is truncated: the file ends before its end-of-file marker"
    assert out["error"][2].startswith("PDF is corrupt")
    assert out["error"][3].startswith("PDF is corrupt")
    assert out["pages"].tolist() == [0, 0, 0, 0, 2] and list(out["page_text"][0]) == []


def test_rows_failed_earlier_pass_through(stage, tmp_path):
    doc = media.make_pdf(tmp_path / "d.pdf", pages=1)
    out = stage(batch([doc, doc], errors=["identify said no", ""]))
    assert (out["error_stage"][0], out["error"][0]) == ("earlier", "identify said no")
    assert out["pages"].tolist() == [0, 1]


def test_reads_pdfs_from_s3(stage, tmp_path, s3_server, s3_bucket):
    import boto3

    doc = media.make_pdf(tmp_path / "d.pdf", pages=2)
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(doc), s3_bucket, "docs/d.pdf")
    out = stage(batch([f"s3://{s3_bucket}/docs/d.pdf"]))
    assert out["error"][0] == "" and out["pages"][0] == 2
