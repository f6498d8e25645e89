"""The online API on a real Ray Serve at 127.0.0.1 with the tiny-random models: every endpoint, every refusal.

One Serve start for the module (minutes of model loading otherwise); requests go through the HTTP
proxy exactly as a client's would. The app runs under a route prefix (``/cf``), as on a shared Serve
cluster, so every check here, the key's included, holds under a prefix; tests/test_serve_streaming.py
checks the same key refusals at ``/``.
"""
from __future__ import annotations

import concurrent.futures as cf
import glob
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
import pytest
import requests

from corpusflow.contracts.config import VideoConfig
from corpusflow.contracts.serve_config import Autoscaling, Batching, Deployments, DeploymentSettings, ServeConfig
from tests.media import corrupt_copy, make_audio, make_pdf, make_video, truncate_copy

KEY = "test-key-" + "x" * 16
V1 = ("analyze", "transcribe", "ask")
PREFIX = "/cf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(settings: ServeConfig) -> Iterator[str]:
    """The app on a local Ray at 127.0.0.1, accepting KEY, for the block; its base URL once every stage answers."""
    import ray
    from ray import serve

    from corpusflow.serve_apps.run_local import start, wait_ready

    url = start(settings, api_key=KEY, num_cpus=4)
    try:
        wait_ready(url, 240)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_pid(deployment: str) -> int:
    """The process id of a live replica of ``deployment`` in this test's Ray (not another one on the machine)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::corpusflow#{deployment}#")]
    for name in names:
        try:
            return ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: os.getpid()), timeout=10)
        except (ray.exceptions.RayActorError, ValueError):  # a replica that died since it was listed
            continue
    raise LookupError(f"no live replica of {deployment} among {names}")


def small(**kw) -> DeploymentSettings:
    """A deployment that fits many to a 2-core machine: a fraction of a logical CPU, one replica."""
    return DeploymentSettings(num_cpus=0.2, autoscaling=Autoscaling(min_replicas=1, max_replicas=1), **kw)


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    name = "serve-test"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    video = make_video(d / "clip.mp4", seconds=4, fps=8, size=(96, 72))
    pdf = make_pdf(d / "doc.pdf", pages=3)
    return {
        "video": video, "audio": make_audio(d / "speech.wav", seconds=3), "pdf": pdf,
        "corrupt": corrupt_copy(video, d / "corrupt.mp4", keep=64),
        "truncated": truncate_copy(video, d / "truncated.mp4", fraction=0.3),
        "encrypted": make_pdf(d / "locked.pdf", encrypted=True),
        "text": _write(d / "notes.txt", b"plain text, not media\n" * 10),
        "empty": _write(d / "empty.mp4", b""),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def api(s3_server, bucket, model_cache):
    """Base URL of the app on 127.0.0.1 under ``/cf``, with a 1 MB body limit, one allow-listed S3 prefix
    and a 0.5 MB limit on S3 objects."""
    settings = ServeConfig(
        port=free_port(), route_prefix=PREFIX, models="tiny-random", model_cache=model_cache, max_request_mb=1,
        max_uri_mb=0.5, request_timeout_s=90,
        overload_status=429, retry_after_s=3, allowed_uri_prefixes=(f"s3://{bucket}/allowed/",),
        video=VideoConfig(fps=1, max_frames=4, frame_size=56),
        deployments=Deployments(api=small(max_ongoing_requests=16, max_queued_requests=16), decode=small(), frames=small(),
                                pdf=small(max_ongoing_requests=1, max_queued_requests=1),
                                asr=small(batching=Batching(max_batch_size=4)),
                                vlm=small(batching=Batching(max_batch_size=4))))
    with served(settings) as url:
        assert url.endswith(PREFIX)
        yield url


def post(api: str, endpoint: str, path: Path | None = None, key: str | None = KEY, timeout: float = 120,
         **fields) -> requests.Response:
    files = {"file": (path.name, path.read_bytes())} if path is not None else None
    headers = {"X-API-Key": key} if key else {}
    headers.update(fields.pop("headers", {}))
    return requests.post(f"{api}/v1/{endpoint}", files=files, data=fields or None, headers=headers, timeout=timeout)


def test_health_readiness_docs_and_openapi(api):
    assert requests.get(f"{api}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{api}/readyz").json()
    assert ready == {"ready": True, "stages": {"asr": True, "decode": True, "frames": True, "pdf": True, "vlm": True}}
    assert "swagger" in requests.get(f"{api}/docs").text.lower()
    spec = requests.get(f"{api}/openapi.json").json()
    assert {f"/v1/{e}" for e in V1} <= set(spec["paths"])
    assert "X-API-Key" in json.dumps(spec["components"]["securitySchemes"])


def test_analyze_video_gives_the_batch_table_rows(api, media):
    r = post(api, "analyze", media["video"])
    assert r.status_code == 200, r.text
    body = r.json()
    asset = body["asset"]
    assert asset["asset_id"] == hashlib.sha256(media["video"].read_bytes()).hexdigest()
    assert (asset["kind"], asset["status"], asset["error"]) == ("video", "ok", None)
    assert asset["uri"].startswith("upload://") and asset["uri"].endswith("/clip.mp4")
    assert 3.5 < asset["duration_s"] < 4.5
    sources = {(t["source"], t["detail"]) for t in body["timeline"]}
    assert ("vlm", "chapter") in sources and ("vlm", "keyframe") in sources
    for t in body["timeline"]:
        assert 0 <= t["t_start"] <= t["t_end"] <= asset["duration_s"] + 0.5
    assert body["summary"]["frames_used"] >= 1 and body["summary"]["summary"]
    assert body["pages"] == []


def test_analyze_audio_has_no_summary(api, media):
    body = post(api, "analyze", media["audio"]).json()
    assert body["asset"]["kind"] == "audio" and body["asset"]["status"] == "ok"
    assert body["summary"] is None and body["pages"] == []
    assert {t["source"] for t in body["timeline"]} <= {"asr"}


def test_analyze_pdf_gives_pages(api, media):
    body = post(api, "analyze", media["pdf"]).json()
    assert body["asset"]["kind"] == "pdf" and body["asset"]["pages"] == 3
    assert [p["page"] for p in body["pages"]] == [1, 2, 3]
    assert "Page 2 of 3" in body["pages"][1]["text"] and body["pages"][0]["images"] == 1
    assert body["timeline"] == [] and body["summary"] is None


def test_analyze_an_allow_listed_s3_object(api, media, bucket, s3_server):
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(media["pdf"]), bucket, "allowed/doc.pdf")
    r = post(api, "analyze", uri=f"s3://{bucket}/allowed/doc.pdf")
    assert r.status_code == 200, r.text
    assert r.json()["asset"]["uri"] == f"s3://{bucket}/allowed/doc.pdf" and len(r.json()["pages"]) == 3
    assert post(api, "analyze", uri=f"s3://{bucket}/allowed/missing.pdf").status_code == 404


def test_transcribe_audio_and_video(api, media):
    for kind in ("audio", "video"):
        r = post(api, "transcribe", media[kind])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["asset"]["kind"] == kind
        assert isinstance(body["language"], (str, type(None)))
        for seg in body["segments"] + body["words"]:
            assert seg["source"] == "asr" and seg["t_start"] <= seg["t_end"] <= body["asset"]["duration_s"] + 0.5


def test_ask_answers_with_timestamps_inside_the_video(api, media):
    r = post(api, "ask", media["video"], question="What colour is the second scene?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["question"] == "What colour is the second scene?" and isinstance(body["answer"], str)
    assert all(0 <= t <= body["asset"]["duration_s"] for t in body["timestamps"])


def test_concurrent_requests_are_all_answered(api, media):
    with cf.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: post(api, "transcribe", media["audio"]).status_code, range(6)))
    assert codes == [200] * 6


def test_a_full_stage_queue_is_429_with_retry_after(api, tmp_path):
    """The PDF stage takes one request and queues one; a burst beyond that is refused, not buffered."""
    pdf = make_pdf(tmp_path / "long.pdf", pages=150)
    with cf.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: post(api, "analyze", pdf), range(12)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 429}, codes
    refused = [r for r in answers if r.status_code == 429]
    assert all(r.headers["Retry-After"] == "3" and "capacity" in r.json()["detail"] for r in refused)
    assert all(len(r.json()["pages"]) == 150 for r in answers if r.status_code == 200)


@pytest.mark.parametrize("endpoint", V1)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_key_is_401(api, media, endpoint, key):
    r = post(api, endpoint, media["pdf"], key=key, question="q")
    assert r.status_code == 401 and r.json()["detail"]


def test_body_over_the_limit_is_413(api, tmp_path):
    big = _write(tmp_path / "big.mp4", os.urandom(1_200_000))
    assert post(api, "analyze", big).status_code == 413


def test_the_app_answers_only_under_its_prefix(api, media):
    root = api.removesuffix(PREFIX)
    assert requests.post(f"{root}/v1/transcribe", files={"file": ("a.wav", media["audio"].read_bytes())},
                         timeout=30).status_code == 404
    assert requests.get(f"{api}/healthz").status_code == 200  # probes and scrapers need no key
    assert requests.get(f"{api}/metrics").status_code == 200


def test_an_s3_object_over_the_limit_is_413_from_its_metadata(api, bucket, s3_server):
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=bucket, Key="allowed/huge.mp4",
                                                          Body=os.urandom(600_000))
    r = post(api, "analyze", uri=f"s3://{bucket}/allowed/huge.mp4", timeout=10)
    assert r.status_code == 413 and "0.5 MB" in r.json()["detail"]


def test_deadline_passed_is_504(api, media):
    r = post(api, "analyze", media["video"], headers={"X-Request-Timeout": "0.05"})
    assert r.status_code == 504 and "0.05" in r.json()["detail"]


@pytest.mark.parametrize("uri,status", [
    ("https://example.com/video.mp4", 400), ("http://169.254.169.254/latest/meta-data/", 400),
    ("/etc/passwd", 400), ("file:///etc/passwd", 400), ("s3://serve-test/allowed/../secret.pdf", 400),
    ("s3://serve-test/private/doc.pdf", 403), ("s3://another-bucket/allowed/doc.pdf", 403),
])
def test_uris_outside_the_allow_list_are_refused(api, uri, status):
    r = post(api, "analyze", uri=uri)
    assert r.status_code == status and r.json()["detail"]


@pytest.mark.parametrize("name,endpoint,reason", [
    ("corrupt", "analyze", "malformed"), ("truncated", "analyze", "video"), ("empty", "analyze", "empty"),
    ("text", "analyze", "unsupported"), ("encrypted", "analyze", "pdf"),
    ("pdf", "transcribe", "audio or video"), ("audio", "ask", "needs a video"),
])
def test_unusable_media_is_422_with_a_reason(api, media, name, endpoint, reason):
    r = post(api, endpoint, media[name], question="what happens?")
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"].lower()


def test_malformed_requests_are_422(api, media, bucket):
    assert post(api, "analyze").status_code == 422  # neither file nor uri
    assert post(api, "analyze", media["pdf"], uri=f"s3://{bucket}/allowed/doc.pdf").status_code == 422
    assert post(api, "ask", media["video"], question="").status_code == 422
    assert post(api, "ask", media["video"], question="x" * 2001).status_code == 422


def _uploads_on_disk() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "corpusflow-request-*")) +
               glob.glob(os.path.join(tempfile.gettempdir(), "corpusflow-upload-*")))


def test_no_upload_is_left_on_disk(api, media):
    before = _uploads_on_disk()  # other processes on this machine may have their own
    post(api, "analyze", media["pdf"])
    post(api, "analyze", media["corrupt"])
    assert _uploads_on_disk() - before == set()


def test_metrics_count_requests_by_route_and_status(api, media):
    post(api, "analyze", media["text"])
    text = requests.get(f"{api}/metrics").text
    assert 'corpusflow_requests_total{route="/v1/analyze",status="422"}' in text
    assert 'corpusflow_requests_total{route="/v1/analyze",status="401"}' in text  # refused before any route ran
    assert "corpusflow_request_seconds_bucket" in text


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(api, tmp_path):
    """Property-based requests from the OpenAPI spec (with a valid key, under the route prefix): never a
    5xx, except the 504 a client asks for with a deadline too short for any work (X-Request-Timeout: 5e-324)."""
    exe = str(Path(sys.executable).with_name("schemathesis"))
    report, config = tmp_path / "st.json", tmp_path / "schemathesis.toml"
    config.write_text('[checks.not_a_server_error]\nexpected-statuses = ["2XX", "3XX", "4XX", "504"]\n')
    proc = subprocess.run(
        [exe, "--config-file", str(config), "run", f"{api}/openapi.json", "-H", f"X-API-Key: {KEY}",
         "--checks", "not_a_server_error",
         "--max-examples", "25", "--max-time", "90", "--workers", "2", "--request-timeout", "60",
         "--report", "ndjson", "--report-ndjson-path", str(report), "--seed", "1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    print(proc.stdout[proc.stdout.rfind("SUMMARY"):])
