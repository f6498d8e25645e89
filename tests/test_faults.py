"""The corpus job against the real world's faults: a throttling, flaky S3 in front of both corpus and tables."""
from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from corpusflow.flows.cli import main
from corpusflow.flows.tables import read_table
from tests import media
from tests.s3_faults import Faults, FaultyS3Process

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, model_cache: str) -> str:
    f = tmp_path / "job.yaml"
    # The search index has its own tests (tests/test_search.py).
    f.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\nvideo:\n  fps: 1.0\n  frame_size: 112\nindex:\n  enabled: false\n")
    return str(f)


def test_a_throttling_flaky_s3_costs_retries_not_rows(s3_server, s3_bucket, tmp_path, model_cache, monkeypatch):
    import ray

    src = tmp_path / "src"
    media.make_audio(src / "talk.mp3", seconds=3.0, container="mp3")
    for i in range(4):
        media.make_pdf(src / f"leaflet_{i}.pdf", pages=2)
    (src / "notes.txt").write_text("not a medium\n")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for f in src.iterdir():
        s3.upload_file(str(f), s3_bucket, f"corpus/{f.name}")

    # What S3 does under load: SlowDown answers, dropped connections, slow answers.
    faults = Faults(slow_down=0.15, drop=0.03, delay=0.05, delay_s=0.3, seed=7)
    ray.shutdown()  # workers must start with the proxy as their S3 endpoint
    proxy = FaultyS3Process(s3_server, faults)
    with proxy as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            code = main(["run", f"s3://{s3_bucket}/corpus", "--out", f"s3://{s3_bucket}/out",
                         "--config", _config(tmp_path, model_cache)])
        finally:
            ray.shutdown()
    assert code == 0
    assert proxy.counts["slow_down"] > 0 and proxy.counts["drop"] > 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assets = {r["uri"].rsplit("/", 1)[1]: r for r in read_table(f"s3://{s3_bucket}/out", "assets").to_pylist()}
    assert {name: a["status"] for name, a in assets.items()} == {
        "talk.mp3": "ok", **{f"leaflet_{i}.pdf": "ok" for i in range(4)}, "notes.txt": "skipped"}
    assert read_table(f"s3://{s3_bucket}/out", "pages").num_rows == 4 * 2


def _descendants_named(pid: int, fragment: str) -> list:
    """Processes under ``pid`` (the job's own local Ray: raylet, workers) whose command line names ``fragment``."""
    import psutil

    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if any(fragment in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_an_asr_actor_killed_mid_job_is_replaced_and_no_row_is_lost(tmp_path, model_cache):
    import signal
    import subprocess
    import sys
    import time

    corpus = tmp_path / "corpus"
    for i in range(4):
        media.make_audio(corpus / f"call_{i}.wav", seconds=4.0)
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out),
                            "--config", _config(tmp_path, model_cache)], start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = None
        deadline = time.time() + 240
        while killed is None and time.time() < deadline and job.poll() is None:
            actors = _descendants_named(job.pid, "Transcribe")  # Ray titles an actor's process with its class
            if actors:
                actors[0].send_signal(signal.SIGKILL)  # as the OOM killer or a segfault would
                killed = actors[0].pid
            time.sleep(0.2)
        output, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            import os

            os.killpg(job.pid, signal.SIGKILL)
    assert killed is not None, "the ASR actor never appeared"
    assert job.returncode == 0, output[-3000:]
    assets = read_table(str(out), "assets").to_pylist()
    assert sorted(a["uri"].rsplit("/", 1)[1] for a in assets) == [f"call_{i}.wav" for i in range(4)]
    assert {a["status"] for a in assets} == {"ok"}


def test_a_file_that_kills_its_worker_every_time_becomes_one_error_row(tmp_path, model_cache):
    """The poison file: whenever an ASR actor is working on it, it is killed (as a decoder segfault or
    the OOM killer would be on that file). The job finishes; the other files are right."""
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus = tmp_path / "corpus"
    media.make_audio(corpus / "poison.wav", seconds=8.0)
    for i in range(3):
        media.make_pdf(corpus / f"leaflet_{i}.pdf", pages=1)
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(f"model_cache: {model_cache}\nfaults:\n  worker_restarts: 1\nindex:\n  enabled: false\n")
    job = subprocess.Popen([sys.executable, "-m", "corpusflow", "run", str(corpus), "--out", str(out),
                            "--config", str(config)], start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kills, working_since = 0, {}
    try:
        deadline = time.time() + 400
        while time.time() < deadline and job.poll() is None:
            # Ray titles an actor's process with the method it runs: .submit while it works on a batch.
            # Passing the PDFs' rows through takes milliseconds; transcribing the audio takes seconds.
            for actor in _descendants_named(job.pid, "(Transcribe)).submit"):
                since = working_since.setdefault(actor.pid, time.time())
                if time.time() - since > 0.3:
                    try:
                        actor.send_signal(signal.SIGKILL)
                        kills += 1
                    except Exception:  # noqa: BLE001 - it may be gone already
                        pass
            time.sleep(0.05)
        output, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-3000:]
    assert kills >= 2
    assets = {a["uri"].rsplit("/", 1)[1]: a for a in read_table(str(out), "assets").to_pylist()}
    assert {n: a["status"] for n, a in assets.items()} == {
        "poison.wav": "error", **{f"leaflet_{i}.pdf": "ok" for i in range(3)}}
    poison = assets["poison.wav"]
    assert poison["error_stage"] == "asr" and "died 2 times" in poison["error"], poison
    assert len(poison["asset_id"]) == 64 and not poison["retryable"]
    assert "poison.wav" in output and "running it alone" in output
