"""Hostile and oversized inputs: each gives its one row, refused from headers before the costly work."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from corpusflow.actors.decode import DecodeMedia
from corpusflow.actors.frames import SampleFrames
from corpusflow.actors.pdf import ExtractPdf
from corpusflow.contracts.base import ConfigError, validated
from corpusflow.contracts.config import JobConfig
from tests import media


def _config(**limits) -> JobConfig:
    return JobConfig(corpus="/tmp/corpus", out="/tmp/out", video={"fps": 1.0, "frame_size": 112}, limits=limits)


def _batch(paths: list[Path], kinds: list[str]) -> dict[str, np.ndarray]:
    n = len(paths)
    return {"uri": np.asarray([str(p) for p in paths]), "kind": np.asarray(kinds),
            "bytes": np.asarray([p.stat().st_size for p in paths], np.int64),
            "error_stage": np.asarray([""] * n), "error": np.asarray([""] * n)}


def test_media_over_the_limits_is_refused_from_its_header(tmp_path):
    video = media.make_video(tmp_path / "big.mp4", seconds=5.0, size=(320, 240))
    audio = media.make_audio(tmp_path / "long.wav", seconds=5.0)
    t0 = time.perf_counter()
    out = DecodeMedia(_config(max_pixels=320 * 200))(_batch([video], ["video"]))
    assert out["error"][0] == "video frames are 320x240 pixels, over the limit of 64000 pixels (limits.max_pixels)"
    out = DecodeMedia(_config(max_duration_s=3.0))(_batch([audio], ["audio"]))
    assert out["error"][0] == "audio is 5.0 s long, over the limit of 3.0 s (limits.max_duration_s)"
    assert time.perf_counter() - t0 < 5.0
    assert not out["error_retryable"][0]


def test_tags_that_are_not_utf8_do_not_fail_a_valid_file(tmp_path):
    src = media.make_video(tmp_path / "tagged.mkv", seconds=3.0, container="mkv", title="Cafe Ole")
    data = src.read_bytes()
    assert data.count(b"Cafe Ole") == 1
    latin1 = tmp_path / "latin1.mkv"
    latin1.write_bytes(data.replace(b"Cafe Ole", b"Caf\xe9 Ol\xe9"))  # a Latin-1 title, as old muxers write
    out = SampleFrames(_config())(DecodeMedia(_config())(_batch([latin1], ["video"])))
    assert out["error"][0] == "" and len(out["frames"][0]) >= 2
    assert "Caf\ufffd Ol\ufffd" in out["meta_json"][0]


def test_pdfs_over_the_limits_are_refused(tmp_path):
    pdf = media.make_pdf(tmp_path / "long.pdf", pages=3)
    out = ExtractPdf(_config(pdf_max_pages=2))(_batch([pdf], ["pdf"]))
    assert "3 pages, over the limit of 2 (limits.pdf_max_pages)" in out["error"][0]
    out = ExtractPdf(_config(pdf_max_mb=0.001))(_batch([pdf], ["pdf"]))
    assert "(limits.pdf_max_mb)" in out["error"][0]


def test_a_file_over_its_stage_time_limit_fails_alone(tmp_path):
    slow = media.make_pdf(tmp_path / "slow.pdf", pages=3000, images=0)
    quick = media.make_pdf(tmp_path / "quick.pdf", pages=1)
    stage = ExtractPdf(_config(row_time_s={"pdf": 0.1}))
    t0 = time.perf_counter()
    # Off the main thread, as Ray runs actor stages.
    with ThreadPoolExecutor(1) as pool:
        out = pool.submit(stage, _batch([quick, slow, quick], ["pdf"] * 3)).result()
    assert list(out["error"]) == ["", "took longer than the limit of 0.1 s per file (limits.row_time_s.pdf)", ""]
    assert list(out["pages"]) == [1, 0, 1] and "Page 1 of 1" in out["page_text"][0][0]
    assert time.perf_counter() - t0 < 5.0
    assert not out["error_retryable"][1]  # the same file would take as long again


def test_time_limits_name_known_stages():
    with pytest.raises(ConfigError, match="limits.row_time_s: no stage named transcode"):
        validated(JobConfig, {"corpus": "/tmp/c", "out": "/tmp/o", "limits": {"row_time_s": {"transcode": 5}}}, "job config")
