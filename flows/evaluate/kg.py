"""``corpusflow eval kg OUT``: a reference-free score of each video's summary and keyframes against its own timeline.

Our reconstruction of the seed paper's knowledge-graph evaluation, whose algorithm text we do not have:
the idea (term graphs with NetworkX, force-directed layout, Dijkstra) is theirs, every definition below
is ours. For corpora without ground truth, the asset's own transcript (``timeline``, source asr) is
taken as what the video is about:

- the **timeline graph**: content terms of the transcript, linked when they occur within
  :data:`WINDOW` terms of each other (edge weight = co-occurrences), each term with the times it was said;
- **coverage**: share of the timeline graph's central terms (top :data:`CENTRAL` by PageRank) that the
  summary mentions;
- **grounding**: share of the summary's terms found in the timeline graph (a hallucination proxy: a
  term the video never says is unsupported, though a VLM may legitimately name what it only saw);
- **coherence**: mean over consecutive keyframes (in time order) of ``1 / (1 + d)``, ``d`` the shortest
  weighted path (Dijkstra, length ``1 / weight``) between their captions' terms in the timeline graph
  (0 where either caption has no term of the timeline);
- **temporal consistency**: share of keyframe pairs whose captions' terms were said in the same order
  as the keyframes' times (a caption's time: the median time its terms were said nearest the keyframe).

One row per video with a summary in ``OUT/eval_kg``; ``OUT/eval_kg.html`` draws each video's graphs
force-directed (spring layout). Terms are English-centred (Latin-script words, an English stop list).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

WINDOW = 8     # terms apart that still count as said together
CENTRAL = 15   # central terms of the timeline that a summary should cover

ROWS = pa.schema([
    pa.field("asset_id", pa.string()), pa.field("uri", pa.string()), pa.field("timeline_terms", pa.int64()),
    pa.field("summary_terms", pa.int64()), pa.field("keyframes", pa.int64()), pa.field("coverage", pa.float64()),
    pa.field("grounding", pa.float64()), pa.field("coherence", pa.float64()),
    pa.field("temporal_consistency", pa.float64()),
])

_WORD = re.compile(r"[^\W\d_][^\W_]*(?:[-'][^\W_]+)*")
_STOP = frozenset("""a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just let me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves one two three four five six seven eight nine ten first
next last many much every here there thing things way yes okay ok like get got go going gone make made see seen seem
shows show shown video frame frames image scene part""".split())


def _stem(word: str) -> str:
    """One common English ending removed, so 'released'/'release' and 'samples'/'sample' meet."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[:-len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """Content terms of a text, in order: lower-cased words of three letters or more, stop words dropped, stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOP]


@dataclass
class AssetGraphs:
    timeline: "object"        # networkx.Graph of transcript terms (attribute 'times': list of seconds)
    summary: "object"         # networkx.Graph of summary terms
    keyframes: list[tuple[float, list[str]]]
    central: list[str]


def build(segments: list[tuple[float, float, str]], summary: str, keyframes: list[tuple[float, str]]) -> AssetGraphs:
    import networkx as nx

    tg = nx.Graph()
    said: list[tuple[str, float]] = []
    for start, end, text in segments:
        ts = terms(text)
        for k, term in enumerate(ts):  # spread a segment's terms over its span
            said.append((term, start + (end - start) * (k + 0.5) / max(1, len(ts))))
    for term, t in said:
        if term not in tg:
            tg.add_node(term, times=[])
        tg.nodes[term]["times"].append(t)
    for i, (a, _) in enumerate(said):
        for b, _ in said[i + 1:i + 1 + WINDOW]:
            if a != b:
                w = tg.edges[a, b]["weight"] + 1 if tg.has_edge(a, b) else 1
                tg.add_edge(a, b, weight=w)
    sg = nx.Graph()
    for sentence in re.split(r"(?<=[.!?])\s+", summary):
        ts = terms(sentence)
        sg.add_nodes_from(ts)
        sg.add_edges_from((a, b) for a, b in itertools.combinations(dict.fromkeys(ts), 2))
    rank = nx.pagerank(tg, weight="weight") if tg.number_of_edges() else {n: 1.0 for n in tg}
    central = sorted(rank, key=lambda n: (-rank[n], n))[:CENTRAL]
    kfs = sorted((float(t), terms(caption)) for t, caption in keyframes)
    return AssetGraphs(tg, sg, kfs, central)


def _nearest_time(times: list[float], t: float) -> float:
    return min(times, key=lambda x: abs(x - t))


def scores(g: AssetGraphs) -> dict[str, Optional[float]]:
    """Coverage, grounding, coherence and temporal consistency of one asset (None where undefined)."""
    import networkx as nx

    tg, summary_terms = g.timeline, set(g.summary.nodes)
    coverage = sum(t in summary_terms for t in g.central) / len(g.central) if g.central else None
    grounding = sum(t in tg for t in summary_terms) / len(summary_terms) if summary_terms else None
    known = [(t, [c for c in cs if c in tg]) for t, cs in g.keyframes]
    coherence = None
    if len(known) >= 2:
        length = {e: 1.0 / tg.edges[e]["weight"] for e in tg.edges}
        nx.set_edge_attributes(tg, length, "length")
        closeness = []
        for (_, a), (_, b) in zip(known, known[1:]):
            if not a or not b:
                closeness.append(0.0)
                continue
            dist = nx.multi_source_dijkstra_path_length(tg, set(a), weight="length")
            d = min((dist[x] for x in b if x in dist), default=np.inf)
            closeness.append(float(1.0 / (1.0 + d)))
        coherence = float(np.mean(closeness))
    placed = [(t, float(np.median([_nearest_time(tg.nodes[c]["times"], t) for c in cs]))) for t, cs in known if cs]
    pairs = [(a, b) for a, b in itertools.combinations(placed, 2) if a[0] != b[0] and a[1] != b[1]]
    temporal = (sum((a[0] < b[0]) == (a[1] < b[1]) for a, b in pairs) / len(pairs)) if pairs else None
    return {"coverage": coverage, "grounding": grounding, "coherence": coherence, "temporal_consistency": temporal}


def evaluate(out: str) -> tuple[pa.Table, dict[str, AssetGraphs]]:
    """One row per video with a summary in the job's tables under ``out``; the graphs, by asset."""
    from corpusflow.flows.tables import read_table

    assets = {r["asset_id"]: r["uri"] for r in read_table(out, "assets", ["asset_id", "uri", "status"]).to_pylist()
              if r["status"] == "ok"}
    summaries = {r["asset_id"]: r["summary"] for r in read_table(out, "summaries", ["asset_id", "summary"]).to_pylist()
                 if r["asset_id"] in assets}
    segments: dict[str, list] = {a: [] for a in summaries}
    keyframes: dict[str, list] = {a: [] for a in summaries}
    for r in read_table(out, "timeline", ["asset_id", "t_start", "t_end", "source", "detail", "text"]).to_pylist():
        if r["asset_id"] not in summaries:
            continue
        if (r["source"], r["detail"]) == ("asr", "segment"):
            segments[r["asset_id"]].append((r["t_start"], r["t_end"], r["text"]))
        elif (r["source"], r["detail"]) == ("vlm", "keyframe"):
            keyframes[r["asset_id"]].append((r["t_start"], r["text"]))
    rows, graphs = [], {}
    for aid in sorted(summaries, key=lambda a: assets[a]):
        g = build(sorted(segments[aid]), summaries[aid], keyframes[aid])
        graphs[aid] = g
        rows.append({"asset_id": aid, "uri": assets[aid], "timeline_terms": g.timeline.number_of_nodes(),
                     "summary_terms": g.summary.number_of_nodes(), "keyframes": len(g.keyframes), **scores(g)})
    return pa.Table.from_pylist(rows, schema=ROWS), graphs


def picture(g: AssetGraphs, title: str) -> str:
    """The timeline graph drawn force-directed (spring layout); summary terms green, central terms the summary
    missed orange, other transcript terms grey, summary terms the video never says red (set apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from corpusflow.flows.evaluate.output import svg

    tg, said = g.timeline, set(g.summary.nodes)
    keep = sorted(tg.nodes, key=lambda n: -tg.degree(n, weight="weight"))[:60]  # a readable picture
    shown = nx.Graph(tg.subgraph(keep))
    unsupported = sorted(said - set(tg.nodes))[:15]
    shown.add_nodes_from(unsupported)
    pos = nx.spring_layout(shown, weight="weight", seed=0)
    central = set(g.central)
    colour = ["#d62728" if n in unsupported else "#2ca02c" if n in said else "#ff7f0e" if n in central else "#bbbbbb"
              for n in shown.nodes]
    fig, ax = plt.subplots(figsize=(7, 5))
    nx.draw_networkx_edges(shown, pos, ax=ax, alpha=0.25, width=0.6)
    nx.draw_networkx_nodes(shown, pos, ax=ax, node_color=colour, node_size=60)
    nx.draw_networkx_labels(shown, pos, ax=ax, font_size=6)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return svg(fig)
