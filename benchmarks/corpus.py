"""Benchmark corpora: generated videos with speech, every one distinct (no frame or second of audio shared).

Two kinds, written with PyAV:

- ``tiny``: 64×64 pictures at 1 fps, a new random scene every 10 s (the corpus of the first GPU runs:
  decoding costs nothing there);
- ``lecture``: what a recorded talk looks like to the decoder and the VLM: 1080p at 25 fps or 720p at
  30 fps (alternating), H.264 with x264's usual GOP (keyint 250, a keyframe at each scene cut), a slide
  that changes every 30–120 s (title, text lines, a chart) and a speaker box where a person moves all
  the time, AAC audio at 44.1 kHz, in MP4. Every minute of every talk is encoded at once, one per core
  (a new slide and a keyframe where each minute begins), and the minutes are joined by packet copy.

Speech comes from a clip (any recording; ``speech_clip`` makes one with espeak-ng where it is installed,
else a voiced tone pattern), looped in 10-s pieces from random offsets with random gain.

``python benchmarks/corpus.py --kind lecture --videos 2 --minutes 1 --out DIR`` writes a corpus.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SR = 16000
SHOT_S = 10.0  # tiny corpus: a new picture every 10 s, so frames sampled at 0.1 fps differ
SPEECH_PIECE_S = 10.0
# Lecture geometry: (width, height, fps), alternating per video.
LECTURE_FORMATS = ((1920, 1080, 25), (1280, 720, 30))
SLIDE_S = (30.0, 120.0)
_TEXT = ("Each frame that the model sees costs tokens; a slide that stays on screen for two minutes "
         "should cost them once. Decoding must keep up with the GPU: sixteen cores feed one accelerator. "
         "The transcript anchors every chapter and keyframe to the time it was spoken.")


def speech_clip(path: str | Path, seconds: float = 60.0) -> str:
    """A speech recording at ``path`` (WAV): espeak-ng reading English, or a voiced tone pattern without it."""
    import av

    path = Path(path)
    if path.exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    espeak = shutil.which("espeak-ng")
    if espeak:
        text = " ".join([_TEXT] * max(1, int(seconds // 12)))
        subprocess.run([espeak, "-v", "en-us", "-s", "165", "-w", str(path), text], check=True, capture_output=True)
        return str(path)
    t = np.arange(int(seconds * SR)) / SR  # syllable-rate envelope over a 140-Hz voice with formant-like partials
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 700, 1200), 1))
    pcm = (0.25 * voice * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.3 * t) > -0.3))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SR
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return str(path)


def load_clip(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=SR)
        pcm = [f.to_ndarray().reshape(-1) for fr in c.decode(c.streams.audio[0]) for f in rs.resample(fr)]
    return np.concatenate(pcm).astype(np.float32)


def speech_piece(clip: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the clip from a random offset, at a random gain (speech with pauses where it ends)."""
    start = int(rng.integers(0, max(1, len(clip) - n)))
    piece = clip[start:start + n] * float(rng.uniform(0.6, 1.0))
    return np.pad(piece, (0, n - len(piece))) if len(piece) < n else piece


def _audio_frame(pcm: np.ndarray, pts: int):
    import av

    frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts = SR, pts
    return frame


def _aac_stream(out):
    """AAC at 44.1 kHz mono, 64 kbit/s; FFmpeg's fast coder: the default (two-loop) search took most of a
    sound copy's time and a tenth of a lecture's, for a quality the ASR benchmark does not need."""
    aus = out.add_stream("aac", rate=44100, layout="mono", options={"aac_coder": "fast"})
    aus.bit_rate = 64000
    return aus


def make_tiny_video(args: tuple[str, float, int, str]) -> str:
    """One video: 64×64 picture at 1 fps (a new random scene every 10 s, noise on every frame) and speech."""
    import av

    path, seconds, seed, clip_path = args
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    clip = load_clip(clip_path)
    tmp = path + ".partial.mkv"
    with av.open(tmp, "w") as out:
        vs = out.add_stream("libx264", rate=1)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.gop_size = int(SHOT_S)
        aus = out.add_stream("flac", rate=SR, layout="mono")
        scene = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        for i in range(int(seconds)):
            if i % int(SHOT_S) == 0:
                scene = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = np.kron(scene, np.ones((8, 8, 1), dtype=np.uint8))
            img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        total, pos, step = int(seconds * SR), 0, int(SR * SPEECH_PIECE_S)
        while pos < total:
            n = min(step, total - pos)
            out.mux(aus.encode(_audio_frame(speech_piece(clip, n, rng), pos)))
            pos += n
        out.mux(aus.encode(None))
    os.replace(tmp, path)
    return path


class _Lecture:
    """Frames of one generated talk, drawn straight into YUV 4:2:0 planes (no colour conversion per frame)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.w, self.h, self.rng = width, height, rng
        # The speaker's camera box: bottom right, a quarter of the width.
        self.box = (int(height * 0.45), int(width * 0.72), int(height * 0.95), int(width * 0.97))
        y0, x0, y1, x1 = self.box
        bh, bw = y1 - y0, x1 - x0
        yy, xx = np.mgrid[0:bh, 0:bw]
        self.backdrop = (70 + 40 * yy / bh + 10 * np.sin(xx / 9.0)).astype(np.uint8)  # a lit wall, not flat
        r = bh // 7
        hy, hx = np.mgrid[-r:r, -int(r * 0.8):int(r * 0.8)]
        self.head = (hy / r) ** 2 + (hx / (r * 0.8)) ** 2 <= 1.0
        self.torso = (int(bh * 0.45), int(bw * 0.42))
        self.slide()

    def slide(self) -> None:
        """A new slide: background, title bar, lines of 'text' of random length, a chart of coloured bars."""
        w, h, rng = self.w, self.h, self.rng
        y = np.full((h, w), int(rng.integers(225, 245)), np.uint8)
        u = np.full((h // 2, w // 2), 128, np.uint8)
        v = np.full((h // 2, w // 2), 128, np.uint8)
        tint = rng.integers(60, 200, 2)
        y[: h // 8] = int(rng.integers(30, 90))
        u[: h // 16], v[: h // 16] = tint
        line_h, gap = max(4, h // 45), max(8, h // 22)
        text_w = int(w * 0.62)
        for row in range(h // 6, int(h * 0.9), gap):
            indent = int(rng.integers(0, 4)) * w // 40
            end = w // 20 + indent + int(rng.uniform(0.3, 1.0) * (text_w - indent))
            words = rng.integers(0, 2, (end - w // 20 - indent) // 12).repeat(12)  # dark runs with spaces
            y[row:row + line_h, w // 20 + indent:w // 20 + indent + len(words)] = np.where(words, 40, y[row, 0])
        x = int(w * 0.66)
        for k in range(int(rng.integers(3, 7))):  # a bar chart above the speaker box
            top = int(h * rng.uniform(0.15, 0.35))
            x0, x1 = x + k * w // 40, x + k * w // 40 + w // 60
            y[top:int(h * 0.42), x0:x1] = int(rng.integers(60, 160))
            u[top // 2:int(h * 0.21), x0 // 2:x1 // 2], v[top // 2:int(h * 0.21), x0 // 2:x1 // 2] = rng.integers(40, 216, 2)
        self.planes = (y, u, v)

    def frame(self, t: float) -> np.ndarray:
        """The picture at ``t`` seconds as one (h·3/2, w) yuv420p array: the slide plus the moving speaker."""
        y, u, v = (p.copy() for p in self.planes)
        y0, x0, y1, x1 = self.box
        bh, bw = y1 - y0, x1 - x0
        cam = self.backdrop.copy()
        cx = int(bw / 2 + bw * 0.25 * np.sin(t / 4.0) + bw * 0.05 * np.sin(t * 1.7))  # walking, gesturing
        cy = int(bh * 0.3 + bh * 0.02 * np.sin(t * 3.1))
        th, tw = self.torso
        cam[cy + self.head.shape[0] // 2:cy + self.head.shape[0] // 2 + th,
            max(0, cx - tw // 2):max(0, cx + tw // 2)] = 45
        hh, hw = self.head.shape
        ty, tx = max(0, cy - hh // 2), int(np.clip(cx - hw // 2, 0, bw - hw))
        cam[ty:ty + hh, tx:tx + hw][self.head[:bh - ty]] = 170
        y[y0:y1, x0:x1] = cam
        u[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = 120
        v[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = 140
        return np.concatenate([y, u.reshape(-1, self.w), v.reshape(-1, self.w)])


SEGMENT_S = 60.0  # a lecture is encoded in pieces of this length, all at once on every core, then joined


def lecture_segment(args: tuple[str, float, float, int, int, str]) -> str:
    """One piece of a talk's picture (see the module doc), H.264 alone in an MP4:
    ``(path, start s, seconds, talk seed, piece index, x264 preset)``. Each piece draws its slides from its
    own seed (a new slide where it begins); the speaker moves on the talk's clock."""
    import av

    path, start, seconds, seed, k, preset = args
    rng = np.random.default_rng([seed, k])
    width, height, fps = LECTURE_FORMATS[seed % len(LECTURE_FORMATS)]
    talk = _Lecture(width, height, rng)
    with av.open(path, "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": preset, "crf": "23"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.thread_count = 1  # one piece per core
        next_slide = float(rng.uniform(*SLIDE_S))
        for i in range(int(round(seconds * fps))):
            t = i / fps
            if t >= next_slide:
                talk.slide()
                next_slide += float(rng.uniform(*SLIDE_S))
            frame = av.VideoFrame.from_ndarray(talk.frame(start + t), format="yuv420p")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    return path


def join_with_speech(args: tuple[list[str], list[float], str, np.ndarray]) -> str:
    """``dst``: the pictures of ``parts`` (packets copied, each part shifted to its start in seconds) and
    ``pcm`` (16 kHz) AAC-encoded in 10-s frames (the encoder cuts them: no Python per audio frame),
    the two streams interleaved."""
    import av

    parts, starts, dst, pcm = args
    tmp = dst + ".partial" + os.path.splitext(dst)[1]  # the container follows the name
    step, pos = int(SR * SPEECH_PIECE_S), 0
    with av.open(tmp, "w") as out:
        aout = vout = None
        for part, start in zip(parts, starts):
            with av.open(part) as inp:
                vin = inp.streams.video[0]
                if vout is None:
                    vout, aout = out.add_stream_from_template(vin), _aac_stream(out)
                shift = int(round(start / vin.time_base))
                for packet in inp.demux(vin):
                    if not packet.size:  # the demuxer's empty flush packet
                        continue
                    if packet.pts is not None:  # sound up to this picture's time first
                        while pos < len(pcm) and pos / SR <= start + float(packet.pts * vin.time_base):
                            out.mux(aout.encode(_audio_frame(pcm[pos:pos + step], pos)))
                            pos += step
                        packet.pts += shift
                    if packet.dts is not None:
                        packet.dts += shift
                    packet.stream = vout
                    out.mux(packet)
        for rest in range(pos, len(pcm), step):
            out.mux(aout.encode(_audio_frame(pcm[rest:rest + step], rest)))
        out.mux(aout.encode(None))
    os.replace(tmp, dst)
    return dst


def _join_lecture(args: tuple[str, list[str], float, int, str]) -> str:
    path, parts, seconds, seed, clip_path = args
    return join_with_speech((parts, [k * SEGMENT_S for k in range(len(parts))], path,
                             speech_track(load_clip(clip_path), seconds, seed)))


def make_lectures(paths: list[str], seconds: float, seeds: list[int], clip: str, preset: str,
                  distinct_minutes: int | None = None) -> list[str]:
    """Talks at ``paths`` (kept if already there): every minute of every talk encoded at once, one per core,
    then each talk joined with its own speech. ``distinct_minutes``: each talk's picture cycles through that
    many encoded minutes (packets copied again, later in the file) instead of encoding every minute; the
    decoder and the VLM see as many frames and tokens, for a fraction of the encoding."""
    todo = [(p, s) for p, s in zip(paths, seeds) if not os.path.exists(p)]
    n = int(np.ceil(seconds / SEGMENT_S))
    cycle = min(distinct_minutes or n, n)
    plans, jobs = {}, {}
    for p, s in todo:
        parts = []
        for k in range(n):
            length = min(SEGMENT_S, seconds - k * SEGMENT_S)
            key = k % cycle if length == SEGMENT_S else k  # a short last minute is its own piece
            job = (f"{p}.part{key:03d}.mp4", key * SEGMENT_S, length, s, key, preset)
            jobs[job[0]] = job
            parts.append(job[0])
        plans[p] = parts
    with ProcessPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        list(pool.map(lecture_segment, jobs.values()))
        list(pool.map(_join_lecture, [(p, plans[p], seconds, s, clip) for p, s in todo]))
    for part in jobs:
        os.remove(part)
    return paths


def make_corpus(folder: Path, videos: int, minutes: float, clip: str, kind: str = "tiny",
                preset: str = "veryfast", distinct_minutes: int | None = None) -> list[str]:
    """``videos`` distinct videos of ``minutes`` each in ``folder`` (kept if already there), in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "lecture":
        return make_lectures([str(folder / f"lecture_{i:02d}.mp4") for i in range(videos)], minutes * 60,
                             [2000 + i for i in range(videos)], clip, preset, distinct_minutes)
    jobs = [(str(folder / f"talk_{i:02d}.mkv"), minutes * 60, 1000 + i, clip) for i in range(videos)]
    with ProcessPoolExecutor(max_workers=min(videos, os.cpu_count() or 1)) as pool:
        return list(pool.map(make_tiny_video, jobs))


def speech_track(clip: np.ndarray, seconds: float, seed: int) -> np.ndarray:
    """``seconds`` of speech at 16 kHz: the clip in 10-s pieces from random offsets at random gains."""
    rng = np.random.default_rng(seed)
    total, step = int(seconds * SR), int(SR * SPEECH_PIECE_S)
    return np.concatenate([speech_piece(clip, min(step, total - pos), rng) for pos in range(0, total, step)])


def sound_variant(args: tuple[str, str, str, int]) -> str:
    """A copy of ``src`` at ``dst`` whose picture is the same bitstream (packets copied, not re-encoded) and
    whose sound is other speech from the clip (pieces from other offsets, seed ``seed``), AAC-encoded:
    other bytes and other audio for the price of an AAC encode.

    Many distinct files of a realistic size without encoding 1080p video again (hours of CPU): the VLM
    sees the same frames as in ``src``, so a benchmark over such copies must keep vLLM's prefix caching
    off; the ASR hears a different signal.
    """
    import av

    src, dst, clip_path, seed = args
    if not os.path.exists(dst):
        with av.open(src) as inp:
            seconds = float(inp.duration / av.time_base)
        join_with_speech(([src], [0.0], dst, speech_track(load_clip(clip_path), seconds, seed)))
    return dst


def with_copies(paths: list[str], copies: int, folder: Path, clip: str) -> list[str]:
    """``paths`` and ``copies - 1`` sound variants of each, all in ``folder`` (originals hard-linked there),
    every variant a job of its own on all cores."""
    if copies <= 1:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    jobs, out = [], []
    for i, p in enumerate(paths):
        stem, ext = os.path.splitext(os.path.basename(p))
        first = folder / f"{stem}_c00{ext}"
        if not first.exists():
            os.link(p, first)
        out.append(str(first))
        for k in range(1, copies):
            jobs.append((p, str(folder / f"{stem}_c{k:02d}{ext}"), clip, 50_000 + 100 * i + k))
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        return out + list(pool.map(sound_variant, jobs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=("tiny", "lecture"), default="lecture")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--preset", default="veryfast", help="x264 preset of the lecture videos")
    p.add_argument("--speech-clip", help="audio with speech; default: made with espeak-ng (or tones) in --out")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = a.speech_clip or speech_clip(out / "speech.wav")
    for path in make_corpus(out, a.videos, a.minutes, clip, a.kind, a.preset):
        print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
