"""Streaming benchmark: latency and memory over a long live stream, sustained FPS, and recall of
evicted memory (Mosaic-style clusters vs the ReKV-style frame baseline).

Runs on the H200 with Qwen2.5-VL-7B's architecture and dummy bf16 weights (``_from_config`` under
``torch.device("cuda")``; our byte-level tokenizer), or on CPU with the tiny-random model
(``--cpu-smoke``). Contenders over the same synthetic stream (scenes of alike frames, planted
distinctive frames), one chunk per stream second, processed as fast as possible:

- ``full``: the HF model with its own DynamicCache, every token kept (until out of memory);
- ``sliding``: the last W seconds re-encoded from scratch every second (vision tower and prefill),
  the usual way to bound a context without a streaming cache;
- ``ours``: :class:`corpusflow.actors.streaming.StreamSession` (sinks + W s of vision + recent text, recall).

Per stream second: latency of the whole step (chunk prefill + commentary) and per generated token,
device memory. Sustained FPS: the highest fps whose p95 step latency stays under one second.
Recall: with dummy weights a text question carries no meaning, so recall is measured with the
question's query set to what a question about a planted frame would point at — that frame's mean
key, centred on the stream's mean key — and both stores answer it from the same evicted memory;
latency is measured for that retrieval (cold and warm device LRU) and for a full ``ask``.

Results: ``--out``/streaming_bench.json (saved while running; a later run into the same folder
replaces only the parts it runs, so each part can be its own command) and PNG plots of all
contenders in the file.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from corpusflow.actors.streaming import StreamConfig, StreamSession
from corpusflow.actors.streaming.layout import TEXT
from corpusflow.actors.streaming.recall import ClusterRecall, FrameRecall
from corpusflow.actors.streaming.session import CHUNK_PROMPT
from corpusflow.actors.streaming.tokens import PieceEncoder

QWEN25_VL_7B_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                         max_position_embeddings=128000, max_window_layers=28)
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584)


# -- model and stream ------------------------------------------------------------------------------

def load_model(kind: str, device: str, work: Path):
    """(model, processor): ``tiny`` (tiny-random) or ``7b`` (Qwen2.5-VL-7B architecture, dummy bf16)."""
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from corpusflow.actors.streaming import load_streaming_model
    from corpusflow.actors.streaming.attention import use_stream_attention
    from corpusflow.actors.models.tiny_qwen import _write_tokenizer, config_dict

    if kind == "tiny":
        return load_streaming_model("tiny-random", str(work / "models"), device)
    folder = work / "qwen7b-tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_dict(_write_tokenizer(folder))
    cfg.update(QWEN25_VL_7B_TEXT)
    cfg["rope_scaling"]["mrope_section"] = [16, 24, 24]
    cfg["vision_config"].update(QWEN25_VL_7B_VISION)
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            AutoConfig.from_pretrained(folder), dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    use_stream_attention(model)
    return model, AutoProcessor.from_pretrained(folder)


class SyntheticStream:
    """Scenes of alike frames (a colour field with drifting noise), a new scene every ``scene_s``
    seconds, and planted distinctive frames (a scene-independent pattern) at chosen seconds."""

    def __init__(self, side: int, fps: float, planted: list[int], scene_s: int = 20, seed: int = 0):
        self.side, self.k, self.planted, self.scene_s = side, max(1, math.ceil(fps)), set(planted), scene_s
        self.rng = np.random.default_rng(seed)

    def frames(self, t: int) -> np.ndarray:
        rng = np.random.default_rng([t // self.scene_s, 7])
        colour = rng.integers(0, 256, 3)
        base = np.broadcast_to(colour, (self.k, self.side, self.side, 3)).astype(np.int16)
        noise = self.rng.integers(-12, 13, base.shape)
        if t in self.planted:
            pattern = np.random.default_rng([t, 11]).integers(0, 256, (1, 8, 8, 3))
            big = np.kron(pattern, np.ones((1, self.side // 8, self.side // 8, 1), dtype=np.int64))
            base = np.broadcast_to(big, base.shape).astype(np.int16)
        return np.clip(base + noise, 0, 255).astype(np.uint8)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_bytes(device: str, fallback: int) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else fallback


# -- contenders ------------------------------------------------------------------------------------

class Recorder:
    """One contender's rows; saved every ``every_s`` of wall time, so a command killed at its time
    limit keeps what it measured. ``add`` says whether the contender may go on."""

    def __init__(self, max_wall: float, save=lambda: None, every_s: float = 20.0):
        self.rows: list[dict] = []
        self.max_wall, self.save, self.every_s = max_wall, save, every_s
        self.start = self.saved = time.perf_counter()

    def add(self, row: dict) -> bool:
        self.rows.append(row)
        now = time.perf_counter()
        if now - self.saved > self.every_s:
            self.save()
            self.saved = now
        return now - self.start <= self.max_wall


class Greedy:
    """Greedy commentary that never emits vision markers (shared by the HF-cache contenders)."""

    def __init__(self, model, encoder: PieceEncoder, device: str, max_tokens: int):
        self.model, self.encoder, self.device, self.max_tokens = model, encoder, device, max_tokens
        self.banned = torch.tensor(encoder.tokens.vision_only, device=device)
        self.close = [encoder.tokens.im_end] + encoder.processor.tokenizer.encode("\n", add_special_tokens=False)

    def run(self, ids: torch.Tensor, pos: torch.Tensor, cache, vision: dict, decode: bool = True) -> tuple[list[int], int]:
        """Prefill ``ids`` at ``pos`` (3, n) into ``cache``, then decode greedily; every decided
        token ends up in the cache. Returns the tokens and the next free position."""
        dev = {k: v.to(self.device) for k, v in vision.items() if k != "second_per_grid_ts"}
        out = self.model(input_ids=ids.to(self.device), position_ids=pos.view(3, 1, -1).to(self.device),
                         past_key_values=cache, use_cache=True, logits_to_keep=1, **dev)
        nxt, said = int(pos[0, -1]) + 1, []
        while decode and len(said) < self.max_tokens:
            logits = out.logits[0, -1].clone()
            logits[self.banned] = float("-inf")
            token = int(logits.argmax())
            if token == self.encoder.tokens.im_end:
                break
            said.append(token)
            p = torch.full((3, 1, 1), nxt, dtype=torch.long, device=self.device)
            out = self.model(input_ids=torch.tensor([[token]], device=self.device), position_ids=p,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt += 1
        return said, nxt


def _row(t: int, latency: float, tokens: int, device: str, cache_bytes: int, context: int) -> dict:
    return {"t": t, "latency_s": latency, "tokens": tokens, "per_token_s": latency / (tokens + 1),
            "cache_bytes": cache_bytes, "device_bytes": device_bytes(device, cache_bytes), "context_tokens": context}


def _cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor))


def run_full(model, processor, cfg: StreamConfig, stream: SyntheticStream, seconds: int, device: str,
             rec: Recorder) -> dict:
    """Every token kept in the HF DynamicCache; positions as the model assigns them, never reset."""
    from transformers import DynamicCache

    enc = PieceEncoder(model, processor, cfg.fps, cfg.frame_pixels)
    greedy = Greedy(model, enc, device, cfg.commentary_tokens)
    cache = DynamicCache(config=model.config.get_text_config())
    oom = None
    with torch.inference_mode():
        system = enc.text(f"<|im_start|>system\n{cfg.system_prompt}<|im_end|>\n")
        _, nxt = greedy.run(system.input_ids, system.local, cache, {}, decode=False)
        pending: list[int] = []
        for t in range(seconds):
            t0 = time.perf_counter()
            try:
                piece = enc.chunk(stream.frames(t), pending, CHUNK_PROMPT)
                said, nxt = greedy.run(piece.input_ids, piece.local + nxt, cache, piece.vision)
                sync(device)
            except torch.cuda.OutOfMemoryError:
                oom = t
                break
            pending = greedy.close
            if not rec.add(_row(t, time.perf_counter() - t0, len(said), device, _cache_bytes(cache),
                                cache.get_seq_length())):
                break
    del cache
    return {"oom_at_s": oom}


def run_sliding(model, processor, cfg: StreamConfig, stream: SyntheticStream, seconds: int, device: str,
                rec: Recorder) -> dict:
    """Each second: the system prompt and the last W seconds (frames and their commentary) are
    encoded from scratch — vision tower and prefill — then the commentary is decoded."""
    from transformers import DynamicCache

    enc = PieceEncoder(model, processor, cfg.fps, cfg.frame_pixels)
    greedy = Greedy(model, enc, device, cfg.commentary_tokens)
    system = enc.text(f"<|im_start|>system\n{cfg.system_prompt}<|im_end|>\n")
    window: deque[tuple] = deque(maxlen=max(1, math.ceil(cfg.vision_window_s)))
    with torch.inference_mode():
        for t in range(seconds):
            t0 = time.perf_counter()
            piece = enc.chunk(stream.frames(t), [], CHUNK_PROMPT)
            window.append([piece, []])
            ids = [system.input_ids[0]]
            for i, (p, said) in enumerate(window):
                ids += [p.input_ids[0], torch.tensor(said + (greedy.close if i < len(window) - 1 else []),
                                                     dtype=torch.long)]
            ids = torch.cat(ids).view(1, -1)
            types = (ids == processor.video_token_id).int() * 2
            videos = [p.vision for p, _ in window]
            grid = torch.cat([v["video_grid_thw"] for v in videos])
            pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid,
                                                second_per_grid_ts=torch.cat([v["second_per_grid_ts"] for v in videos]))
            vision = {"pixel_values_videos": torch.cat([v["pixel_values_videos"] for v in videos]), "video_grid_thw": grid}
            cache = DynamicCache(config=model.config.get_text_config())
            said, _ = greedy.run(ids, pos[:, 0], cache, vision)
            window[-1][1] = said
            sync(device)
            row = _row(t, time.perf_counter() - t0, len(said), device, _cache_bytes(cache), cache.get_seq_length())
            del cache
            if not rec.add(row):
                break
    return {}


class Tee:
    """Feeds one stream's evicted memory to both recall stores (one stream, two strategies)."""

    def __init__(self, *stores: FrameRecall):
        self.stores = stores

    def add_frame(self, *args) -> None:
        for s in self.stores:
            s.add_frame(*args)

    def add_text(self, *args) -> None:
        for s in self.stores:
            s.add_text(*args)

    def device_bytes(self) -> int:
        return sum(s.device_bytes() for s in self.stores)

    def host_bytes(self) -> int:
        return sum(s.host_bytes() for s in self.stores)

    def host_reserved_bytes(self) -> int:
        return sum(s.host_reserved_bytes() for s in self.stores)

    @property
    def units(self) -> list:
        return self.stores[0].units


def run_ours(model, processor, cfg: StreamConfig, stream: SyntheticStream, seconds: int, device: str,
             rec: Recorder, both_stores: bool = False) -> StreamSession:
    session = StreamSession(model, processor, cfg)
    if both_stores:
        session.recall = Tee(session.recall, _store("cluster", cfg, model, device))
    for t in range(seconds):
        t0 = time.perf_counter()
        said = session.tokens_generated
        session.push_chunk(stream.frames(t), float(t))
        sync(device)
        report = session.memory_report()
        if not rec.add({**_row(t, time.perf_counter() - t0, session.tokens_generated - said, device,
                                session.memory_bytes(), report["window_tokens"]),
                        "host_bytes": report["recall_host_bytes"],
                        "host_reserved_bytes": report["recall_host_reserved_bytes"],
                        "position": report["next_position"]}):
            break
    return session


def warm_up(model, processor, cfg: StreamConfig, side: int, device: str, seconds: int | None,
            after_full_s: int = 8, limit_s: int = 600) -> int:
    """Run and discard a stream of ``seconds``, or by default until the window is full — vision and
    text windows at their bounds, so every second evicts both — and ``after_full_s`` more. Until
    then each second brings context lengths not seen before (and whatever is cached per shape is
    made for them) and the first evictions; run before the measured stream, minute 1 holds none of
    that. Returns the seconds run."""
    session = StreamSession(model, processor, cfg)
    stream = SyntheticStream(side, cfg.fps, [], seed=1)
    vision_s, full_at, t = math.ceil(cfg.vision_window_s), None, 0
    while t < (limit_s if seconds is None else seconds):
        session.push_chunk(stream.frames(t), float(t))
        t += 1
        if seconds is None and full_at is None and len(session.window_frames()) == vision_s \
                and int((session.window.meta.kind == TEXT).sum()) == cfg.text_window:
            full_at = t
        if full_at is not None and t >= full_at + after_full_s:
            break
    sync(device)
    session.close()
    return t


def _store(kind: str, cfg: StreamConfig, model, device: str) -> FrameRecall:
    common = dict(layers=model.config.get_text_config().num_hidden_layers, device=torch.device(device),
                  token_budget=cfg.recall_tokens, gpu_bytes=cfg.gpu_recall_bytes, host_bytes=cfg.offload_bytes)
    if kind == "frame":
        return FrameRecall(**common)
    return ClusterRecall(**common, boundary=cfg.cluster_boundary, max_frames=cfg.cluster_max_frames)


# -- sustained fps and recall ----------------------------------------------------------------------

def sustained_fps(model, processor, base: StreamConfig, side: int, fps_list: list[float], seconds: int,
                  device: str) -> dict:
    """p50/p95 step latency at each fps once the window is full; real time = p95 under 1 s."""
    out = {}
    for fps in fps_list:
        cfg = base.model_copy(update={"fps": fps, "recall": "none"})
        rec = Recorder(float("inf"))
        run_ours(model, processor, cfg, SyntheticStream(side, fps, []), seconds, device, rec).close()
        steady = [r["latency_s"] for r in rec.rows[min(len(rec.rows) - 1, int(cfg.vision_window_s) + 2):]]
        out[str(fps)] = {"p50_s": float(np.percentile(steady, 50)), "p95_s": float(np.percentile(steady, 95)),
                         "realtime": float(np.percentile(steady, 95)) <= 1.0}
    real = [float(f) for f, r in out.items() if r["realtime"]]
    return {"by_fps": out, "sustained_fps": max(real) if real else 0.0}


def recall_bench(model, processor, cfg: StreamConfig, side: int, seconds: int, planted: list[int], device: str,
                 repeats: int = 3) -> dict:
    """Planted-frame recall and retrieval latency, cluster vs frame, on one stream's evicted memory."""
    cfg = cfg.model_copy(update={"recall": "frame"})
    session = run_ours(model, processor, cfg, SyntheticStream(side, cfg.fps, planted), seconds, device,
                       Recorder(float("inf")), both_stores=True)
    frame_store, cluster_store = session.recall.stores
    layers = frame_store.layers
    centre = frame_store.representatives().mean(0)
    by_time = {u.frames[0]: u for u in frame_store.units}
    asked = [p for p in planted if float(p) in by_time]
    out: dict = {"planted_evicted": asked, "units": {"frame": len(frame_store.units), "cluster": len(cluster_store.units)}}
    for name, store in (("frame", frame_store), ("cluster", cluster_store)):
        hits, cold, warm = 0, [], []
        for p in asked:
            query = by_time[float(p)].key_sum.to(centre.dtype) - centre  # (layers, kv_heads, head_dim)
            for rep in range(repeats):
                if rep == 0:
                    store.drop_device_copies()
                sync(device)
                t0 = time.perf_counter()
                for layer in range(layers):
                    got = store.fetch(layer, store.select(layer, query[layer]))
                    if rep == 0:
                        hits += float(p) in store.frames_of(got.units if got else [])
                sync(device)
                (cold if rep == 0 else warm).append(time.perf_counter() - t0)
        session.recall = store
        asks = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            session.ask("What was the unusual pattern on screen, and when?")
            sync(device)
            asks.append(time.perf_counter() - t0)
        out[name] = {"recall": hits / max(1, len(asked) * layers), "retrieve_cold_s": float(np.mean(cold or [0])),
                     "retrieve_warm_s": float(np.mean(warm or [0])), "ask_s": float(np.median(asks)),
                     "copies": store.copies, "host_bytes": store.host_bytes()}
    out["speedup_cold"] = out["frame"]["retrieve_cold_s"] / max(out["cluster"]["retrieve_cold_s"], 1e-9)
    out["speedup_ask"] = out["frame"]["ask_s"] / max(out["cluster"]["ask_s"], 1e-9)
    session.close()
    return out


# -- output ----------------------------------------------------------------------------------------

def plot(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, label, scale in (("latency_s", "step latency (s)", 1), ("device_bytes", "device memory (GiB)", 2**30),
                              ("per_token_s", "latency per generated token (s)", 1)):
        fig, ax = plt.subplots(figsize=(8, 4))
        for mode, res in results["modes"].items():
            rows = res["rows"]
            ax.plot([r["t"] / 60 for r in rows], [r[key] / scale for r in rows], label=mode, lw=0.8)
            if res.get("oom_at_s") is not None:
                ax.axvline(res["oom_at_s"] / 60, color="red", ls="--", lw=0.8)
        ax.set_xlabel("stream time (min)")
        ax.set_ylabel(label)
        ax.legend()
        ax.set_title(f"{results['config']['model']} · {results['config']['fps']} fps · {label}")
        path = out / f"streaming_{key}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def summarize(results: dict) -> dict:
    """Minute-1 vs last-minute latency and memory per contender (the issue's flatness criteria)."""
    out = {}
    for mode, res in results["modes"].items():
        rows = res["rows"]
        if not rows:
            continue
        first = [r for r in rows if 0 <= r["t"] < 60] or rows[:1]
        last_t = rows[-1]["t"]
        last = [r for r in rows if r["t"] > last_t - 60]
        def mean(rs: list[dict], k: str) -> float:
            return float(np.mean([r[k] for r in rs]))
        out[mode] = {"seconds": len(rows), "oom_at_s": res.get("oom_at_s"),
                     "minute1_latency_s": mean(first, "latency_s"), "last_minute_latency_s": mean(last, "latency_s"),
                     "latency_ratio": mean(last, "latency_s") / max(mean(first, "latency_s"), 1e-9),
                     "minute1_device_bytes": mean(first, "device_bytes"), "last_device_bytes": last[-1]["device_bytes"],
                     "max_cache_bytes": max(r["cache_bytes"] for r in rows)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny-random model on CPU, small frames and short sweeps (explicit flags still win)")
    ap.add_argument("--minutes", type=float, default=60.0, help="stream length for the latency/memory contenders")
    ap.add_argument("--modes", default="ours,sliding,full")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--side", type=int, help="frame side in pixels, frames are square (448; smoke 56)")
    ap.add_argument("--commentary-tokens", type=int, help="max commentary tokens per second (20; smoke 4)")
    ap.add_argument("--max-wall-s", type=float, default=480.0, help="wall-clock cap per contender")
    ap.add_argument("--fps-sweep", help="fps values for the sustained-fps sweep (2,4,8; smoke 2,4)")
    ap.add_argument("--fps-seconds", type=int, help="stream seconds per sweep point (60; smoke 25)")
    ap.add_argument("--recall-minutes", type=float, help="stream length for the recall part (10; smoke 2)")
    ap.add_argument("--recall-tokens", type=int, help="tokens recalled per layer and question (4096; smoke 48)")
    ap.add_argument("--warmup-s", type=int,
                    help="stream seconds run and discarded first, so minute 1 holds no one-off costs "
                         "(default: until the window is full and 8 s more; 0: none)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: modes,fps,recall")
    ap.add_argument("--out", default="out/streaming_bench", help="folder for streaming_bench.json and plots")
    args = ap.parse_args()
    defaults = dict(side=56, commentary_tokens=4, fps_sweep="2,4", fps_seconds=25, recall_minutes=2.0,
                    recall_tokens=48) if args.cpu_smoke else \
        dict(side=448, commentary_tokens=20, fps_sweep="2,4,8", fps_seconds=60, recall_minutes=10.0, recall_tokens=4096)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    device = "cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_model("tiny" if device == "cpu" else "7b", device, out)
    cfg = StreamConfig(fps=args.fps, frame_pixels=args.side * args.side, commentary_tokens=args.commentary_tokens,
                       recall_tokens=args.recall_tokens)
    seconds = int(args.minutes * 60)
    planted = list(range(37, max(38, int(args.recall_minutes * 60) - 30), 53))  # evicted before the questions
    path = out / "streaming_bench.json"
    results = json.loads(path.read_text()) if path.exists() else {"modes": {}}  # parts of earlier runs stay
    results["config"] = {"model": "tiny-random" if device == "cpu" else "qwen2.5-vl-7b (dummy bf16)",
                         "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                         "fps": args.fps, "side": args.side, "minutes": args.minutes, "stream": cfg.model_dump()}
    skip = set(filter(None, args.skip.split(",")))
    if args.warmup_s != 0:
        results["config"]["warmup_s"] = warm_up(model, processor, cfg, args.side, device, args.warmup_s)
        print("warm-up", results["config"]["warmup_s"], "s", flush=True)
    if "modes" not in skip:
        for mode in filter(None, args.modes.split(",")):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            stream = SyntheticStream(args.side, args.fps, planted)
            rec = Recorder(args.max_wall_s, lambda: path.write_text(json.dumps(results, indent=1)))
            results["modes"][mode] = {"rows": rec.rows}
            if mode == "ours":
                run_ours(model, processor, cfg, stream, seconds, device, rec).close()
            else:
                extra = {"full": run_full, "sliding": run_sliding}[mode](model, processor, cfg, stream, seconds,
                                                                          device, rec)
                results["modes"][mode].update(extra)
            results["summary"] = summarize(results)
            path.write_text(json.dumps(results, indent=1))
            print(mode, json.dumps(results["summary"][mode]), flush=True)
    if "fps" not in skip:
        results["fps"] = sustained_fps(model, processor, cfg, args.side,
                                       [float(f) for f in args.fps_sweep.split(",")], args.fps_seconds, device)
        path.write_text(json.dumps(results, indent=1))
        print("fps", json.dumps(results["fps"]), flush=True)
    if "recall" not in skip:
        results["recall"] = recall_bench(model, processor, cfg, args.side, int(args.recall_minutes * 60), planted,
                                         device)
        path.write_text(json.dumps(results, indent=1))
        print("recall", json.dumps(results["recall"]), flush=True)
    results["plots"] = plot(results, out) if results["modes"] else []
    path.write_text(json.dumps(results, indent=1))
    print("wrote", path, *results["plots"])


if __name__ == "__main__":
    main()
