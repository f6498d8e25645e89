"""The online API across Ray nodes of cluster.yaml's types, under 16 closed-loop clients, when a node dies
and when the head's GCS dies.

A local multi-node cluster (tests/local_cluster.py): a CPU-less head whose GCS keeps its tables in a
redis-server started here, a CPU, an A10G and an H100 node that the test owns, and Ray's autoscaler over
the fake multi-node provider for every node type of cluster.yaml. The app is serve_apps/config.yaml's,
with what its comments say to set on GPU nodes (ASR on an A10G share, the VLM on an H100), one
replica per deployment and a short deadline, over real HTTP on 127.0.0.1 with an API key.

What a client relies on: while the node of the ASR replica is gone every answer is a 200, a 429/503
with Retry-After or a 504 at the deadline; a replacement replica comes up on a node of the same type
(the autoscaler adds one: none is free) and throughput returns to its level before the kill. While
the GCS is down and after it restarts, the API keeps answering.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest
import requests
import yaml

from corpusflow.contracts.serve_config import ServeConfig
from tests.local_cluster import LocalCluster, accelerator, free_port, node_types, redis_server
from tests.media import make_audio
from tests.test_serve_api import KEY
from tests.test_serve_guards import CONFIG_YAML
from tests.test_serve_load import start_clients

pytestmark = pytest.mark.slow

# A deadline twice the latency 16 clients see on two busy cores: a shorter one turns a slow machine into
# nothing but 504s (every closed-loop request waits behind 15 others).
CLIENTS, DEADLINE_S = 16, 30
WARMUP_S, WINDOW_S, RECOVERY_S = 3, 10, 150  # seconds of load before the "before" window, and each window's length
ALLOWED = {200, 429, 503, 504}


def settings(types: dict[str, Any], model_cache: str) -> ServeConfig:
    """serve_apps/config.yaml's app, placed on cluster.yaml's node types as its comments say."""
    args = yaml.safe_load(CONFIG_YAML.read_text())["applications"][0]["args"]
    for d in args["deployments"].values():
        d["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}  # two cores: one replica of each
    for name in ("api", "decode", "pdf", "frames"):  # CPU stages on CPU nodes: a GPU node's CPUs are its GPU stage's
        args["deployments"][name]["label_selector"] = types["cpu_worker"]["labels"]
    args["deployments"]["asr"].update(num_gpus=0.25, accelerator_type=accelerator(types, "a10g_worker"))
    args["deployments"]["vlm"].update(num_gpus=1, accelerator_type=accelerator(types, "h100_worker"))
    args["streaming"]["enabled"] = False
    args.update(models="tiny-random", port=free_port(), model_cache=model_cache, request_timeout_s=DEADLINE_S,
                retry_after_s=1)
    return ServeConfig.model_validate(args)


@pytest.fixture(scope="module")
def api(tmp_path_factory, model_cache):
    import ray
    from ray import serve

    from corpusflow.serve_apps.run_local import start, wait_ready

    work = tmp_path_factory.mktemp("cluster")
    types = node_types()
    with redis_server(work) as redis:
        cluster = LocalCluster(types, work, redis).start()
        try:
            owned = {t: cluster.add_node(t) for t in ("cpu_worker", "a10g_worker", "h100_worker")}
            url = start(settings(types, model_cache), api_key=KEY, address=cluster.address, proxy_location="HeadOnly")
            wait_ready(url, 240)
            yield url, cluster, owned, serve
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                cluster.shutdown()


def replica_node(deployment: str) -> str:
    """The node id of a live replica of ``deployment``."""
    import ray

    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith(f"SERVE_REPLICA::corpusflow#{deployment}#"):
            try:
                actor = ray.get_actor(a["name"], namespace="serve")
                return ray.get(actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()), timeout=10)
            except (ray.exceptions.RayActorError, ValueError):
                continue
    raise LookupError(f"no live replica of {deployment}")


def accelerator_of(node_id: str) -> Optional[str]:
    import ray

    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return next((k.split(":", 1)[1] for k in node["Resources"] if k.startswith("accelerator_type:")), None)


def judge(r: requests.Response) -> Optional[str]:
    if r.status_code not in ALLOWED:
        return f"{r.status_code}: {r.text[:200]}"
    if r.status_code in (429, 503) and not r.headers.get("Retry-After"):
        return f"{r.status_code} without Retry-After: {r.text[:200]}"
    return None


def rate(answers: list[tuple[float, float, int]], start: float, end: float) -> float:
    """200s answered per second between ``start`` and ``end``."""
    return sum(1 for _, done, status in answers if status == 200 and start <= done < end) / (end - start)


def test_the_api_keeps_answering_while_the_gcs_is_killed_and_restarted(api, tmp_path):
    import ray

    url, cluster, _, serve = api
    audio = make_audio(tmp_path / "speech.wav", seconds=2).read_bytes()
    answers: list[tuple[float, float, int]] = []
    stop = threading.Event()
    statuses, problems, threads = start_clients(url, audio, CLIENTS, stop, DEADLINE_S + 10, judge, answers)
    try:
        time.sleep(WARMUP_S)
        # HTTP clients hold no Ray connection, and neither may this test while the GCS is down: a driver's
        # log and error threads poll the GCS without pause (about a core between them), which on these
        # two cores starves the replicas Ray runs at nice 15 and stops every answer. On a cluster the
        # driver is elsewhere, or there is none (`serve deploy`).
        ray.shutdown()
        down = time.monotonic()
        cluster.head.kill_gcs_server()
        time.sleep(WINDOW_S)
        cluster.head.start_gcs_server()
        up = time.monotonic()
        time.sleep(WINDOW_S)
        ray.init(address=cluster.address)
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE_S + 15)
    assert not any(t.is_alive() for t in threads), "a client hung past the deadline"
    while_down: dict[int, int] = {}
    for _, done, s in answers:
        if down <= done < up:
            while_down[s] = while_down.get(s, 0) + 1
    print(f"\nGCS kill: {CLIENTS} clients; answers while the GCS was down {while_down}; all {dict(statuses)}; "
          f"200/s while down {rate(answers, down, up):.2f}, after {rate(answers, up, up + WINDOW_S):.2f}")
    assert not problems, problems[:5]
    assert set(statuses) <= ALLOWED
    assert while_down.get(200, 0) > 0, f"no answer while the GCS was down: {while_down}"
    assert serve.status().applications["corpusflow"].status == "RUNNING"
    r = requests.post(f"{url}/v1/transcribe", files={"file": ("speech.wav", audio)}, headers={"X-API-Key": KEY},
                      timeout=DEADLINE_S + 10)
    assert r.status_code == 200, r.text


def test_a_dead_gpu_node_gives_clean_answers_and_its_replica_comes_back_on_a_new_node(api, tmp_path):
    url, cluster, owned, serve = api
    a10g_node = owned["a10g_worker"].node_id
    assert replica_node("asr") == a10g_node
    assert replica_node("vlm") == owned["h100_worker"].node_id
    audio = make_audio(tmp_path / "speech.wav", seconds=2).read_bytes()

    answers: list[tuple[float, float, int]] = []
    stop = threading.Event()
    statuses, problems, threads = start_clients(url, audio, CLIENTS, stop, DEADLINE_S + 10, judge, answers)
    t0 = time.monotonic()
    try:
        time.sleep(WARMUP_S + WINDOW_S)
        killed = time.monotonic()
        cluster.kill_node(owned["a10g_worker"])
        before = dict(statuses)
        recovered = None
        while recovered is None:
            assert time.monotonic() - killed < RECOVERY_S, f"no 200 within {RECOVERY_S} s of the kill: {dict(statuses)}"
            time.sleep(1)
            recovered = min((done for sent, done, s in list(answers) if s == 200 and sent > killed), default=None)
        during = {s: n - before.get(s, 0) for s, n in statuses.items()}
        # requests queued while the stage had no replica end by their deadline; then a fresh window, twice as
        # long as the one before: answers come in bursts of one ASR batch, a few per window
        time.sleep(DEADLINE_S + 2 * WINDOW_S)
        ended = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE_S + 15)
    assert not any(t.is_alive() for t in threads), "a client hung past the deadline"

    pre, post = rate(answers, t0 + WARMUP_S, killed), rate(answers, ended - 2 * WINDOW_S, ended)
    gone = rate(answers, killed, recovered)
    print(f"\nnode kill: {CLIENTS} clients; before the kill {before}, from the kill to the first 200 of a request "
          f"sent after it {during} ({recovered - killed:.1f} s); 200/s before {pre:.2f}, while gone {gone:.2f}, "
          f"from {DEADLINE_S} s after recovery {post:.2f}; all answers {dict(statuses)}")
    assert not problems, problems[:5]
    assert set(statuses) <= ALLOWED
    new = replica_node("asr")
    assert new != a10g_node and accelerator_of(new) == "A10G"
    assert pre > 0, f"no 200 in the {WINDOW_S} s before the kill: {before}"
    assert post >= 0.6 * pre, f"throughput {post:.2f}/s after the kill, {pre:.2f}/s before"
