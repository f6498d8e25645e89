"""Decode a video or audio file into what the model stages need: sampled frames, shots, keyframes, speech.

Frames are sampled by *seeking* (to the keyframe before each target time, then decoding forward to
the first frame at/after it), so a 3-hour video at 0.1 fps costs ~1,080 short GOP decodes, not
~650,000 frame decodes; ``video.seek: keyframe`` takes the keyframe nearest each time instead and
decodes that one picture alone. ``video.dedup_threshold`` leaves out frames that look like the last
kept one (a slide on screen for minutes). The audio track is decoded once, streamed through a resampler
into speech detection (actors/speech.py), which keeps only the speech chunks, as int16: the whole track is
never held. The same demux pass records the video keyframe times without decoding any video packet.
"""
from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Iterator

import av
import av.error
import numpy as np

from corpusflow.contracts import storage
from corpusflow.actors.speech import SAMPLE_RATE, SpeechDetector, SpeechFinder
from corpusflow.contracts.config import StageConfig, VideoConfig
from corpusflow.contracts.stage import Row, Stage, StageContract, StageFailure

# Without a container index, listing keyframes means reading every packet of the file; with an
# audio track that pass happens anyway, without one we only pay it for files up to this size.
KEYFRAME_SCAN_MAX_BYTES = 1 << 30
_REMOTE_BUFFER = 1 << 20  # PyAV read size for S3 objects: fewer, larger ranged GETs
_HIST_BINS = 4  # coarse bins: codec noise on flat colour must not cross bins, a cut still does
_THUMB = 32  # side of the grey thumbnail that near-duplicate frames are compared on
_TAGS = ("title", "comment", "description", "artist", "album", "date", "creation_time", "copyright", "language")


@contextlib.contextmanager
def open_media(uri: str) -> Iterator[av.container.InputContainer]:
    """Open a local path or s3:// object with PyAV (S3 through a seekable, ranged pyarrow reader)."""
    if storage.is_s3(uri):
        with storage.open_input(uri) as f, av.open(f, "r", buffer_size=_REMOTE_BUFFER,
                                                   metadata_errors="replace") as container:
            yield container
    else:
        # Tags in Latin-1 or worse must not make a valid file fail: undecodable bytes become U+FFFD.
        with av.open(storage.filesystem(uri)[1], "r", metadata_errors="replace") as container:
            yield container


def picture_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """Real video streams: not cover art (an attached picture is one still image, not a video)."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def media_kind(container: av.container.InputContainer, default: str) -> str:
    """video when a real picture stream is inside, audio when only sound is, else ``default``."""
    if picture_streams(container):
        return "video"
    return "audio" if container.streams.audio else default


def describe_error(kind: str, e: Exception) -> str:
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"{kind} could not be decoded: {reason[0].lower()}{reason[1:]}"


def frame_dims(width: int, height: int, side: int) -> tuple[int, int]:
    """(W, H) multiples of 28 that fit a ``side``×``side`` square and keep the aspect ratio (to ±14 px)."""
    scale = side / max(width, height, 1)
    fit = lambda v: max(28, min(side, int(round(v * scale / 28)) * 28))  # noqa: E731
    return fit(width), fit(height)


def _quarter_turns(frame: av.VideoFrame) -> int:
    return round(frame.rotation / 90) % 4


def upright_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """The frame as (height, width, 3) RGB, turned as its display matrix says (counter-clockwise degrees)."""
    turns = _quarter_turns(frame)
    w, h = (height, width) if turns % 2 else (width, height)
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def sample_times(duration: float, cfg: VideoConfig) -> np.ndarray:
    """Target times: every 1/fps seconds, spread evenly over the duration when max_frames bites; at least t=0."""
    n = int(math.floor(duration * cfg.fps + 1e-9)) if duration > 0 else 0
    if n < 1:
        return np.zeros(1)
    if n > cfg.max_frames:
        return np.linspace(0.0, duration, cfg.max_frames, endpoint=False)
    return np.arange(n) / cfg.fps


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """Joint RGB histogram (4 bins per channel), normalised to sum 1: the L1 distance of two is in [0, 2]."""
    q = (frame.reshape(-1, 3) // (256 // _HIST_BINS)).astype(np.int32)
    idx = (q[:, 0] * _HIST_BINS + q[:, 1]) * _HIST_BINS + q[:, 2]
    hist = np.bincount(idx, minlength=_HIST_BINS ** 3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """Grey ``_THUMB``×``_THUMB`` block means of an RGB frame, in [0, 1]: what a viewer sees, minus codec noise and detail."""
    grey = frame.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    n = min(_THUMB, *grey.shape)
    rows, cols = (np.linspace(0, size, n + 1).astype(int) for size in grey.shape)
    sums = np.add.reduceat(np.add.reduceat(grey, rows[:-1], axis=0), cols[:-1], axis=1)
    return sums / np.outer(np.diff(rows), np.diff(cols)) / 255.0


def nearest_keyframes(targets: np.ndarray, keyframes: np.ndarray | None) -> np.ndarray:
    """For each target time the nearest keyframe time, each once, in order; the targets when none are listed."""
    if keyframes is None or not len(keyframes):
        return targets
    i = np.clip(np.searchsorted(keyframes, targets), 1, max(len(keyframes) - 1, 1))
    before, after = keyframes[i - 1], keyframes[np.minimum(i, len(keyframes) - 1)]
    return np.unique(np.where(targets - before <= after - targets, before, after))


def shot_boundaries(frames: np.ndarray, times: np.ndarray, threshold: float) -> np.ndarray:
    """Times of sampled frames whose colour histogram jumps by more than ``threshold`` from the previous one."""
    hists = [colour_histogram(f) for f in frames]
    cuts = [times[i] for i in range(1, len(hists)) if np.abs(hists[i] - hists[i - 1]).sum() > threshold]
    return np.asarray(cuts, dtype=np.float64)


class DecodeMedia(Stage):
    """Video and audio rows → duration, metadata, sampled frames, shot and keyframe times, speech chunks.

    The speech columns are actors/speech.py's :class:`~corpusflow.actors.speech.Speech`: the chunks'
    16 kHz int16 samples back to back and their spans on the media's time axis.
    """

    contract = StageContract(
        name="decode", reads=("uri", "kind"), kinds=("video", "audio"),
        writes={"duration_s": "float64", "meta_json": "str", "frames": "tensor[uint8]", "frame_ts": "tensor[float64]",
                "shot_ts": "tensor[float64]", "iframe_ts": "tensor[float64]", "speech_pcm": "tensor[int16]",
                "speech_start_s": "tensor[float64]", "speech_end_s": "tensor[float64]", "has_audio": "bool"})

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.video = config.video
        self.limits = config.limits
        self.speech = SpeechDetector(config)
        # Frames are (n, H, W, 3) in every row, none included: Ray's tensor column needs one ndim.
        side = config.video.frame_size
        self.empty = {"frames": np.zeros((0, side, side, 3), np.uint8)}
        self.frames_decoded = 0  # video frames decoded so far by this instance: sampling cost, for tests and metrics
        self.duplicates_dropped = 0  # of the frame being sampled now: near-duplicates left out (reported in meta)

    def process_row(self, row: Row) -> dict[str, Any]:
        uri, kind = str(row["uri"]), str(row["kind"])
        try:
            with open_media(uri) as container:
                return self._decode_container(container, uri, kind)
        except (av.error.FFmpegError, OSError, EOFError) as e:
            raise StageFailure(describe_error(kind, e)) from e

    def _decode_container(self, container: av.container.InputContainer, uri: str, kind: str) -> dict[str, Any]:
        pictures = picture_streams(container) if kind == "video" else []
        audio = container.streams.audio[0] if container.streams.audio else None
        if kind == "video" and not pictures:
            raise StageFailure("video could not be decoded: the file holds no video stream")
        if audio is None and not pictures:
            raise StageFailure(f"{kind} could not be decoded: the file holds no audio stream")
        vs = pictures[0] if pictures else None
        t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
        declared = declared_duration(container)
        self._check_limits(kind, vs, declared)

        iframes = _indexed_keyframes(vs, t0) if vs is not None else None
        speech = self.speech.finder()
        iframes_seen: list[float] = []
        last_ts = 0.0
        if audio is not None or (vs is not None and iframes is None and _size(uri) <= KEYFRAME_SCAN_MAX_BYTES):
            iframes_seen, last_ts = _demux_pass(container, audio, vs if iframes is None else None, t0,
                                                self.limits.max_duration_s, speech)
            if iframes is None and vs is not None:
                iframes = np.asarray(sorted(iframes_seen), dtype=np.float64)
        heard = speech.finish()  # before frames are sampled: the VAD's window is freed
        duration = declared if declared else last_ts
        if declared and last_ts and last_ts < 0.9 * declared - 1.0:
            raise StageFailure(f"{kind} is truncated or corrupt: the header says {declared:.1f} s "
                               f"but the data ends at {last_ts:.1f} s")

        side = self.video.frame_size
        frames, frame_ts = np.zeros((0, side, side, 3), np.uint8), np.zeros(0)
        if vs is not None:
            frames, frame_ts = self._sample_frames(container, vs, duration, t0, iframes)
            if not len(frame_ts):
                raise StageFailure("video could not be decoded: no picture could be decoded from the video stream")
            duration = duration or float(frame_ts[-1])
        shots = shot_boundaries(frames, frame_ts, self.video.shot_threshold) if len(frames) > 1 else np.zeros(0)
        meta = _metadata(container, vs, audio, duration, frames.shape, iframes is not None)
        if vs is not None and self.video.dedup_threshold:
            meta["duplicate_frames_dropped"] = self.duplicates_dropped
        return {"duration_s": float(duration), "meta_json": json.dumps(meta, ensure_ascii=False), "frames": frames,
                "frame_ts": frame_ts, "shot_ts": shots,
                "iframe_ts": iframes if iframes is not None else np.zeros(0), **heard.columns(),
                "has_audio": audio is not None and heard.track_samples > 0}

    def _check_limits(self, kind: str, vs: av.video.stream.VideoStream | None, declared: float) -> None:
        """Refuse, from the headers alone, what would take unbounded time or memory to decode."""
        limits = self.limits
        if declared > limits.max_duration_s:
            raise StageFailure(f"{kind} is {_span(declared)} long, over the limit of {_span(limits.max_duration_s)} "
                               "(limits.max_duration_s)")
        if vs is not None:
            w, h = vs.codec_context.width or 0, vs.codec_context.height or 0
            if w * h > limits.max_pixels:
                raise StageFailure(f"video frames are {w}x{h} pixels, over the limit of {limits.max_pixels} "
                                   "pixels (limits.max_pixels)")

    def _sample_frames(self, container: av.container.InputContainer, vs: av.video.stream.VideoStream,
                       duration: float, t0: float, keyframes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ctx = vs.codec_context
        sar = float(ctx.sample_aspect_ratio) if ctx.sample_aspect_ratio else 1.0
        display = (int(round(ctx.width * sar)), ctx.height)
        step = 1.0 / float(vs.average_rate) if vs.average_rate else 0.04
        kept: np.ndarray | None = None  # one slot per target, filled in place: the frames are never held twice
        times: list[float] = []
        dims: tuple[int, int] | None = None
        targets = sample_times(duration, self.video)
        if self.video.seek == "keyframe":
            # The decoder then drops every other picture unseen, so a seek costs one picture, not a GOP.
            targets = nearest_keyframes(targets, keyframes)
            ctx.skip_frame = "NONKEY"
        last_thumb: np.ndarray | None = None
        self.duplicates_dropped = 0
        for target in targets:
            got = self._frame_at(container, vs, t0 + float(target), step)
            if got is None:
                break  # past the last decodable picture
            frame, t = got
            if times and t - t0 <= times[-1]:
                continue  # two targets inside one frame's span: keep timestamps strictly increasing
            if dims is None:  # a phone video's display matrix turns it upright: portrait, not landscape
                upright = display[::-1] if _quarter_turns(frame) % 2 else display
                dims = frame_dims(*upright, self.video.frame_size)
                kept = np.empty((len(targets), dims[1], dims[0], 3), np.uint8)
            rgb = upright_rgb(frame, *dims)
            if self.video.dedup_threshold:
                # Against the last *kept* frame, not the previous sample: slow drift still adds up to a new frame.
                thumb = thumbnail(rgb)
                if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) < self.video.dedup_threshold:
                    self.duplicates_dropped += 1
                    continue
                last_thumb = thumb
            kept[len(times)] = rgb
            times.append(t - t0)
        width, height = dims or frame_dims(*display, self.video.frame_size)
        return (kept[:len(times)] if kept is not None else np.zeros((0, height, width, 3), np.uint8),
                np.asarray(times, dtype=np.float64))

    def _frame_at(self, container: av.container.InputContainer, vs: av.video.stream.VideoStream, target: float,
                  step: float) -> tuple[av.VideoFrame, float] | None:
        """The first frame at/after ``target`` (container seconds): seek to the keyframe before it, decode forward.

        Some demuxers (MPEG-TS) land on a keyframe *after* the target; we then seek further back.
        """
        backoff = 0.0
        found = None
        for _ in range(4):
            # never before the stream's first timestamp: some demuxers (FLV) refuse a seek with no keyframe before it
            offset = max(vs.start_time or 0, int((target - backoff) / vs.time_base))
            container.seek(offset, stream=vs, backward=True)
            first, found = None, None
            for frame in container.decode(vs):
                self.frames_decoded += 1
                if frame.time is None:
                    continue
                first = frame.time if first is None else first
                if frame.time >= target - step / 2:
                    found = (frame, frame.time)
                    break
            overshot = first is not None and first > target + step / 2 and target - backoff > 0
            if not overshot:
                return found
            backoff = max(2 * backoff, 2.0)
        return found


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def _size(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    return fs.get_file_info(path).size or 0


def declared_duration(container: av.container.InputContainer) -> float:
    """Seconds the container's header declares (its own, else its longest stream's); 0 when it says nothing."""
    if container.duration:
        return container.duration / 1e6
    spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(spans, default=0.0)


def _indexed_keyframes(vs: av.video.stream.VideoStream, t0: float) -> np.ndarray | None:
    """Keyframe times from the container's own sample index (MP4/MOV, AVI) when it lists every frame; else None."""
    entries = vs.index_entries
    if not vs.frames or len(entries) < vs.frames:
        return None  # absent or partial (Matroska cues list only some keyframes)
    tb = float(vs.time_base)
    return np.asarray(sorted(e.timestamp * tb - t0 for e in entries if e.is_keyframe), dtype=np.float64)


def _demux_pass(container: av.container.InputContainer, audio: av.audio.stream.AudioStream | None,
                vs: av.video.stream.VideoStream | None, t0: float, max_s: float, speech: SpeechFinder
                ) -> tuple[list[float], float]:
    """One read of the file: decode + resample the audio to 16 kHz mono into ``speech``, note video
    keyframe times (no decode).

    Stops at ``max_s`` of media: a file whose header declares no duration cannot run on unbounded.
    """
    streams = [s for s in (audio, vs) if s is not None]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if audio is not None else None
    keyframes: list[float] = []
    last = 0.0
    started = False
    for packet in container.demux(streams):
        if packet.pts is not None and packet.time_base:
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - t0
            last = max(last, end)
            if last > max_s:
                raise StageFailure(f"media runs past {_span(max_s)} (limits.max_duration_s) although its "
                                   "header does not say so")
        if packet.stream is vs:
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(float(packet.pts * packet.time_base) - t0)
            continue
        for frame in packet.decode():
            if not started and frame.time is not None:
                speech.pad_to(int(round(max(0.0, frame.time - t0) * SAMPLE_RATE)))  # audio that starts late stays aligned
                started = True
            for out in resampler.resample(frame):
                speech.feed(out.to_ndarray()[0])
    if resampler is not None:
        for out in resampler.resample(None):
            speech.feed(out.to_ndarray()[0])
    return keyframes, last


def _metadata(container: av.container.InputContainer, vs: av.video.stream.VideoStream | None,
              audio: av.audio.stream.AudioStream | None, duration: float, frames_shape: tuple[int, ...],
              keyframes_listed: bool) -> dict[str, Any]:
    """What a person (or a prompt) wants to know about the file; tags lower-cased, empty ones left out."""
    tags = {k.lower(): v for k, v in container.metadata.items()}
    meta: dict[str, Any] = {"container": container.format.long_name, "duration_s": round(duration, 3),
                            "bit_rate": container.bit_rate or None}
    if vs is not None:
        ctx = vs.codec_context
        meta.update(width=ctx.width, height=ctx.height, codec=ctx.name,
                    fps=round(float(vs.average_rate), 3) if vs.average_rate else None,
                    sampled_frames=int(frames_shape[0]), frame_size=[int(frames_shape[2]), int(frames_shape[1])])
        if not keyframes_listed:
            meta["keyframes"] = "not listed: no container index and the file is too large to scan"
    if audio is not None:
        a = audio.codec_context
        meta.update(audio_codec=a.name, audio_sample_rate=a.sample_rate, audio_channels=a.channels,
                    audio_language=audio.metadata.get("language") or None)
    meta.update({k: tags[k] for k in _TAGS if tags.get(k)})
    return {k: v for k, v in meta.items() if v is not None}
