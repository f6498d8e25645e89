"""corpusflow report: figures a data engineer reads off a finished job, and an HTML that shows its plots."""
from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from deltalake import write_deltalake

from corpusflow.contracts.cost import DEFAULT_USD_PER_HOUR, cost_usd
from corpusflow.contracts.schemas import conform
from corpusflow.flows import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


def _write_job(out: Path) -> None:
    """A synthetic job: 2 videos of 1 h, 1 audio of 30 min, 2 PDFs of 10 pages, one video failing in vlm."""
    assets = [  # (asset_id, kind, duration_s, pages, status, error_stage, error, minutes after T0)
        ("v1", "video", 3600.0, None, "ok", None, None, 5),
        ("v2", "video", 3600.0, None, "ok", None, None, 9),
        ("v3", "video", 1800.0, None, "error", "vlm", "the model's answer was not valid JSON after 2 attempts", 12),
        ("a1", "audio", 1800.0, None, "ok", None, None, 3),
        ("p1", "pdf", None, 10, "ok", None, None, 1),
        ("p2", "pdf", None, 10, "error", "pdf", "PDF is password-protected", 2),
    ]
    cols = {"asset_id": [], "uri": [], "kind": [], "format": [], "bytes": [], "duration_s": [], "pages": [],
            "status": [], "error_stage": [], "error": [], "retryable": [], "modified": [],
            "config_fingerprint": [], "job_id": [], "committed_at": []}
    for aid, kind, dur, pages, status, est, err, minute in assets:
        for k, v in (("asset_id", aid), ("uri", f"/corpus/{aid}"), ("kind", kind), ("format", kind), ("bytes", 1000),
                     ("duration_s", dur), ("pages", pages), ("status", status), ("error_stage", est), ("error", err),
                     ("retryable", False if err else None), ("modified", None), ("config_fingerprint", "f" * 16), ("job_id", "job-1"),
                     ("committed_at", T0 + timedelta(minutes=minute))):
            cols[k].append(v)
    write_deltalake(str(out / "assets"), conform("assets", cols))

    # (asset, kind, stage, device_s, accelerator, media_s, pages)
    rows = [("v1", "video", "decode", 60, "cpu", 3600, None), ("v1", "video", "asr", 144, "A10G", 3600, None),
            ("v1", "video", "vlm", 14.4, "H100", 3600, None), ("v2", "video", "decode", 60, "cpu", 3600, None),
            ("v2", "video", "asr", 144, "A10G", 3600, None), ("v2", "video", "vlm", 65.5, "A10G", 3600, None),
            ("a1", "audio", "decode", 30, "cpu", 1800, None), ("a1", "audio", "asr", 72, "A10G", 1800, None),
            ("p1", "pdf", "pdf", 0.5, "cpu", None, 10)]
    m = {k: [] for k in ("job_id", "asset_id", "kind", "stage", "wall_s", "device_s", "accelerator", "media_s",
                         "pages", "usd_per_hour", "cost_usd")}
    for aid, kind, stage, dev, acc, media, pages in rows:
        for k, v in (("job_id", "job-1"), ("asset_id", aid), ("kind", kind), ("stage", stage), ("wall_s", dev * 1.1),
                     ("device_s", float(dev)), ("accelerator", acc), ("media_s", media), ("pages", pages),
                     ("usd_per_hour", DEFAULT_USD_PER_HOUR[acc]),
                     ("cost_usd", cost_usd(dev, acc, DEFAULT_USD_PER_HOUR))):
            m[k].append(v)
    write_deltalake(str(out / "metrics"), conform("metrics", m))


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    _write_job(out)
    return out


def test_summary_gives_cost_per_media_hour_page_and_stage(job: Path, tmp_path: Path) -> None:
    assert report.main([str(job), "--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")]) == 0
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["assets"] == 6 and s["status"] == {"error": 2, "ok": 4}
    assert s["video_hours"] == pytest.approx(2.5) and s["audio_hours"] == pytest.approx(0.5) and s["pages"] == 20
    video_cost = (2 * 60 / 3600 * 0.048 + 2 * 144 / 3600 * 1.006 + 14.4 / 3600 * 6.88 + 65.5 / 3600 * 1.006)
    assert s["usd_per_video_hour"] == pytest.approx(video_cost / 2.5)
    assert s["usd_per_page"] == pytest.approx(0.5 / 3600 * 0.048 / 20)
    assert s["usd_per_media_hour_by_kind_accelerator"]["video/H100"] == pytest.approx(14.4 / 3600 * 6.88 / 2.5)
    assert list(s["stages"]) == ["decode", "pdf", "asr", "vlm"]  # pipeline order (contracts/registry.py)
    assert s["stages"]["asr"]["device_s"] == pytest.approx(360)
    assert s["commit_span_s"] == pytest.approx(11 * 60)
    assert s["failures"][0]["stage"] in ("vlm", "pdf") and sum(f["assets"] for f in s["failures"]) == 2


def test_html_is_self_contained_with_four_plots(job: Path) -> None:
    assert report.main([str(job)]) == 0
    page = (job / "report.html").read_text()
    assert page.count("<svg") == 4
    assert "PDF is password-protected" in page and "$ per media-hour" in page
    assert "src=\"http" not in page and "href=\"http" not in page  # nothing to fetch
    assert (job / "report.json").is_file()


def test_missing_tables_are_a_readable_error(tmp_path: Path, capsys) -> None:
    assert report.main([str(tmp_path)]) == 1
    assert "no committed assets" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install -y chromium)")
def test_headless_chromium_screenshot_shows_the_plots(job: Path, tmp_path: Path) -> None:
    assert report.main([str(job)]) == 0
    png = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={png}", "--window-size=1400,2000", (job / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size == (1400, 2000)
    colors = img.getcolors(maxcolors=1 << 20)
    # The plots' bar colours are on screen (the page is not blank and not just text).
    plotted = {(0x6b, 0xae, 0xd6), (0xfd, 0x8d, 0x3c), (0xde, 0x2d, 0x26)}
    seen = {c for n, c in colors if n > 200}
    assert plotted <= seen, f"plot colours missing from the screenshot: {plotted - seen}"


def test_reports_on_tables_in_s3(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    _write_job(tmp_path / "local")
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    for f in (tmp_path / "local").rglob("*"):  # the Delta tables as they are: data files and logs
        if f.is_file():
            s3.upload_file(str(f), s3_bucket, f"out/{f.relative_to(tmp_path / 'local')}")
    out = f"s3://{s3_bucket}/out"
    assert report.main([out]) == 2  # nowhere local to write the HTML
    assert report.main([out, "--html", str(tmp_path / "r.html")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["assets"] == 6
