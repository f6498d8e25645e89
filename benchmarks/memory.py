"""Peak memory of one long media row in decode and in ASR, for this checkout and a baseline checkout.

    python benchmarks/memory.py [--hours 1] [--speech-share 0.2] [--video] [--code DIR] [--work DIR] [--json out.json]

The input is a 16 kHz mono WAV of ``--hours`` hours: pieces of speech (espeak-ng sentences, or a voiced
tone where espeak-ng is missing) between silences, ``--speech-share`` of the time speech. With ``--video``
it is a Matroska file of that sound and a 160×120 H.264 picture at 1 fps that changes with every piece
(what the ASR actors hold of a video row: its speech, and its frames where decode samples them). Each stage
runs in a fresh Python process with the checkout on its path, as a Ray worker would run it: decode
(with whatever stages the checkout fuses into it, speech detection on the main of 2026-11-27), then
ASR on the row decode wrote (tiny-random models: the model weighs ~nothing, the row is what is
measured). Each process first runs a 10-minute file (models load lazily, allocators grow to full
decoder batches), then the long one; per stage it reports the RSS after the warm-up, the peak RSS,
and their difference: what the long row costs. ``--code DIR`` (repeatable) adds another checkout,
e.g. a ``git worktree`` of main, measured on the same file in the same session.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 16000
PIECE_S = 10.0

# Runs inside the checkout under test: only names both the old and the new stage API have.
_CHILD = r'''
import json, pickle, resource, sys, time
import numpy as np

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

stage, cache = sys.argv[1:3]
inputs = sys.argv[3:]  # (uri, rows file) for the warm-up file, then for the long one
from corpusflow.actors import stage_class
from corpusflow.contracts.config import JobConfig
from corpusflow.contracts.registry import STAGES, spec
config = JobConfig(corpus="/unused/corpus", out="/unused/out", models="tiny-random", model_cache=cache)
if stage == "decode":
    # A baseline checkout may still run speech detection as a stage fused into decode's tasks.
    stages = [stage_class(s.cls)(config) for s in STAGES if s.name == "decode" or getattr(s, "fused_into", None) == "decode"]
else:
    stages = [stage_class(spec("asr").cls)(config)]
for uri, rows in zip(inputs[::2], inputs[1::2]):
    warm = rss_mb()  # after the first file: models loaded lazily, allocators and buffers grown
    t0 = time.perf_counter()
    if stage == "decode":
        kind = "video" if uri.endswith(".mkv") else "audio"
        batch = {"uri": np.asarray([uri]), "kind": np.asarray([kind]), "asset_id": np.asarray(["long"]),
                 "error_stage": np.asarray([""]), "error": np.asarray([""])}
    else:
        with open(rows, "rb") as f:
            batch = pickle.load(f)
    for s in stages:
        batch = s(batch)
    seconds = time.perf_counter() - t0
    assert not batch["error"][0], batch["error"][0]
    if stage == "decode":
        with open(rows, "wb") as f:
            pickle.dump(batch, f, protocol=5)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
carried = {k: int(batch[k][0].nbytes) for k in ("pcm", "speech_pcm", "frames") if k in batch}
print(json.dumps({"warm_mb": warm, "peak_mb": peak, "row_mb": peak - warm, "seconds": seconds,
                  "carried_bytes": carried}))
'''


def _pieces(seconds: float) -> list[np.ndarray]:
    """Speech pieces of ``PIECE_S`` seconds: espeak-ng sentences where it is installed, else a voiced tone."""
    from benchmarks.corpus import load_clip, speech_clip

    with tempfile.TemporaryDirectory() as tmp:
        clip = load_clip(speech_clip(Path(tmp) / "clip.wav", seconds=60.0))
    n = int(PIECE_S * SR)
    return [clip[i:i + n] for i in range(0, len(clip) - n + 1, n)]


def _pieces_in_time(hours: float, speech_share: float) -> Iterator[tuple[int, int, np.ndarray]]:
    """(piece number, first sample, block): ``PIECE_S``-second speech pieces spread evenly, silence between them."""
    pieces = _pieces(60.0)
    total = int(hours * 3600 * SR)
    period = int(PIECE_S / speech_share * SR)
    for k, start in enumerate(range(0, total, period)):
        block = np.zeros(min(period, total - start), np.float32)
        piece = pieces[k % len(pieces)][:len(block)]
        block[:len(piece)] = piece
        yield k, start, block


def _mux_sound(out: Any, stream: Any, start: int, block: np.ndarray) -> None:
    import av

    frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
    frame.sample_rate, frame.pts = SR, start
    for packet in stream.encode(frame):
        out.mux(packet)


def make_audio(path: Path, hours: float, speech_share: float) -> Path:
    """A 16 kHz mono WAV: ``PIECE_S``-second speech pieces spread evenly, silence between them."""
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".part.wav")
    with av.open(str(tmp), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SR)
        stream.layout = "mono"
        for _, start, block in _pieces_in_time(hours, speech_share):
            _mux_sound(out, stream, start, block)
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def make_video(path: Path, hours: float, speech_share: float) -> Path:
    """Matroska: :func:`make_audio`'s sound (PCM) and a 160×120 H.264 picture at 1 fps, a new colour per piece."""
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".part.mkv")
    with av.open(str(tmp), "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=1)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        vs.codec_context.options = {"g": "10", "preset": "ultrafast", "crf": "30"}
        stream = out.add_stream("pcm_s16le", rate=SR)
        stream.layout = "mono"
        second = 0
        for k, start, block in _pieces_in_time(hours, speech_share):
            _mux_sound(out, stream, start, block)
            picture = np.full((120, 160, 3), (37 * k % 256, 91 * k % 256, 53 * k % 256), np.uint8)
            while second < (start + len(block)) / SR:
                vf = av.VideoFrame.from_ndarray(picture, format="rgb24")
                vf.pts = second
                for packet in vs.encode(vf):
                    out.mux(packet)
                second += 1
        out.mux(stream.encode(None))
        out.mux(vs.encode(None))
    tmp.rename(path)
    return path


def measure(code: Path, files: list[Path], work: Path, cache: str) -> dict:
    """Decode, then ASR on decode's rows, each in a fresh process running ``code``'s corpusflow: the
    first file warms the process up, the last one is measured."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    rows = [work / f"row-{k}.pkl" for k in range(len(files))]
    args = [str(x) for pair in zip(files, rows) for x in pair]
    got = {}
    for stage in ("decode", "asr"):
        done = subprocess.run([sys.executable, "-c", _CHILD, stage, cache, *args], cwd=code, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{stage} in {code} failed:\n{done.stderr[-3000:]}")
        got[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    for r in rows:
        r.unlink(missing_ok=True)
    return got


def _commit(code: Path) -> str:
    done = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return done.stdout.strip()[:80]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--speech-share", type=float, default=0.2, help="share of the time that is speech")
    p.add_argument("--video", action="store_true", help="a video (speech + 1-fps picture) instead of a WAV")
    p.add_argument("--code", action="append", default=[], help="another checkout to measure (e.g. main)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "corpusflow-memory-bench"))
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    make, suffix = (make_video, "mkv") if a.video else (make_audio, "wav")
    warm_up = make(work / f"warm-up-{a.speech_share:g}.{suffix}", 600 / 3600, a.speech_share)
    audio = make(work / f"long-{a.hours:g}h-{a.speech_share:g}.{suffix}", a.hours, a.speech_share)
    cache = str(work / "models")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
               "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "hours": a.hours, "speech_share": a.speech_share,
               "input": suffix,
               "runs": []}
    for code in [*map(Path, a.code), REPO]:
        got = measure(code.resolve(), [warm_up, audio], work, cache)
        results["runs"].append({"code": str(code), "commit": _commit(code), **got})
        for stage, r in got.items():
            print(f"{_commit(code)[:40]:40s} {stage:6s} warm {r['warm_mb']:7.0f} MB  peak {r['peak_mb']:7.0f} MB  "
                  f"row {r['row_mb']:7.0f} MB  {r['seconds']:6.1f} s  carried {r['carried_bytes']}")
    if len(results["runs"]) > 1:
        base, new = results["runs"][0], results["runs"][-1]
        for stage in ("decode", "asr"):
            ratio = base[stage]["row_mb"] / max(new[stage]["row_mb"], 1.0)
            print(f"{stage}: one row costs {ratio:.1f}x less than in {base['commit'][:40]}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
