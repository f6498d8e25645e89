"""CPU-seconds per video-hour of decode and frames, warm, and what inside decode they go to.

    python benchmarks/decode_cpu.py [--videos 2] [--minutes 5] [--work DIR] [--json out.json]

``gpu_throughput.py --decode-modes`` times each file in a fresh process: that counts model loading and
imports once per file, and many processes on as many cores contend. This times the stages as a
long-lived Ray worker runs them: one process, the stage objects built once and a first pass over each file
untimed (models loaded), then the CPU time (all threads) of ``decode`` and ``frames`` per file, in both
seek modes. Two probes split decode: the audio track's decode and resampling to 16 kHz alone, and the
speech detector (Silero VAD) over those same samples. The corpus is ``benchmarks/corpus.py``'s lecture kind.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _cpu() -> float:
    return time.process_time()


def _audio_16k(uri: str) -> np.ndarray:
    """The file's first audio track as 16 kHz mono float32, as decode's demux pass resamples it."""
    import av

    from corpusflow.actors.speech import SAMPLE_RATE

    chunks = []
    with av.open(uri) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            chunks.extend(out.to_ndarray()[0] for out in resampler.resample(frame))
    return np.concatenate(chunks)


def measure(corpus: list[str], work: Path, seek: str) -> dict:
    from corpusflow.actors.decode import DecodeMedia
    from corpusflow.actors.frames import SampleFrames
    from corpusflow.actors.speech import SpeechDetector
    from corpusflow.contracts.config import JobConfig

    config = JobConfig.build(corpus=str(work / "corpus_lecture"), out=str(work / "out"), models="tiny-random",
                             **{"video.dedup_threshold": 0.02, "video.seek": seek})
    decode, frames, detector = DecodeMedia(config), SampleFrames(config), SpeechDetector(config)
    cpu = {"decode": 0.0, "frames": 0.0, "audio decode + resample (inside decode)": 0.0,
           "speech detection (inside decode)": 0.0}
    hours = 0.0
    for uri in corpus:
        batch = {"uri": np.asarray([uri]), "kind": np.asarray(["video"]), "error_stage": np.asarray([""]),
                 "error": np.asarray([""])}
        frames(decode(batch))  # untimed: models loaded, allocators grown
        t = _cpu()
        decoded = decode(batch)
        cpu["decode"] += _cpu() - t
        t = _cpu()
        sampled = frames(decoded)
        cpu["frames"] += _cpu() - t
        if decoded["error"][0] or sampled["error"][0]:
            raise RuntimeError(f"{uri}: {decoded['error'][0] or sampled['error'][0]}")
        hours += float(decoded["duration_s"][0]) / 3600
        t = _cpu()
        pcm = _audio_16k(uri)
        cpu["audio decode + resample (inside decode)"] += _cpu() - t
        finder = detector.finder()
        t = _cpu()
        finder.feed(pcm)
        finder.finish()
        cpu["speech detection (inside decode)"] += _cpu() - t
    return {"video_h": round(hours, 3), "cpu_s_per_video_h": {k: round(v / hours, 1) for k, v in cpu.items()},
            "decode_and_frames_cpu_s_per_video_h": round((cpu["decode"] + cpu["frames"]) / hours, 1)}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.corpus import make_corpus, speech_clip

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--work", default="/tmp/corpusflow-decode-cpu")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(work / "corpus_lecture", a.videos, a.minutes, speech_clip(work / "speech.wav"), "lecture")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
               "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "videos": a.videos, "minutes": a.minutes,
               "seek": {mode: measure(corpus, work, mode) for mode in ("keyframe", "exact")}}
    for mode, r in results["seek"].items():
        print(f"{mode:8s} decode + frames {r['decode_and_frames_cpu_s_per_video_h']:6.1f} CPU-s per video-hour: "
              + ", ".join(f"{k} {v}" for k, v in r["cpu_s_per_video_h"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
