"""Sample a video's frames for the VLM: seeking, near-duplicate removal, shot times.

Runs after ASR as its own CPU stage, so the frames go from here to the VLM actors only; the ASR actors
never hold them. Frames are sampled by *seeking* (to the keyframe before each target time, then
decoding forward to the first frame at/after it, leaving out the B-frames shown before it that no
picture refers to), so a 3-hour video at 0.1 fps costs ~1,080 short GOP decodes, not ~650,000 frame
decodes; ``video.seek: keyframe`` takes the keyframe nearest each time (decode listed them,
``iframe_ts``) and decodes that one packet alone. ``video.dedup_threshold``
leaves out frames that look like the last kept one (a slide on screen for minutes). Kept frames are
written in place into one array: they are never held twice.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator

import av
import av.error
import numpy as np

from corpusflow.actors.decode import describe_error, open_media, picture_streams, read_only, start_time
from corpusflow.contracts.config import StageConfig, VideoConfig
from corpusflow.contracts.stage import Row, Stage, StageContract, StageFailure

_HIST_BINS = 4  # coarse bins: codec noise on flat colour must not cross bins, a cut still does
_THUMB = 32  # side of the grey thumbnail that near-duplicate frames are compared on


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


def _seek_before(container: av.container.InputContainer, vs: av.video.stream.VideoStream, seconds: float) -> None:
    """Seek to the keyframe at/before ``seconds`` (container seconds), never before the stream's first
    timestamp: some demuxers (FLV) refuse a seek with no keyframe before it."""
    container.seek(max(vs.start_time or 0, int(seconds / vs.time_base)), stream=vs, backward=True)


def _decode_skipping_unseen(container: av.container.InputContainer, vs: av.video.stream.VideoStream,
                            shown_from: float) -> Iterator[av.VideoFrame]:
    """The frames from where the container stands, leaving undecoded the pictures that no other picture
    refers to and that are shown before ``shown_from`` (container seconds): none of them can be sampled."""
    ctx = vs.codec_context
    num, den = vs.time_base.numerator, vs.time_base.denominator
    for packet in container.demux(vs):
        early = packet.pts is not None and packet.pts * num / den < shown_from
        ctx.skip_frame = "NONREF" if early else "DEFAULT"
        yield from ctx.decode(packet)


class SampleFrames(Stage):
    """Video rows → sampled frames (RGB, ``video.frame_size`` on the long side), their times, shot times.

    Adds what it did to decode's ``meta_json``: ``sampled_frames``, ``frame_size`` and, with
    ``video.dedup_threshold``, ``duplicate_frames_dropped``.
    """

    contract = StageContract(
        name="frames", reads=("uri", "duration_s", "iframe_ts", "meta_json"), kinds=("video",),
        writes={"frames": "tensor[uint8]", "frame_ts": "tensor[float64]", "shot_ts": "tensor[float64]",
                "meta_json": "str"})

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.video = config.video
        # Frames are (n, H, W, 3) in every row, none included: Ray's tensor column needs one ndim.
        side = config.video.frame_size
        self.empty = {"frames": np.zeros((0, side, side, 3), np.uint8)}
        self.frames_decoded = 0  # video frames decoded so far by this instance: sampling cost, for tests and metrics

    def process_row(self, row: Row) -> dict[str, Any]:
        uri = str(row["uri"])
        try:
            with open_media(uri) as container:
                pictures = picture_streams(container)
                if not pictures:
                    raise StageFailure("video could not be decoded: the file holds no video stream")
                keyframes = np.asarray(row["iframe_ts"], dtype=np.float64)
                read_only(container, pictures[:1])
                frames, frame_ts, dropped = self._sample_frames(container, pictures[0], float(row["duration_s"]),
                                                                start_time(container), keyframes)
        except (av.error.FFmpegError, OSError, EOFError) as e:
            raise StageFailure(describe_error("video", e)) from e
        if not len(frame_ts):
            raise StageFailure("video could not be decoded: no picture could be decoded from the video stream")
        shots = shot_boundaries(frames, frame_ts, self.video.shot_threshold) if len(frames) > 1 else np.zeros(0)
        meta = json.loads(str(row["meta_json"]) or "{}")
        meta.update(sampled_frames=len(frames), frame_size=[int(frames.shape[2]), int(frames.shape[1])])
        if self.video.dedup_threshold:
            meta["duplicate_frames_dropped"] = dropped
        return {"frames": frames, "frame_ts": frame_ts, "shot_ts": shots,
                "meta_json": json.dumps(meta, ensure_ascii=False)}

    def _sample_frames(self, container: av.container.InputContainer, vs: av.video.stream.VideoStream,
                       duration: float, t0: float, keyframes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """(frames, their times, near-duplicates left out)."""
        ctx = vs.codec_context
        sar = float(ctx.sample_aspect_ratio) if ctx.sample_aspect_ratio else 1.0
        display = (int(round(ctx.width * sar)), ctx.height)
        step = 1.0 / float(vs.average_rate) if vs.average_rate else 0.04
        kept: np.ndarray | None = None  # one slot per target, filled in place: the frames are never held twice
        times: list[float] = []
        dims: tuple[int, int] | None = None
        targets = sample_times(duration, self.video)
        by_keyframe = self.video.seek == "keyframe"
        if by_keyframe:
            targets = nearest_keyframes(targets, keyframes)
        last_thumb: np.ndarray | None = None
        dropped = 0
        for target in targets:
            got = (self._keyframe_at if by_keyframe else self._frame_at)(container, vs, t0 + float(target), step)
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
                    dropped += 1
                    continue
                last_thumb = thumb
            kept[len(times)] = rgb
            times.append(t - t0)
        width, height = dims or frame_dims(*display, self.video.frame_size)
        return (kept[:len(times)] if kept is not None else np.zeros((0, height, width, 3), np.uint8),
                np.asarray(times, dtype=np.float64), dropped)

    def _frame_at(self, container: av.container.InputContainer, vs: av.video.stream.VideoStream, target: float,
                  step: float) -> tuple[av.VideoFrame, float] | None:
        """The first frame at/after ``target`` (container seconds): seek to the keyframe before it, decode forward.

        Some demuxers (MPEG-TS) land on a keyframe *after* the target; we then seek further back.
        """
        backoff = 0.0
        found = None
        for _ in range(4):
            _seek_before(container, vs, target - backoff)
            first, found = None, None
            for frame in _decode_skipping_unseen(container, vs, target - step / 2):
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

    def _keyframe_at(self, container: av.container.InputContainer, vs: av.video.stream.VideoStream, target: float,
                     step: float) -> tuple[av.VideoFrame, float] | None:
        """The first keyframe at/after ``target`` (container seconds; decode listed it), decoded alone.

        Seek to it, read packets up to it, decode that one packet and drain the decoder: a decoder with
        B-frames gives a picture out only after more packets, so decoding on read up to the next
        keyframe (a whole GOP of packets) per sample. Seeks that land after the target back off as in
        :meth:`_frame_at`, judged on the decoding time: an MP4 index lists keyframes at that time, which
        is the picture's time less the reordering delay.
        """
        ctx = vs.codec_context
        num, den = vs.time_base.numerator, vs.time_base.denominator
        backoff = 0.0
        for _ in range(4):
            _seek_before(container, vs, target - backoff)  # also flushes the decoder drained below
            first = None
            for packet in container.demux(vs):
                if packet.pts is None or not packet.is_keyframe:
                    continue
                if first is None:
                    first = (packet.pts if packet.dts is None else packet.dts) * num / den
                if packet.pts * num / den < target - step / 2:
                    continue
                if first > target + step / 2 and target - backoff > 0:
                    break  # landed after the target: seek further back
                frames = ctx.decode(packet) + ctx.decode(None)
                self.frames_decoded += len(frames)
                # the drained frames carry no time base: their time from the stream's, as frame.time computes it
                timed = [(f, f.pts * num / den) for f in frames if f.pts is not None]
                if timed:
                    return timed[0]
                ctx.flush_buffers()  # a keyframe that gives no picture: the next one may
            else:
                return None  # no keyframe at/after the target
            backoff = max(2 * backoff, 2.0)
        return None
