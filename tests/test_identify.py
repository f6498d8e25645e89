"""Identify: asset ids are content hashes, kind and format come from the bytes, bad files become error rows."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from corpusflow.actors import identify
from corpusflow.actors.identify import Identify, sniff
from corpusflow.contracts.config import JobConfig
from tests import media

VIDEO_FORMATS = {"mp4": "mp4", "m4v": "m4v", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi",
                 "flv": "flv", "ts": "mpegts", "wmv": "asf"}
AUDIO_FORMATS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "ogg": "ogg", "m4a": "m4a", "mka": "matroska",
                 "weba": "webm"}


def batch(paths: list[Path], errors: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(paths)
    errors = errors or [""] * n
    return {"uri": np.asarray([str(p) for p in paths]),
            "bytes": np.asarray([p.stat().st_size for p in paths], dtype=np.int64),
            "error_stage": np.asarray(["earlier" if e else "" for e in errors]), "error": np.asarray(errors)}


@pytest.fixture(scope="module")
def stage() -> Identify:
    return Identify(JobConfig(corpus="/tmp/corpus", out="/tmp/out"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identify")
    for c in VIDEO_FORMATS:
        media.make_video(root / f"clip.{c}", seconds=2.0, fps=5, size=(64, 48), container=c)
    for c in AUDIO_FORMATS:
        media.make_audio(root / f"sound.{c}", seconds=1.0, container=c)
    media.make_pdf(root / "doc.pdf", pages=1)
    return root


def test_every_video_container_is_a_video_by_content(stage, corpus):
    paths = [corpus / f"clip.{c}" for c in VIDEO_FORMATS]
    out = stage(batch(paths))
    assert list(out["kind"]) == ["video"] * len(paths)
    assert list(out["format"]) == list(VIDEO_FORMATS.values())
    assert list(out["error"]) == [""] * len(paths)
    assert list(out["asset_id"]) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert (out["identify_wall_s"] >= 0).all()


def test_audio_files_and_audio_only_containers_are_audio(stage, corpus):
    """Matroska/WebM without a picture stream are probed and come out as audio, not video."""
    out = stage(batch([corpus / f"sound.{c}" for c in AUDIO_FORMATS]))
    assert list(out["kind"]) == ["audio"] * len(AUDIO_FORMATS)
    assert list(out["format"]) == list(AUDIO_FORMATS.values())


def test_content_wins_over_extension(stage, corpus, tmp_path):
    pdf_as_mp4 = shutil.copy(corpus / "doc.pdf", tmp_path / "report.mp4")
    mkv_as_avi = shutil.copy(corpus / "clip.mkv", tmp_path / "clip.avi")
    out = stage(batch([Path(pdf_as_mp4), Path(mkv_as_avi)]))
    assert list(out["kind"]) == ["pdf", "video"]
    assert list(out["format"]) == ["pdf", "matroska"]
    assert list(out["error"]) == ["", ""]


def test_bad_files_fail_alone_and_unsupported_files_are_other(stage, corpus, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is a text file, not a video" * 10)
    notes = tmp_path / "notes.txt"
    notes.write_text("meeting notes")
    docx = tmp_path / "memo.docx"
    docx.write_bytes(b"PK\x03\x04" + bytes(100))
    good = corpus / "clip.mp4"
    out = stage(batch([empty, fake, notes, docx, good]))
    assert list(out["error_stage"]) == ["identify", "identify", "", "", ""]
    assert out["error"][0] == "file is empty (0 bytes)"
    assert out["error"][1] == "mislabelled or corrupt: named .mp4 but the content is not a recognised media container"
    assert list(out["kind"][2:]) == ["other", "other", "video"]
    assert list(out["format"][2:4]) == ["unknown", "unknown"]
    # a failed row still carries its content hash: the assets table keys every input by it
    assert out["asset_id"][0] == hashlib.sha256(b"").hexdigest()
    assert out["asset_id"][1] == hashlib.sha256(fake.read_bytes()).hexdigest()


def test_rows_failed_earlier_pass_through_untouched(stage, corpus):
    out = stage(batch([corpus / "clip.mp4", corpus / "doc.pdf"], errors=["listing failed", ""]))
    assert (out["error_stage"][0], out["error"][0]) == ("earlier", "listing failed")
    assert out["kind"][1] == "pdf"


def test_hash_is_streamed_in_chunks(stage, corpus, monkeypatch):
    monkeypatch.setattr(identify, "CHUNK", 4096)
    path = corpus / "sound.wav"
    out = stage(batch([path]))
    assert out["asset_id"][0] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert out["kind"][0] == "audio"


@pytest.mark.parametrize("head,expected", [
    (b"\x00\x00\x01\xba" + bytes(60), ("video", "mpeg")),
    (b"\xff\xf1\x50\x80" + bytes(60), ("audio", "aac")),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(60), ("audio", "mp3")),
    (b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(60), ("audio", "wav")),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(60), None),
    (b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00" + bytes(60), ("audio", "m4a")),
    (b"\x00\x00\x00\x14ftyp3gp5" + bytes(60), ("video", "3gp")),
    (bytes(4) + (b"\x47" + bytes(191)) * 4, ("video", "mpegts")),  # M2TS: 192-byte packets
    (b"junk before the header %PDF-1.4\n", ("pdf", "pdf")),
    (b"PK\x03\x04" + bytes(60), None),
])
def test_sniff_leading_bytes(head, expected):
    assert sniff(head) == expected
