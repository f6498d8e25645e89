"""The corpus job end to end, through the CLI, on a real local Ray with the tiny-random models."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
from deltalake import DeltaTable
import pytest

from corpusflow.contracts import storage
from corpusflow.contracts.schemas import TABLES
from corpusflow.flows.cli import main
from corpusflow.flows.tables import read_table
from tests import media
from tests.readers import duckdb_read

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every kind, and every way a file can be bad."""
    root = tmp_path_factory.mktemp("corpus")
    media.make_video(root / "lecture.mp4", seconds=8.0, audio=True)
    media.make_video(root / "trial" / "silent.mkv", seconds=5.0, audio=False, container="mkv")
    media.make_audio(root / "interview.wav", seconds=4.0)
    media.make_pdf(root / "docs" / "label.pdf", pages=3, images=1)
    media.make_pdf(root / "docs" / "locked.pdf", pages=1, encrypted=True)
    media.make_pdf(root / "docs" / "really_a_pdf.mp4", pages=2)
    media.corrupt_copy(root / "lecture.mp4", root / "corrupt.mp4")
    media.truncate_copy(root / "lecture.mp4", root / "truncated.mp4", 0.3)
    (root / "empty.mov").write_bytes(b"")
    (root / "notes.txt").write_text("meeting notes\n")
    # Every file gets its row, hidden and "_" folders included; identical bytes share one set of data rows.
    (root / "_archive").mkdir()
    (root / "_archive" / "label_copy.pdf").write_bytes((root / "docs" / "label.pdf").read_bytes())
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


EXPECTED = {  # file → (kind, status, error_stage)
    "lecture.mp4": ("video", "ok", None), "trial/silent.mkv": ("video", "ok", None),
    "interview.wav": ("audio", "ok", None), "docs/label.pdf": ("pdf", "ok", None),
    "docs/locked.pdf": ("pdf", "error", "pdf"), "docs/really_a_pdf.mp4": ("pdf", "ok", None),
    "empty.mov": (None, "error", "identify"), "notes.txt": ("other", "skipped", None),
    "_archive/label_copy.pdf": ("pdf", "ok", None), ".DS_Store": ("other", "skipped", None),
}


def _config(tmp_path: Path, model_cache: str) -> str:
    f = tmp_path / "job.yaml"
    # The search index has its own tests (tests/test_search.py).
    f.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\nvideo:\n  fps: 1.0\n  frame_size: 112\nindex:\n  enabled: false\n")
    return str(f)


def _sorted_rows(table) -> list:
    return sorted(table.to_pylist(), key=repr)


def _by_file(assets, root: str) -> dict:
    return {r["uri"].split(root.rstrip("/") + "/", 1)[1]: r for r in assets.to_pylist()}


def test_every_file_lands_exactly_once_and_a_rerun_adds_nothing(corpus, tmp_path, model_cache, capsys):
    out = tmp_path / "out"
    assert main(["run", str(corpus), "--out", str(out), "--config", _config(tmp_path, model_cache)]) == 0
    printed = capsys.readouterr()
    assert "files: 12 listed, 0 already done" in printed.out and "corpusflow: 12/12 files" in printed.err
    # random models are never silent: one line at start, one in the summary, the model in every summary row
    assert printed.err.splitlines()[0] == ("corpusflow: models profile tiny-random: transcripts, summaries and "
                                           "search embeddings come from random weights, they are noise (for tests; "
                                           "real models: --models small-real)")
    assert "models: tiny-random; transcripts, summaries, search embeddings from random weights" in printed.out

    assets = read_table(str(out), "assets")
    assert assets.schema == TABLES["assets"]
    rows = _by_file(assets, str(corpus))
    assert len(rows) == assets.num_rows == 12
    assert rows["_archive/label_copy.pdf"]["asset_id"] == rows["docs/label.pdf"]["asset_id"]
    for name, (kind, status, stage) in EXPECTED.items():
        r = rows[name]
        assert (r["status"], r["error_stage"]) == (status, stage), (name, r)
        if kind:
            assert r["kind"] == kind, (name, r)
        if status == "error":
            assert r["error"] and len(r["error"]) > 10
    assert rows["corrupt.mp4"]["status"] == "error" and rows["truncated.mp4"]["status"] in ("ok", "error")
    assert rows["docs/label.pdf"]["pages"] == 3 and 7.5 < rows["lecture.mp4"]["duration_s"] < 8.5

    timeline = read_table(str(out), "timeline")
    lecture = rows["lecture.mp4"]["asset_id"]
    mine = [r for r in timeline.to_pylist() if r["asset_id"] == lecture]
    assert {r["source"] for r in mine} >= {"vlm"}
    for r in mine:
        assert 0 <= r["t_start"] <= r["t_end"] <= 8.5
    summaries = read_table(str(out), "summaries").to_pylist()
    assert {s["asset_id"] for s in summaries} == {rows["lecture.mp4"]["asset_id"], rows["trial/silent.mkv"]["asset_id"]}
    assert {s["model"] for s in summaries} == {"tiny-random"}
    assert main(["report", str(out)]) == 0
    assert "2 summaries come from a tiny-random VLM" in capsys.readouterr().err
    assert read_table(str(out), "pages").num_rows == 3 + 2
    metrics = read_table(str(out), "metrics")
    assert {"identify", "decode", "asr", "vlm", "pdf"} <= set(metrics["stage"].to_pylist())
    assert all(c >= 0 for c in metrics["cost_usd"].to_pylist())
    label = rows["docs/label.pdf"]["asset_id"]  # its bytes are also _archive/label_copy.pdf: processed once
    assert [r["stage"] for r in metrics.to_pylist() if r["asset_id"] == label].count("pdf") == 1
    # Engines with none of our code read the same rows: delta-rs at the latest version, and DuckDB's SQL
    # over the files the Delta log names.
    for table in TABLES:
        ours = _sorted_rows(read_table(str(out), table))
        assert _sorted_rows(DeltaTable(str(out / table)).to_pyarrow_table().cast(TABLES[table])) == ours, table
        assert _sorted_rows(duckdb_read(out / table).cast(TABLES[table])) == ours, table

    # Same job again: everything is already committed and unchanged, so no byte is read (Ray is not even
    # started) and nothing is written (no new table version).
    import ray

    ray.shutdown()
    before = {t: DeltaTable(str(out / t)).version() for t in TABLES}
    assert main(["run", str(corpus), "--out", str(out), "--config", _config(tmp_path, model_cache)]) == 0
    assert "12 already done" in capsys.readouterr().out
    assert not ray.is_initialized()
    assert {t: DeltaTable(str(out / t)).version() for t in TABLES} == before
    assert read_table(str(out), "assets").num_rows == 12


def test_stage_columns_are_arrow_native(corpus, tmp_path, model_cache):
    """Frames, PCM, segments and pages cross the stages as Arrow types, never pickled objects."""
    from corpusflow.contracts.config import JobConfig
    from corpusflow.flows.job import build_dataset, init_ray

    config = JobConfig.build(_config(tmp_path, model_cache), corpus=str(corpus), out=str(tmp_path / "o"))
    init_ray(None)
    ds = build_dataset(config, storage.list_files(str(corpus)), set(), "schema-check", commit_rows=False)
    import ray

    blocks = ray.get(ds.materialize().to_arrow_refs())
    types: dict[str, set[str]] = {}
    for block in blocks:
        for name, typ in zip(block.schema.names, block.schema.types):
            types.setdefault(name, set()).add(str(typ))
    pickled = {n: t for n, t in types.items() if any("object" in x.lower() or "pickle" in x.lower() for x in t)}
    assert not pickled, pickled
    # A block whose lists are all empty types them list<null>; Arrow unifies that with list<string>.
    for col in ("seg_text", "page_text", "chapter_title"):
        assert types[col] <= {"list<item: string>", "list<item: null>"}, (col, types[col])
    assert "list<item: string>" in types["page_text"]
    assert any("Tensor" in t for t in types["chapter_start"])
    assert "frames" not in types and "speech_pcm" not in types


def test_a_killed_job_rerun_completes_without_loss_or_duplicates(corpus, tmp_path, model_cache):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out),
           "--config", _config(tmp_path, model_cache)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).parents[1])
    deadline = time.time() + 300
    while time.time() < deadline and not read_table(str(out), "assets").num_rows:
        assert proc.poll() is None, f"the job exited ({proc.returncode}) before committing anything"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    proc.wait()
    partial = read_table(str(out), "assets").num_rows
    assert 0 < partial <= 12
    assert main(["run", str(corpus), "--out", str(out), "--config", _config(tmp_path, model_cache)]) == 0
    assets = read_table(str(out), "assets")
    assert sorted(_by_file(assets, str(corpus))) == sorted(
        str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
    assert assets.num_rows == 12
    pages = read_table(str(out), "pages").to_pylist()
    assert len({(p["asset_id"], p["page"]) for p in pages}) == len(pages) == 5


def test_s3_corpus_to_s3_tables(s3_bucket, s3_server, tmp_path, model_cache):
    import ray

    ray.shutdown()  # workers must start with the loopback S3 environment
    s3 = boto3.client("s3", endpoint_url=s3_server)
    src = tmp_path / "src"
    media.make_audio(src / "a.mp3", seconds=3.0, container="mp3")
    media.make_pdf(src / "b.pdf", pages=2)
    for f in src.iterdir():
        s3.upload_file(str(f), s3_bucket, f"corpus/{f.name}")
    out = f"s3://{s3_bucket}/tables"
    try:
        assert main(["run", f"s3://{s3_bucket}/corpus", "--out", out, "--config", _config(tmp_path, model_cache)]) == 0
    finally:
        ray.shutdown()
    assets = read_table(out, "assets").to_pylist()
    assert sorted((a["uri"], a["status"]) for a in assets) == [
        (f"s3://{s3_bucket}/corpus/a.mp3", "ok"), (f"s3://{s3_bucket}/corpus/b.pdf", "ok")]
    assert read_table(out, "pages").num_rows == 2


def test_two_jobs_on_one_out_lose_nothing_and_duplicate_nothing(tmp_path, model_cache):
    """A re-launch while the first run still works (or a scheduled job overlapping the last): both
    finish, the tables hold each file once, whichever job committed it, and no file was processed by
    both (each leases a file before working on it)."""
    corpus = tmp_path / "corpus"
    media.make_audio(corpus / "call.wav", seconds=3.0)
    for i in range(5):
        media.make_pdf(corpus / f"leaflet_{i}.pdf", pages=2)
    (corpus / "notes.txt").write_text("not a medium\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out),
               "--config", _config(tmp_path, model_cache)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for job in (first, second):
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output[-3000:]
    assets = read_table(str(out), "assets").to_pylist()
    assert sorted(a["uri"].rsplit("/", 1)[1] for a in assets) == sorted(
        ["call.wav", "notes.txt", *(f"leaflet_{i}.pdf" for i in range(5))])
    assert {a["status"] for a in assets} == {"ok", "skipped"}
    pages = [(r["asset_id"], r["page"]) for r in read_table(str(out), "pages").to_pylist()]
    assert len(pages) == len(set(pages)) == 5 * 2
    timeline = [(r["asset_id"], r["t_start"], r["detail"], r["text"]) for r in read_table(str(out), "timeline").to_pylist()]
    assert timeline and len(timeline) == len(set(timeline))
    worked: dict[str, set] = {}
    for r in read_table(str(out), "metrics").to_pylist():
        if r["kind"] != "other":
            worked.setdefault(r["asset_id"], set()).add(r["job_id"])
    assert len(worked) == 6 and all(len(jobs) == 1 for jobs in worked.values()), worked
