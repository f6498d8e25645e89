"""Decode then frames, as the job runs them: speech chunks and keyframes, frames sampled by seeking, shots,
readable errors; local and S3."""
from __future__ import annotations

import json
from pathlib import Path

import av
import boto3
import numpy as np
import pytest

from corpusflow.actors.decode import DecodeMedia, start_time
from corpusflow.actors.frames import SampleFrames, frame_dims, nearest_keyframes, sample_times, upright_rgb
from corpusflow.actors.speech import SpeechDetector
from corpusflow.actors.identify import Identify
from corpusflow.contracts.config import JobConfig, VideoConfig
from tests import media

SECONDS, FPS, SCENES = 6.0, 10, 3  # scenes change at 2 s and 4 s; a keyframe every second


def config(**video) -> JobConfig:
    return JobConfig(corpus="/tmp/corpus", out="/tmp/out", video={"fps": 1.0, "frame_size": 112, **video})


def batch(paths: list[Path], kinds: list[str], errors: list[str] | None = None) -> dict[str, np.ndarray]:
    errors = errors or [""] * len(paths)
    return {"uri": np.asarray([str(p) for p in paths]), "kind": np.asarray(kinds),
            "error_stage": np.asarray(["earlier" if e else "" for e in errors]), "error": np.asarray(errors)}


def decode(cfg: JobConfig, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode, then sample frames (the job runs ASR between them)."""
    return SampleFrames(cfg)(DecodeMedia(cfg)(rows))


def _assert_speech(out: dict[str, np.ndarray], i: int, duration: float) -> None:
    """Row ``i``'s speech chunks: ordered spans inside the media whose samples are exactly the ones carried."""
    start, end = out["speech_start_s"][i], out["speech_end_s"][i]
    assert len(start) >= 1 and np.all(start >= 0) and np.all(end > start) and end[-1] <= duration + 0.05
    assert np.all(start[1:] >= end[:-1])
    assert int(np.sum(np.rint(end * 16000) - np.rint(start * 16000))) == len(out["speech_pcm"][i])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode")
    return {c: media.make_video(root / f"clip.{c}", seconds=SECONDS, fps=FPS, container=c, scenes=SCENES)
            for c in media.VIDEO_CONTAINERS}


@pytest.mark.parametrize("container", media.VIDEO_CONTAINERS)
def test_video_round_trip(videos, container):
    decoded = DecodeMedia(config())(batch([videos[container]], ["video"]))
    assert "frames" not in decoded  # what travels through the ASR actors holds no pictures
    out = SampleFrames(config())(decoded)
    assert out["error"][0] == ""
    duration = out["duration_s"][0]
    assert SECONDS - 0.1 <= duration <= SECONDS + 0.2
    frames, ts = out["frames"][0], out["frame_ts"][0]
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3
    assert frames.shape[1] % 28 == 0 and frames.shape[2] % 28 == 0 and frames.shape[2] > frames.shape[1]  # 4:3
    assert abs(len(frames) - duration * 1.0) <= 1 and len(ts) == len(frames)
    assert np.all(np.diff(ts) > 0) and ts[0] >= 0 and ts[-1] <= duration
    # the frame sampled at each time shows that time's scene (red, green, blue): seeking lands right
    for frame, t in zip(frames, ts):
        if min(abs(t - 2.0), abs(t - 4.0)) > 0.15:
            assert int(np.argmax(frame.reshape(-1, 3).mean(0))) == min(int(t // 2), 2)
    shots = out["shot_ts"][0]
    assert all(np.min(np.abs(shots - cut)) <= 1.01 for cut in (2.0, 4.0)) and len(shots) <= 3
    keyframes = out["iframe_ts"][0]
    assert len(keyframes) >= 5 and np.all(np.diff(keyframes) > 0) and keyframes[-1] <= duration
    speech = out["speech_pcm"][0]  # the soundtrack is speech-like throughout: (nearly) all of it is kept
    assert out["has_audio"][0] and speech.dtype == np.int16
    assert 0.8 * duration * 16000 <= len(speech) <= 1.02 * duration * 16000
    assert 0.05 * 32768 < np.abs(speech.astype(np.int32)).max() < 32768
    _assert_speech(out, 0, duration)
    meta = json.loads(out["meta_json"][0])
    assert meta["width"] == 160 and meta["height"] == 120
    assert meta.get("title") == ("corpusflow test video" if container != "ts" else None)  # TS has no title tag
    assert meta["audio_sample_rate"] > 0 and meta["container"]


def test_video_without_audio_and_audio_files(tmp_path):
    silent = media.make_video(tmp_path / "silent.mp4", seconds=2.0, audio=False)
    sounds = [media.make_audio(tmp_path / f"s.{c}", seconds=2.0, container=c) for c in ("wav", "mp3", "m4a")]
    out = decode(config(), batch([silent, *sounds], ["video", "audio", "audio", "audio"]))
    assert list(out["error"]) == [""] * 4
    assert not out["has_audio"][0] and len(out["speech_pcm"][0]) == 0 and len(out["frames"][0]) == 2
    assert len(out["speech_start_s"][0]) == 0
    for i in range(1, 4):
        assert out["has_audio"][i] and 0.8 * 32000 <= len(out["speech_pcm"][i]) <= 32000 + 1600
        _assert_speech(out, i, out["duration_s"][i])
        assert out["frames"][i].shape == (0, 112, 112, 3) and len(out["frame_ts"][i]) == 0
        assert abs(out["duration_s"][i] - 2.0) < 0.1


def test_frame_cap_spreads_frames_and_short_video_gets_one(tmp_path):
    video = media.make_video(tmp_path / "v.mkv", seconds=6.0, container="mkv")
    short = media.make_video(tmp_path / "short.mp4", seconds=0.5, audio=False)
    out = decode(config(fps=2.0, max_frames=3), batch([video], ["video"]))
    assert np.allclose(out["frame_ts"][0], [0.0, 2.0, 4.0], atol=0.11)
    out = decode(config(fps=0.1), batch([short], ["video"]))
    assert len(out["frame_ts"][0]) == 1 and out["frame_ts"][0][0] < 0.11


def test_seeking_decodes_a_small_fraction_of_frames(tmp_path):
    """20 s at 10 fps = 200 frames; 5 samples with a keyframe every second need at most 5 GOPs (50 frames)."""
    video = media.make_video(tmp_path / "long.mp4", seconds=20.0, size=(64, 48), audio=False)
    stage = SampleFrames(config(fps=0.25))
    out = stage(DecodeMedia(config(fps=0.25))(batch([video], ["video"])))
    assert len(out["frame_ts"][0]) == 5
    assert stage.frames_decoded <= 5 * FPS
    assert stage.frames_decoded < 200 / 4


def test_bad_media_become_error_rows_and_others_succeed(videos, tmp_path):
    corrupt = media.corrupt_copy(videos["mp4"], tmp_path / "corrupt.mp4")
    truncated = media.truncate_copy(videos["mp4"], tmp_path / "truncated.mp4", 0.5)
    truncated_mkv = media.truncate_copy(videos["mkv"], tmp_path / "truncated.mkv", 0.4)
    garbage_audio = media.corrupt_copy(media.make_audio(tmp_path / "a.wav", 1.0), tmp_path / "bad.wav", keep=12)
    paths = [corrupt, truncated, truncated_mkv, garbage_audio, videos["webm"]]
    out = decode(config(), batch(paths, ["video", "video", "video", "audio", "video"]))
    assert list(out["error_stage"]) == ["decode"] * 4 + [""]
    for message in out["error"][:4]:
        assert message.startswith(("video could not be decoded: ", "video is truncated", "audio could not be decoded: "))
    assert out["error"][0] == "video could not be decoded: invalid data found when processing input"
    assert "truncated" in out["error"][2]
    assert len(out["frames"][4]) == 6 and out["frames"][0].shape == (0, 112, 112, 3)


def test_rows_failed_earlier_pass_through(videos):
    out = decode(config(), batch([videos["mp4"], videos["avi"]], ["video", "video"], ["", "identify broke"]))
    assert out["error"][1] == "identify broke" and out["error_stage"][1] == "earlier"
    assert len(out["frames"][0]) == 6 and len(out["frames"][1]) == 0


def test_frame_geometry_helpers():
    assert frame_dims(1920, 1080, 448) == (448, 252)
    assert frame_dims(1080, 1920, 448) == (252, 448)
    assert frame_dims(160, 120, 112) == (112, 84)
    cfg = VideoConfig(fps=0.1, max_frames=4)
    assert list(sample_times(25.0, cfg)) == [0.0, 10.0]
    assert list(sample_times(3 * 3600.0, cfg)) == [0.0, 2700.0, 5400.0, 8100.0]


def test_identify_and_decode_read_s3(videos, s3_server, s3_bucket):
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(videos["mkv"]), s3_bucket, "corpus/clip.mkv")
    uri = f"s3://{s3_bucket}/corpus/clip.mkv"
    cfg = config()
    found = Identify(cfg)({"uri": np.asarray([uri]), "bytes": np.asarray([0]), "error_stage": np.asarray([""]),
                           "error": np.asarray([""])})
    assert (found["kind"][0], found["format"][0], found["error"][0]) == ("video", "matroska", "")
    out = decode(cfg, found)
    assert out["error"][0] == ""
    assert len(out["frames"][0]) == 6 and out["has_audio"][0] and len(out["iframe_ts"][0]) >= 5


def test_portrait_phone_video_is_turned_upright(tmp_path):
    """Coded 160×120 with a 90° (counter-clockwise) display matrix is shown 120 wide × 160 high."""
    video = media.make_video(tmp_path / "phone.mp4", seconds=1.0, audio=False, rotation=90)
    out = decode(config(), batch([video], ["video"]))
    frames = out["frames"][0]
    assert frames.shape[1:] == (112, 84, 3)  # portrait, both multiples of 28
    # at t=0 the white bar is the coded picture's left edge; turned counter-clockwise it is the bottom edge
    first = frames[0].astype(np.float32)
    assert first[-3:].mean() > 200 > first[:3].mean()
    meta = json.loads(out["meta_json"][0])
    assert (meta["width"], meta["height"]) == (160, 120)


def test_near_duplicate_frames_are_dropped_and_kept_times_stay_exact(videos):
    """Three scenes sampled at 1 fps: 6 frames, of which 3 only move a thin bar; one frame per scene is kept."""
    every = decode(config(), batch([videos["mp4"]], ["video"]))
    deduped = decode(config(dedup_threshold=0.12), batch([videos["mp4"]], ["video"]))
    all_ts, kept_ts = every["frame_ts"][0], deduped["frame_ts"][0]
    assert len(all_ts) == 6 and len(kept_ts) == SCENES
    assert set(kept_ts) <= set(all_ts)  # the very timestamps of frames that were decoded and shown
    assert [min(int(t // 2), 2) for t in kept_ts] == [0, 1, 2]  # one per scene
    assert len(deduped["frames"][0]) == SCENES
    assert json.loads(deduped["meta_json"][0])["duplicate_frames_dropped"] == 6 - SCENES
    assert "duplicate_frames_dropped" not in json.loads(every["meta_json"][0])


def test_keyframe_sampling_decodes_one_picture_per_frame_at_keyframe_times(tmp_path):
    video = media.make_video(tmp_path / "long.mp4", seconds=20.0, size=(64, 48), audio=False)
    exact_stage, key_stage = SampleFrames(config(fps=0.3)), SampleFrames(config(fps=0.3, seek="keyframe"))
    decoded = DecodeMedia(config(fps=0.3))(batch([video], ["video"]))
    exact, keyed = exact_stage(decoded), key_stage(decoded)
    assert keyed["error"][0] == "" and len(keyed["frame_ts"][0]) == len(exact["frame_ts"][0]) == 6
    assert set(keyed["frame_ts"][0]) <= set(keyed["iframe_ts"][0])  # exact timestamps of the frames shown
    assert np.all(np.abs(keyed["frame_ts"][0] - exact["frame_ts"][0]) <= 0.5)  # the nearest keyframe (1-s GOP)
    assert key_stage.frames_decoded == 6 < exact_stage.frames_decoded


def _shown(path: Path, side: int) -> list[tuple[float, bool, np.ndarray]]:
    """Every picture of the video in display order, decoded front to back without seeking or skipping:
    (time on the media's axis, keyframe, RGB as frames delivers it)."""
    with av.open(str(path)) as container:
        vs, t0 = container.streams.video[0], start_time(container)
        dims = frame_dims(vs.codec_context.width, vs.codec_context.height, side)
        return [(f.time - t0, f.key_frame, upright_rgb(f, *dims)) for f in container.decode(vs)]


@pytest.mark.parametrize("container", ["mp4", "mkv"])  # keyframes from the MP4 index (decoding times) and from a scan
@pytest.mark.parametrize("seek", ["exact", "keyframe"])
def test_seeking_gives_the_pictures_a_front_to_back_decode_shows(tmp_path, container, seek):
    """B-frames (decoded out of display order, some referred to by none) and the shortcuts frames takes
    (the keyframe decoded alone, such B-frames before the target left undecoded) change no sampled picture."""
    video = media.make_video(tmp_path / f"b.{container}", seconds=20.0, size=(160, 120), audio=False, bframes=3)
    cfg = config(fps=0.3, seek=seek)
    out = decode(cfg, batch([video], ["video"]))
    shown = _shown(video, 112)
    step = 1.0 / FPS
    targets = sample_times(float(out["duration_s"][0]), cfg.video)
    if seek == "keyframe":
        targets = nearest_keyframes(targets, out["iframe_ts"][0])
    expected = [next(s for s in shown if s[0] >= t - step / 2 and (seek == "exact" or s[1])) for t in targets]
    assert out["error"][0] == "" and len(expected) == 6
    np.testing.assert_array_equal(out["frame_ts"][0], [s[0] for s in expected])
    np.testing.assert_array_equal(out["frames"][0], np.stack([s[2] for s in expected]))


def test_speech_comes_from_the_samples_of_resampling_each_decoded_frame(tmp_path):
    """Decode resamples the audio in blocks: the 16 kHz samples, and so the speech chunks and their samples, are
    those of resampling one decoded frame at a time (as decode did before), over more than one VAD window."""
    sound = media.make_audio(tmp_path / "talk.m4a", seconds=130.0, container="m4a")  # AAC at 22.05 kHz
    cfg = config()
    out = DecodeMedia(cfg)(batch([sound], ["audio"]))
    with av.open(str(sound)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        pieces = [o.to_ndarray()[0] for f in container.decode(audio=0) for o in resampler.resample(f)]
        pcm = np.concatenate(pieces + [o.to_ndarray()[0] for o in resampler.resample(None)])
    assert abs(len(pcm) / 16000 - 130.0) < 0.1
    expected = SpeechDetector(cfg).detect(pcm)
    assert len(expected.start_s) >= 5, "several chunks, over two VAD windows"
    np.testing.assert_array_equal(out["speech_start_s"][0], expected.start_s)
    np.testing.assert_array_equal(out["speech_end_s"][0], expected.end_s)
    np.testing.assert_array_equal(out["speech_pcm"][0], expected.pcm)
