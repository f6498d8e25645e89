"""CPU-seconds per video-hour of identify, decode and frames, as a warm worker runs them, split by step.

    python benchmarks/decode_cpu.py [--videos 2] [--minutes 15] [--distinct-minutes 5] [--copies 2]
        [--seek keyframe exact] [--compare GIT_REF] [--repeats 3] [--work DIR] [--json out.json]

``gpu_throughput.py --decode-modes`` times each file in a fresh process: that counts model loading and
imports once per file, and many processes on as many cores contend. This runs the pipeline's own stage
objects (``Identify``, ``DecodeMedia``, ``SampleFrames``) as a long-lived Ray worker does: one process per
run, the stages built once and the first file passed once untimed (models loaded), then every file timed:
CPU time of the process's threads and of any child it waited for, per stage. The corpus is
``benchmarks/corpus.py``'s lecture kind (``--distinct-minutes`` and ``--copies`` as on the GPU lease).

``--compare REF`` runs the stages of the commit REF (``git archive`` into ``--work``) and of this checkout
in turn, ``--repeats`` times each in alternating order, on the same files: the ratio of the medians is
the change, measured in one run. It also compares their outputs file by file (speech chunks and samples,
keyframe and frame times, pixels). One more run of each is sampled by py-spy (when installed); the samples
of the main thread are split into steps (container open, audio decode, resampling, speech detection, frame
seeks and decode, frames to RGB, ...) by the source line they were in, and scaled to that run's CPU time of
each stage (other threads, FFmpeg's and ONNX Runtime's, are reported apart and are a few percent).
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
STAGES = ("identify", "decode", "frames")


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of the children it waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- one run: the stages of one code tree over the corpus (a child process) ------------------------------


def run_stages(corpus: list[str], seek: str, outputs: Path | None) -> dict:
    """CPU-s per video-hour of each stage over ``corpus``, in this process (whichever code tree it imports)."""
    from corpusflow.actors.decode import DecodeMedia
    from corpusflow.actors.frames import SampleFrames
    from corpusflow.actors.identify import Identify
    from corpusflow.contracts.config import JobConfig

    config = JobConfig.build(corpus=str(Path(corpus[0]).parent), out=tempfile.gettempdir(), models="tiny-random",
                             **{"video.dedup_threshold": 0.02, "video.seek": seek})
    stages = {"identify": Identify(config), "decode": DecodeMedia(config), "frames": SampleFrames(config)}

    def rows(uri: str) -> dict[str, np.ndarray]:
        return {"uri": np.asarray([uri]), "bytes": np.asarray([os.path.getsize(uri)]), "error_stage": np.asarray([""]),
                "error": np.asarray([""])}

    def through(uri: str) -> dict[str, np.ndarray]:
        batch = rows(uri)
        for stage in stages.values():
            batch = stage(batch)
        return batch

    through(corpus[0])  # untimed: models loaded, allocators grown
    cpu = dict.fromkeys(STAGES, 0.0)
    main_thread = 0.0
    hours = 0.0
    for i, uri in enumerate(corpus):
        batch, thread0 = rows(uri), time.thread_time()
        for name, stage in stages.items():
            t = _cpu()
            batch = stage(batch)
            cpu[name] += _cpu() - t
        main_thread += time.thread_time() - thread0
        if batch["error"][0]:
            raise RuntimeError(f"{uri}: {batch['error'][0]}")
        hours += float(batch["duration_s"][0]) / 3600
        if outputs is not None:
            np.savez(outputs / f"{i:03d}.npz", **{k: np.asarray(batch[k][0]) for k in
                     ("speech_pcm", "speech_start_s", "speech_end_s", "iframe_ts", "frame_ts", "frames", "duration_s")})
    total = sum(cpu.values())
    return {"video_h": round(hours, 3), "cpu_s_per_video_h": {k: round(v / hours, 2) for k, v in cpu.items()},
            "total_cpu_s_per_video_h": round(total / hours, 2),
            "other_threads_cpu_s_per_video_h": round((total - main_thread) / hours, 2)}


def child(a: argparse.Namespace) -> int:
    """``--child``: one run in this process, the code of ``--tree`` imported; results as JSON into ``--result``."""
    sys.path.insert(0, a.tree)
    import corpusflow

    assert Path(corpusflow.__file__).resolve().is_relative_to(Path(a.tree).resolve()), corpusflow.__file__
    outputs = Path(a.outputs) if a.outputs else None
    if outputs:
        outputs.mkdir(parents=True, exist_ok=True)
    Path(a.result).write_text(json.dumps(run_stages(a.corpus, a.seek[0], outputs)))
    return 0


def spawn(tree: Path, corpus: list[str], seek: str, outputs: Path | None = None, profile: Path | None = None) -> dict:
    """One run of ``tree``'s stages in a fresh process, optionally sampled by py-spy into ``profile``."""
    result = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", str(tree), "--seek", seek,
           "--result", str(result), *(["--outputs", str(outputs)] if outputs else []), "--corpus", *corpus]
    if profile is not None:
        cmd = [str(PY_SPY), "record", "--nonblocking", "-r", "100", "-f", "raw", "-o", str(profile), "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}  # one CPU per task, as Ray gives it
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"run of {tree} failed:\n{done.stderr[-4000:]}")
    fig = json.loads(result.read_text())
    result.unlink()
    return fig


# -- where the CPU goes: py-spy samples → steps ------------------------------------------------------------

# (file, test on the function name and source line, step), tried from the innermost frame out: the first hit names
# the step. Source lines, not line numbers, so the same rules read the old code and the new.
_STEPS: tuple[tuple[str, Callable[[str, str], bool] | None, str], ...] = (
    ("faster_whisper/", None, "speech detection (Silero VAD)"),
    ("onnxruntime/", None, "speech detection (Silero VAD)"),
    ("actors/speech.py", None, "speech chunks (merge, int16)"),
    ("actors/identify.py", None, "identify (hash, sniff, probe)"),
    ("actors/decode.py", lambda fn, src: "av.open" in src or fn == "open_media", "container open"),
    ("actors/decode.py", lambda fn, src: fn.startswith("_Resampled") or "resample" in src or "to_ndarray" in src,
     "audio resample to 16 kHz (with its arrays)"),
    ("actors/decode.py", lambda fn, src: ".decode(" in src, "audio decode"),
    ("actors/decode.py", lambda fn, src: "demux(" in src, "demux (read packets)"),
    ("actors/decode.py", None, "decode: headers, timestamps, metadata"),
    ("actors/frames.py", lambda fn, src: ".seek(" in src, "frame seeks"),
    ("actors/frames.py", lambda fn, src: "decode" in src or "demux(" in src, "video decode (packets read, pictures decoded)"),
    ("actors/frames.py", lambda fn, src: fn == "upright_rgb", "frames to RGB at frame_size (scale, convert)"),
    ("actors/frames.py", lambda fn, src: fn in ("thumbnail", "colour_histogram", "shot_boundaries")
     or "thumbnail" in src or "shot_boundaries" in src, "near-duplicate test and shots (numpy)"),
    ("actors/frames.py", None, "frames: the rest"),
)


def _step(stack: list[str], tree: Path) -> str:
    for frame in reversed(stack):
        fn, _, where = frame.rpartition(" (")
        path, _, line = where.rstrip(")").rpartition(":")
        for needle, test, step in _STEPS:
            if needle in path:
                src = linecache.getline(str(tree / path), int(line)) if path.startswith(("actors/", "contracts/")) else ""
                if test is None or test(fn, src):
                    return step
    return "stage plumbing (batches, rows, errors)"


def profile_steps(raw: Path, tree: Path, stage_cpu_s_per_h: dict[str, float]) -> dict[str, float]:
    """The main thread's samples inside each stage, split into steps, scaled to that stage's CPU-s per video-hour.

    py-spy samples the wall clock, not CPU time: on a loaded machine a step that waited for a core gets more
    samples than its CPU share. Scaling within each stage keeps every step inside its stage's measured CPU.
    """
    counts: dict[tuple[str, str], int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        stage = next((name for cls, name in _STAGE_CLASSES if any(f.startswith(cls) for f in frames)), None)
        if stage is None:
            continue  # imports, building the stages (the VAD model's load), the benchmark itself
        key = (stage, _step(frames, tree))
        counts[key] = counts.get(key, 0) + int(n)
    steps: dict[str, float] = {}
    for (stage, step), n in counts.items():
        in_stage = sum(v for (s, _), v in counts.items() if s == stage)
        steps[step] = steps.get(step, 0.0) + stage_cpu_s_per_h[stage] * n / in_stage
    return {k: round(v, 2) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])}


_STAGE_CLASSES = (("Identify.process_row", "identify"), ("DecodeMedia.process_row", "decode"),
                  ("SampleFrames.process_row", "frames"))


# -- outputs of the two trees, file by file ------------------------------------------------------------------


def compare_outputs(ref: Path, new: Path) -> dict:
    """How the new code's outputs differ from the old's, over all files."""
    speech_same = frames_same = 0
    worst_edge_s, worst_pixel, min_corr, files = 0.0, 0, 1.0, sorted(p.name for p in ref.glob("*.npz"))
    length_ratio = []
    for name in files:
        a, b = np.load(ref / name), np.load(new / name)
        assert np.array_equal(a["iframe_ts"], b["iframe_ts"]), f"{name}: keyframe times differ"
        assert np.array_equal(a["frame_ts"], b["frame_ts"]), f"{name}: frame times differ"
        pixels = int(np.abs(a["frames"].astype(np.int16) - b["frames"]).max()) if a["frames"].size else 0
        worst_pixel = max(worst_pixel, pixels)
        frames_same += pixels == 0
        same = (np.array_equal(a["speech_start_s"], b["speech_start_s"]) and np.array_equal(a["speech_end_s"], b["speech_end_s"])
                and np.array_equal(a["speech_pcm"], b["speech_pcm"]))
        speech_same += same
        length_ratio.append(len(b["speech_pcm"]) / max(len(a["speech_pcm"]), 1))
        if not same:
            edges_a, edges_b = np.r_[a["speech_start_s"], a["speech_end_s"]], np.r_[b["speech_start_s"], b["speech_end_s"]]
            if len(edges_a) == len(edges_b):
                worst_edge_s = max(worst_edge_s, float(np.abs(edges_a - edges_b).max()))
            else:
                worst_edge_s = float("nan")
            # The samples of the same media times: both carry the track's speech at the same offsets.
            ta, tb = _on_track(a), _on_track(b)
            both = (ta != 0) & (tb != 0)
            min_corr = min(min_corr, float(np.corrcoef(ta[both], tb[both])[0, 1]))
    return {"files": len(files), "keyframe_times_identical": True, "frame_times_identical": True,
            "files_with_identical_frames": frames_same, "max_pixel_difference": worst_pixel,
            "files_with_identical_speech": speech_same, "max_speech_edge_shift_s": worst_edge_s,
            "min_speech_sample_correlation": round(min_corr, 6),
            "speech_samples_new_over_old": [round(min(length_ratio), 5), round(max(length_ratio), 5)]}


def _on_track(out: np.lib.npyio.NpzFile) -> np.ndarray:
    """The speech chunks' int16 samples put back at their offsets on the track (silence elsewhere)."""
    from corpusflow.actors.speech import SAMPLE_RATE

    track = np.zeros(int(round(float(out["duration_s"]) * SAMPLE_RATE)) + SAMPLE_RATE, np.int16)
    at = 0
    for start, end in zip(out["speech_start_s"], out["speech_end_s"]):
        a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
        track[a:b] = out["speech_pcm"][at:at + b - a]
        at += b - a
    return track.astype(np.float64)


# -- the whole measurement -------------------------------------------------------------------------------------


def export_tree(ref: str, work: Path) -> tuple[Path, str]:
    """The files of commit ``ref`` in ``work`` (kept between runs)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
    tree = work / f"tree-{sha[:12]}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, sha


def measure(trees: dict[str, Path], corpus: list[str], seek: str, repeats: int, work: Path, profile: bool) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(repeats):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))  # alternate: drift in the machine's load cancels
        for name in order:
            runs[name].append(spawn(trees[name], corpus, seek))
            print(f"  {seek} {name} run {r + 1}: {runs[name][-1]['total_cpu_s_per_video_h']} CPU-s per video-hour",
                  flush=True)
    out: dict = {}
    for name, tree in trees.items():
        med = {k: round(statistics.median(run["cpu_s_per_video_h"][k] for run in runs[name]), 2) for k in STAGES}
        out[name] = {"runs": runs[name], "median_cpu_s_per_video_h": med,
                     "median_total_cpu_s_per_video_h": round(statistics.median(r["total_cpu_s_per_video_h"] for r in runs[name]), 2)}
        if profile and PY_SPY:
            raw = work / f"profile-{seek}-{tree.name}.txt"
            sampled = spawn(tree, corpus, seek, outputs=work / f"out-{seek}-{tree.name}", profile=raw)
            out[name]["profiled_run"] = sampled
            out[name]["steps_cpu_s_per_video_h"] = profile_steps(raw, tree, sampled["cpu_s_per_video_h"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--distinct-minutes", type=int, default=5, help="each talk's picture cycles through this many encoded minutes")
    p.add_argument("--copies", type=int, default=2, help="each talk and copies - 1 sound variants (the same picture)")
    p.add_argument("--seek", nargs="+", choices=("keyframe", "exact"), default=["keyframe", "exact"])
    p.add_argument("--compare", metavar="GIT_REF", help="also run the stages of this commit, alternating with this checkout's")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-profile", action="store_true", help="leave out the py-spy run and the split into steps")
    p.add_argument("--work", default="/tmp/corpusflow-decode-cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--outputs", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--corpus", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    from benchmarks.corpus import make_corpus, speech_clip, with_copies

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    clip = speech_clip(work / "speech.wav")
    talks = make_corpus(work / "corpus_lecture", a.videos, a.minutes, clip, "lecture", distinct_minutes=a.distinct_minutes)
    corpus = with_copies(talks, a.copies, work / "copies", clip)
    trees = {"this checkout": ROOT}
    sha = None
    if a.compare:
        base, sha = export_tree(a.compare, work)
        trees = {f"ref {sha[:12]}": base, **trees}
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
                     "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "python": platform.python_version(),
                     "corpus": {"videos": a.videos, "minutes": a.minutes, "distinct_minutes": a.distinct_minutes,
                                "copies": a.copies, "files": len(corpus)},
                     "compare": sha, "repeats": a.repeats, "seek": {}}
    for seek in a.seek:
        r = measure(trees, corpus, seek, a.repeats, work, not a.no_profile)
        if sha:
            ref, new = r[f"ref {sha[:12]}"], r["this checkout"]
            r["ratio_new_over_ref"] = round(new["median_total_cpu_s_per_video_h"] / ref["median_total_cpu_s_per_video_h"], 3)
            if "profiled_run" in ref and "profiled_run" in new:
                r["outputs"] = compare_outputs(work / f"out-{seek}-{base.name}", work / f"out-{seek}-{ROOT.name}")
        results["seek"][seek] = r
        _report(seek, r)
    results["load_avg_after"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _report(seek: str, r: dict) -> None:
    for name, fig in r.items():
        if not isinstance(fig, dict) or "median_total_cpu_s_per_video_h" not in fig:
            continue
        print(f"{seek:8s} {name:22s} {fig['median_total_cpu_s_per_video_h']:6.2f} CPU-s per video-hour (median): "
              + ", ".join(f"{k} {v}" for k, v in fig["median_cpu_s_per_video_h"].items()))
        for step, v in fig.get("steps_cpu_s_per_video_h", {}).items():
            print(f"{'':34s}{v:6.2f}  {step}")
    if "ratio_new_over_ref" in r:
        print(f"{seek:8s} this checkout / ref: {r['ratio_new_over_ref']}; outputs: {r.get('outputs')}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
