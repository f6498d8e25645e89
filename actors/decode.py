"""Decode a video or audio file's sound and headers: duration, metadata, keyframe times, speech.

The audio track is decoded once, streamed through a resampler (in blocks) into speech detection
(actors/speech.py), which keeps only the speech chunks, as int16: the whole track is never held. The
same demux pass records the video keyframe times without decoding any video packet; actors/frames.py
samples the pictures after ASR, seeking with those times. The header checks here (duration, frame
size) run before anything is decoded, for both.
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import av
import av.error
import numpy as np

from corpusflow.contracts import storage
from corpusflow.actors.speech import SAMPLE_RATE, SpeechDetector, SpeechFinder
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Row, Stage, StageContract, StageFailure

# Without a container index, listing keyframes means reading every packet of the file; with an
# audio track that pass happens anyway, without one we only pay it for files up to this size.
KEYFRAME_SCAN_MAX_BYTES = 1 << 30
RESAMPLE_BLOCK_S = 10.0  # audio resampled at a time (see _Resampled): 3.5 MB of 44.1-kHz stereo float
_REMOTE_BUFFER = 1 << 20  # PyAV read size for S3 objects: fewer, larger ranged GETs
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


class DecodeMedia(Stage):
    """Video and audio rows → duration, metadata, keyframe times, speech chunks.

    The speech columns are actors/speech.py's :class:`~corpusflow.actors.speech.Speech`: the chunks'
    16 kHz int16 samples back to back and their spans on the media's time axis. Frames are sampled
    later, by actors/frames.py, after ASR: they never travel through the ASR actors.
    """

    contract = StageContract(
        name="decode", reads=("uri", "kind"), kinds=("video", "audio"),
        writes={"duration_s": "float64", "meta_json": "str", "iframe_ts": "tensor[float64]",
                "speech_pcm": "tensor[int16]", "speech_start_s": "tensor[float64]", "speech_end_s": "tensor[float64]",
                "has_audio": "bool"})

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.limits = config.limits
        self.speech = SpeechDetector(config)

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
        t0 = start_time(container)
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
        heard = speech.finish()
        duration = declared if declared else last_ts
        if declared and last_ts and last_ts < 0.9 * declared - 1.0:
            raise StageFailure(f"{kind} is truncated or corrupt: the header says {declared:.1f} s "
                               f"but the data ends at {last_ts:.1f} s")
        meta = _metadata(container, vs, audio, duration, iframes is not None)
        return {"duration_s": float(duration), "meta_json": json.dumps(meta, ensure_ascii=False),
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


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def _size(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    return fs.get_file_info(path).size or 0


def read_only(container: av.container.InputContainer, streams: list[av.stream.Stream]) -> None:
    """Make the demuxer skip every other stream's packets unread: the video's bytes are most of a file's."""
    keep = {s.index for s in streams}
    for s in container.streams:
        if s.index not in keep:
            s.discard = av.stream.Discard.all


def start_time(container: av.container.InputContainer) -> float:
    """Seconds of the container's first timestamp: the media's time axis starts there."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


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
    """One read of the file: decode the audio and resample it to 16 kHz mono into ``speech``, note video
    keyframe times (no decode).

    Stops at ``max_s`` of media: a file whose header declares no duration cannot run on unbounded.
    """
    streams = [s for s in (audio, vs) if s is not None]
    read_only(container, streams)
    # Time bases as integers once: Fraction arithmetic on every packet cost a tenth of the audio's decode.
    # ``pts * num / den`` is what PyAV's frame.time computes, so keyframe times match the frames' times.
    time_bases = {s.index: (s.time_base.numerator, s.time_base.denominator) for s in streams if s.time_base}
    sound = _Resampled(speech, t0) if audio is not None else None
    keyframes: list[float] = []
    last = 0.0
    for packet in container.demux(streams):
        num, den = time_bases.get(packet.stream_index, (0, 1))
        if packet.pts is not None and num:
            end = (packet.pts + (packet.duration or 0)) * num / den - t0
            last = max(last, end)
            if last > max_s:
                raise StageFailure(f"media runs past {_span(max_s)} (limits.max_duration_s) although its "
                                   "header does not say so")
        if packet.stream is vs:
            if packet.is_keyframe and packet.pts is not None and num:
                keyframes.append(packet.pts * num / den - t0)
            continue
        for frame in packet.decode():
            sound.add(frame)
    if sound is not None:
        sound.finish()
    return keyframes, last


class _Resampled:
    """Decoded audio frames → 16 kHz mono float32 into a :class:`SpeechFinder`, resampled in blocks.

    The frames wait in a FIFO at the decoder's own rate and format, and the resampler takes
    :data:`RESAMPLE_BLOCK_S` of them at a time: resampling each decoded frame (43 a second for AAC) cost
    more in PyAV's per-call work (filter-graph push and pull, an array per frame) than the decode itself.
    The resampler's output does not depend on how its input is cut, so the samples are the same.
    """

    def __init__(self, speech: SpeechFinder, t0: float) -> None:
        self.speech, self.t0 = speech, t0
        self.fifo = av.AudioFifo()
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.block = 0  # samples at the decoder's rate: known from the first frame
        self.started = False

    def add(self, frame: av.AudioFrame) -> None:
        self.block = self.block or int(RESAMPLE_BLOCK_S * frame.sample_rate)
        if not self.started and frame.time is not None:  # audio that starts late stays aligned
            if self.fifo.samples:
                self._resample(self.fifo.read())
            self.speech.pad_to(int(round(max(0.0, frame.time - self.t0) * SAMPLE_RATE)))
            self.started = True
        frame.pts = None  # the FIFO would refuse a gap in the timestamps; the samples alone count, as before
        self.fifo.write(frame)
        if self.fifo.samples >= self.block:
            self._resample(self.fifo.read())

    def finish(self) -> None:
        if self.fifo.samples:
            self._resample(self.fifo.read())
        self._resample(None)

    def _resample(self, frame: av.AudioFrame | None) -> None:
        for out in self.resampler.resample(frame):
            self.speech.feed(out.to_ndarray()[0])


def _metadata(container: av.container.InputContainer, vs: av.video.stream.VideoStream | None,
              audio: av.audio.stream.AudioStream | None, duration: float, keyframes_listed: bool) -> dict[str, Any]:
    """What a person (or a prompt) wants to know about the file; tags lower-cased, empty ones left out."""
    tags = {k.lower(): v for k, v in container.metadata.items()}
    meta: dict[str, Any] = {"container": container.format.long_name, "duration_s": round(duration, 3),
                            "bit_rate": container.bit_rate or None}
    if vs is not None:
        ctx = vs.codec_context
        meta.update(width=ctx.width, height=ctx.height, codec=ctx.name,
                    fps=round(float(vs.average_rate), 3) if vs.average_rate else None)
        if not keyframes_listed:
            meta["keyframes"] = "not listed: no container index and the file is too large to scan"
    if audio is not None:
        a = audio.codec_context
        meta.update(audio_codec=a.name, audio_sample_rate=a.sample_rate, audio_channels=a.channels,
                    audio_language=audio.metadata.get("language") or None)
    meta.update({k: tags[k] for k in _TAGS if tags.get(k)})
    return {k: v for k, v in meta.items() if v is not None}
