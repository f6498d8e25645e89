"""The live-video WebSocket /v1/stream on a real Ray Serve at 127.0.0.1 with the tiny-random model.

One Serve start for the module, at route prefix ``/``; a replica holds at most one session here, so
the refusal is easy to reach and every test closes its stream before the next one opens.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import time

import boto3
import numpy as np
import pytest
import requests
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from corpusflow.contracts.serve_config import Autoscaling, Deployments, DeploymentSettings, ServeConfig, StreamingSettings
from tests.media import make_video
from tests.test_serve_api import V1, free_port, replica_pid

KEY = "stream-key-" + "y" * 16
SIDE = 56


def small(**kw) -> DeploymentSettings:
    return DeploymentSettings(num_cpus=0.2, autoscaling=Autoscaling(min_replicas=1, max_replicas=1), **kw)


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory) -> str:
    """A bucket with a 2-second video under the playback allow-list and one outside it."""
    name = "stream-test"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    video = make_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=2, fps=4, size=(64, 48))
    for key in ("allowed/clip.mp4", "private/clip.mp4"):
        client.put_object(Bucket=name, Key=key, Body=video.read_bytes())
    return name


@pytest.fixture(scope="module")
def ws_url(s3_server, bucket, model_cache):
    from ray import serve
    import ray

    from corpusflow.serve_apps.run_local import start

    session = dict(fps=2, frame_pixels=SIDE * SIDE, vision_window_s=2, sink_tokens=32, text_window=32,
                   commentary_tokens=2, answer_tokens=3, recall="cluster")
    settings = ServeConfig(
        port=free_port(), models="tiny-random", model_cache=model_cache, retry_after_s=7,
        deployments=Deployments(api=small(max_ongoing_requests=16), decode=small(), pdf=small(), asr=small(),
                                frames=small(), vlm=small()),
        streaming=StreamingSettings(max_sessions_per_replica=1, session=session, max_message_mb=2,
                                    allowed_video_prefixes=(f"s3://{bucket}/allowed/",), deployment=small()))
    url = start(settings, api_key=KEY, num_cpus=4)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200 and _stats()["sessions"] == 0:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(1)
        else:
            pytest.fail("the app did not become ready in 240 s")
        yield url.replace("http://", "ws://") + "/v1/stream"
    finally:
        serve.shutdown()
        ray.shutdown()


def _stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("stream", app_name="corpusflow").stats.remote().result(timeout_s=30)


def open_stream(url: str, key: str | None = KEY) -> ClientConnection:
    ws = connect(url, additional_headers={"X-API-Key": key} if key else {}, open_timeout=30, max_size=None,
                 legacy=True)
    hello = json.loads(ws.recv(timeout=30))
    assert hello["type"] == "session" and hello["frames_per_chunk"] == 2, hello
    return ws


def refusal(url: str, key: str | None = KEY) -> tuple[int, str, dict]:
    """(HTTP status, reason, headers) of a connection refused before the upgrade."""
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"X-API-Key": key} if key else {}, open_timeout=30, legacy=True)
    r = refused.value.response
    return r.status_code, json.loads(r.body)["detail"], dict(r.headers)


def png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def send(ws: ClientConnection, msg: dict) -> None:
    ws.send(json.dumps(msg))


def until(ws: ClientConnection, kind: str, timeout: float = 60) -> list[dict]:
    """Messages up to and including the first of type ``kind``."""
    out: list[dict] = []
    while not out or out[-1]["type"] != kind:
        out.append(json.loads(ws.recv(timeout=timeout)))
        assert out[-1]["type"] != "error" or kind == "error", out[-1]
    return out


def push(ws: ClientConnection, t: float) -> list[dict]:
    send(ws, {"type": "frames", "t": t, "frames": [png(int(2 * t)), png(int(2 * t) + 1)]})
    return until(ws, "memory")


def wait_for_sessions(n: int, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while (stats := _stats())["sessions"] != n and time.time() < deadline:
        time.sleep(0.2)
    return stats


def test_round_trip_commentary_memory_and_a_grounded_answer(ws_url):
    with open_stream(ws_url) as ws:
        for t in range(4):
            out = push(ws, float(t))
            for m in out[:-1]:  # random tiny weights mostly say nothing; what they say carries its second
                assert m["type"] == "commentary" and m["t"] == t and m["text"]
            assert out[-1]["t"] == t and out[-1]["bytes"] > 0
        send(ws, {"type": "ask", "question": "What happened at the start?"})
        answer = until(ws, "answer")[-1]
        assert isinstance(answer["text"], str)
        assert answer["timestamps"] and set(answer["timestamps"]) <= {0.0, 1.0, 2.0, 3.0}
        push(ws, 4.0)  # the stream goes on after a question
        send(ws, {"type": "close"})
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1000
    assert wait_for_sessions(0)["memory_bytes"] == 0


def test_binary_frames_make_chunks_at_the_stream_fps(ws_url):
    with open_stream(ws_url) as ws:
        for i in range(4):
            ws.send(base64.b64decode(png(i)))
        assert [until(ws, "memory")[-1]["t"] for _ in range(2)] == [0.0, 1.0]


def test_missing_or_wrong_key_is_refused(ws_url):
    for key in (None, "wrong-key"):
        status, reason, headers = refusal(ws_url, key)
        assert (status, reason, headers["www-authenticate"]) == (401, "missing or invalid API key", "ApiKey")
    assert wait_for_sessions(0)["sessions"] == 0


def test_a_disconnect_frees_the_session_memory(ws_url):
    ws = open_stream(ws_url)
    push(ws, 0.0)
    push(ws, 1.0)
    stats = wait_for_sessions(1)
    assert stats["sessions"] == 1 and stats["memory_bytes"] > 0
    (report,) = stats["reports"].values()
    assert 0 < report["window_tokens"] <= report["bound_tokens"]
    ws.socket.close()  # the client vanishes without a close frame
    stats = wait_for_sessions(0)
    assert (stats["sessions"], stats["memory_bytes"]) == (0, 0)


def test_a_session_past_the_replica_bound_is_refused_with_retry_after(ws_url):
    with open_stream(ws_url) as first:
        status, reason, headers = refusal(ws_url)
        assert (status, headers["retry-after"]) == (503, "7") and "retry later" in reason
        push(first, 0.0)  # the held session is unaffected
    wait_for_sessions(0)
    with open_stream(ws_url) as again:  # room again once the first one closed
        push(again, 0.0)


def test_bad_messages_get_errors_and_the_session_goes_on(ws_url, bucket):
    with open_stream(ws_url) as ws:
        bad = ["not json", json.dumps([1, 2]), json.dumps({"type": "dance"}),
               json.dumps({"type": "frames", "t": 0, "frames": ["%%%"]}),
               json.dumps({"type": "frames", "t": 0, "frames": [base64.b64encode(b"not an image").decode()]}),
               json.dumps({"type": "frames", "t": -1, "frames": [png(0)]}),
               json.dumps({"type": "frames", "t": 0, "frames": [png(0)] * 3}),
               json.dumps({"type": "ask", "question": ""}),
               json.dumps({"type": "play", "uri": f"s3://{bucket}/private/clip.mp4"}),
               json.dumps({"type": "play", "uri": "http://example.com/x.mp4"})]
        for text in bad:
            ws.send(text)
            reply = json.loads(ws.recv(timeout=60))
            assert reply["type"] == "error" and reply["reason"], (text, reply)
        push(ws, 0.0)
        send(ws, {"type": "frames", "t": 0, "frames": [png(1)]})  # time must move forward
        assert "increase" in until(ws, "error")[-1]["reason"]
        push(ws, 1.0)


def test_an_allow_listed_video_plays_in_real_time(ws_url, bucket):
    with open_stream(ws_url) as ws:
        t0 = time.monotonic()
        send(ws, {"type": "play", "uri": f"s3://{bucket}/allowed/clip.mp4"})
        out = until(ws, "played")
        assert out[-1]["seconds"] == 2 and time.monotonic() - t0 >= 1.0
        assert [m["t"] for m in out if m["type"] == "memory"] == [0.0, 1.0]
        send(ws, {"type": "ask", "question": "What was shown?"})
        assert set(until(ws, "answer")[-1]["timestamps"]) <= {0.0, 1.0}


@pytest.mark.parametrize("endpoint", V1)
def test_every_http_route_needs_the_key_at_the_root_too(ws_url, endpoint):
    base = ws_url.replace("ws://", "http://").removesuffix("/v1/stream")
    for headers in ({}, {"X-API-Key": "wrong-key"}):
        r = requests.post(f"{base}/v1/{endpoint}", data={"uri": "s3://b/k.mp4", "question": "q"}, headers=headers,
                          timeout=30)
        assert r.status_code == 401 and r.json()["detail"] == "missing or invalid API key"


def encoded(side: int, fmt: str = "PNG") -> str:
    """A single-colour image: a few kB compressed, ``side``² pixels decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _replica_rss() -> int:
    import psutil

    return psutil.Process(replica_pid("stream")).memory_info().rss


def test_oversized_frames_and_messages_are_refused_before_decoding(ws_url):
    """A 13,000² PNG (~170 MB of pixels from ~100 kB), too many frames, a message over the limit: each a
    413 error message within seconds, the replica's memory unchanged, the session going on."""
    before = _replica_rss()
    with open_stream(ws_url) as ws:
        bomb = encoded(13_000)
        assert len(bomb) < 2**20
        cases = [{"type": "frames", "t": 0, "frames": [bomb]},
                 {"type": "frames", "t": 0, "frames": [encoded(SIDE * 5)]},  # 25x the frame size: over the 16x bound
                 {"type": "frames", "t": 0, "frames": [png(0)] * 3},
                 {"type": "frames", "t": 0, "frames": ["A" * (3 * 2**20)]}]
        for msg in cases:
            t0 = time.monotonic()
            send(ws, msg)
            reply = json.loads(ws.recv(timeout=30))
            assert (reply["type"], reply["status"]) == ("error", 413), reply
            assert time.monotonic() - t0 < 10, reply
        push(ws, 0.0)  # the session goes on
        assert _replica_rss() - before < 200 * 2**20
    wait_for_sessions(0)


def test_concurrent_opens_never_pass_the_session_bound(ws_url):
    def attempt(_: int) -> object:
        try:
            return open_stream(ws_url)
        except InvalidStatus as e:
            return e.response.status_code

    with cf.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    opened = [o for o in outcomes if not isinstance(o, int)]
    assert len(opened) == 1 and sorted(o for o in outcomes if isinstance(o, int)) == [503] * 3
    assert _stats()["sessions"] == 1
    opened[0].close()
    wait_for_sessions(0)
