"""Extract a PDF's text per page, its image count per page and its document metadata with PyMuPDF.

The file is read through corpusflow.contracts.storage (local or S3) into memory once: PyMuPDF needs random
access to the cross-reference table, and PDFs, unlike videos, fit in memory.

A page that shows an image but has no text layer (a scan) is read by OCR: PyMuPDF renders it and runs
Tesseract on it (``pdf.ocr``, ``pdf.ocr_languages``, ``pdf.ocr_dpi``), and the page is marked with the
languages it was read in. Tesseract's language data come from Debian's ``tesseract-ocr-<lang>``
packages; where they are missing, a PDF that needs OCR becomes a retryable error row that says which package
to install (or to set ``pdf.ocr: false``), while PDFs with a text layer are unaffected.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pymupdf

from pathlib import Path

from corpusflow.contracts import storage
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import MachineProblem, Row, Stage, StageContract, StageFailure

_EOF_MARKER = b"%%EOF"
_TAIL = 2048  # writers may append a little after %%EOF (whitespace, a newline, a signature)


def _date(raw: str) -> str:
    """'D:20260101120000Z' → '2026-01-01T12:00:00Z' (the raw string back when it is not in that form)."""
    s = raw[2:] if raw.startswith("D:") else raw
    if len(s) >= 14 and s[:14].isdigit():
        tz = s[14:].replace("'", "")
        tz = "Z" if tz in ("", "Z") else (tz[:3] + ":" + tz[3:5] if len(tz) >= 5 else tz)
        return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:{s[12:14]}{tz}"
    return raw


def open_pdf(data: bytes) -> pymupdf.Document:
    """Open PDF bytes, or fail with a sentence: password-protected, truncated or corrupt."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError) as e:
        raise StageFailure(f"PDF is corrupt and could not be opened: {e}") from e
    if doc.needs_pass:
        doc.close()
        raise StageFailure("PDF is password-protected")
    if doc.page_count == 0:
        doc.close()
        raise StageFailure("PDF is corrupt: no page could be read")
    if _EOF_MARKER not in data[-_TAIL:]:
        doc.close()
        raise StageFailure("PDF is truncated: the file ends before its end-of-file marker")
    return doc


def tesseract_problem(languages: list[str]) -> str | None:
    """Why Tesseract cannot read ``languages`` here (a sentence), or None when it can."""
    try:
        tessdata = pymupdf.get_tessdata()
    except RuntimeError:  # PyMuPDF found no tessdata folder
        tessdata = None
    if not tessdata or not Path(tessdata).is_dir():
        return ("page has no text layer and needs OCR, but Tesseract is not installed (apt-get install "
                "tesseract-ocr " + " ".join(f"tesseract-ocr-{c.replace('_', '-')}" for c in languages) +
                ", or set pdf.ocr: false to keep such pages empty)")
    missing = [c for c in languages if not (Path(tessdata) / f"{c}.traineddata").is_file()]
    if missing:
        return (f"page has no text layer and needs OCR in {'+'.join(languages)}, but Tesseract has no data for "
                f"{', '.join(missing)} in {tessdata} (apt-get install "
                + " ".join(f"tesseract-ocr-{c.replace('_', '-')}" for c in missing) + ")")
    return None


class ExtractPdf(Stage):
    """PDF rows → page count, text per page (OCR for scans), image count per page, document metadata as JSON.

    ``page_ocr_language`` is, per page, the Tesseract languages its text was read in ('' for text-layer pages).
    """

    contract = StageContract(name="pdf", reads=("uri", "bytes"), kinds=("pdf",),
                             writes={"pages": "int64", "page_text": "list[str]", "page_images": "tensor[int32]",
                                     "page_ocr_language": "list[str]", "pdf_meta_json": "str"})

    def __init__(self, config: StageConfig) -> None:
        super().__init__(config)
        pdf = config.pdf
        self._ocr_language = "+".join(pdf.ocr_languages) if pdf.ocr else ""
        # Checked once per worker; reported only on the rows that need OCR.
        self._ocr_problem = tesseract_problem(pdf.ocr_languages) if pdf.ocr else None

    def _page_text(self, page: pymupdf.Page, images: int) -> tuple[str, str]:
        """The page's text and the OCR languages it was read in ('' when it came from the text layer)."""
        text = page.get_text("text", sort=True)
        if text.strip() or not images or not self._ocr_language:
            return text, ""
        if self._ocr_problem:
            raise MachineProblem(f"page {page.number + 1}: {self._ocr_problem}; once installed, "
                                 "`corpusflow run --retry-errors` reads it")
        ocr = page.get_textpage_ocr(language=self._ocr_language, dpi=self.config.pdf.ocr_dpi, full=True)
        return page.get_text("text", textpage=ocr, sort=True), self._ocr_language

    def process_row(self, row: Row) -> dict[str, Any]:
        limits = self.config.limits
        if int(row["bytes"]) > limits.pdf_max_mb * 2**20:
            raise StageFailure(f"PDF is {int(row['bytes']) / 2**20:.0f} MB, over the limit of {limits.pdf_max_mb:g} MB "
                               "(limits.pdf_max_mb)")
        with storage.open_input(str(row["uri"])) as f:
            data = f.read()
        with open_pdf(data) as doc:
            if doc.page_count > limits.pdf_max_pages:
                raise StageFailure(f"PDF has {doc.page_count} pages, over the limit of {limits.pdf_max_pages} "
                                   "(limits.pdf_max_pages)")
            texts, images, ocr = [], [], []
            for page in doc:
                images.append(len(page.get_images(full=True)))
                text, language = self._page_text(page, images[-1])
                texts.append(text)
                ocr.append(language)
            info = doc.metadata or {}
            meta = {
                "title": info.get("title") or None, "author": info.get("author") or None,
                "subject": info.get("subject") or None, "keywords": info.get("keywords") or None,
                "creator": info.get("creator") or None, "producer": info.get("producer") or None,
                "creation_date": _date(info["creationDate"]) if info.get("creationDate") else None,
                "modification_date": _date(info["modDate"]) if info.get("modDate") else None,
                "format": info.get("format") or None, "page_count": doc.page_count,
                "encrypted": bool(info.get("encryption")), "encryption": info.get("encryption") or None,
                "repaired": bool(doc.is_repaired),
            }
        return {"pages": len(texts), "page_text": texts, "page_images": np.asarray(images, dtype=np.int32),
                "page_ocr_language": ocr,
                "pdf_meta_json": json.dumps({k: v for k, v in meta.items() if v is not None}, ensure_ascii=False)}
