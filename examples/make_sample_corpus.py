"""Write the bundled sample corpus: two short videos, two audio files (English and German), three PDFs (one
scanned), a corrupt video, a text file.

    python examples/make_sample_corpus.py examples/sample

Everything is synthetic (coloured scenes, English and German speech from espeak-ng, generated PDFs, a scan
simulated by rendering text to an image-only page), made with the same generators as the tests, so the
corpus exercises every route of a job (video, audio, pdf, OCR, error, skipped) without shipping anyone's
data, and a real ASR model (small-real, the default) has words to hear and languages to tell apart. Needs
Debian's espeak-ng.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: tests/ holds the generators

from tests import media  # noqa: E402
from tests.spoken import script, speak  # noqa: E402

PROTOCOL_TEXT = (  # one text per page, so that a search for a topic lands on its page
    "Protocol CF-101-02: a randomised, double-blind study of CF-101 versus placebo in adults with "
    "moderate asthma. Primary endpoint: change in FEV1 at week 12.",
    "Dosing schedule: one 50 mg tablet of CF-101 or placebo each morning for 12 weeks, taken with water. "
    "A missed dose is skipped, never doubled.",
    "Adverse events are recorded at every visit and reviewed by the safety board within 48 hours.",
    "Visits: screening, baseline, weeks 2, 4, 8 and 12, and a follow-up call two weeks after the last dose.",
)
LEAFLET_TEXT = "Patient leaflet: take one tablet of CF-101 each morning with water. Do not exceed the stated dose."
SCANNED_PAGES = [
    "Batch record 4711, filling line two. The line was cleaned and inspected before use. The temperature "
    "stayed between two and eight degrees for the whole shift. Signed by the shift supervisor.",
    "Deviation report: one vial was rejected at visual inspection because of a cracked neck. The batch was "
    "released by the qualified person after review of the records.",
]
# (start second, voice, words per minute, sentence) of each recording's speech
NARRATION = {
    "interview": [(0.5, "en-us", 150, "Thank you for joining us. Can you describe your role on the study?"),
                  (5.0, "en-us+f3", 150, "I coordinate the clinic visits and record every adverse event.")],
    "site_tour": [(1.0, "en-us", 150, "Welcome to the manufacturing site. This is the main entrance."),
                  (8.0, "en-us", 150, "Here the tablets are pressed and coated before packaging."),
                  (16.0, "en-us", 150, "Every batch is sampled and sent to the quality control laboratory."),
                  (23.0, "en-us", 150, "Finished goods are stored in the warehouse at room temperature.")],
    "lab_walkthrough": [(1.0, "en-us+f3", 145, "This is the quality control laboratory."),
                        (7.0, "en-us+f3", 145, "Samples are tested for identity, purity and dissolution."),
                        (15.0, "en-us+f3", 145, "Results are reviewed before the batch is released.")],
    # German in the voice and pace docs/quality.md measured (base names it German in every clean clip)
    "besprechung": [(0.7, "de", 160, "Das Qualitätsteam hat die Chargenprotokolle am Montag geprüft."),
                    (6.5, "de", 160, "Jede Abweichung wurde vor der Freigabe des Produkts abgeschlossen.")],
}


def _speech(name: str, seconds: float):
    """The recording's narration as (samples, rate) on a track of ``seconds``."""
    said = [(at, speak(text, voice=voice, wpm=wpm)) for at, voice, wpm, text in NARRATION[name]]
    rate = said[0][1].rate
    return script(said, seconds, rate)[0], rate


def make_sample_corpus(out: Path) -> list[Path]:
    """Write the sample files under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = [
        media.make_video(out / "videos" / "site_tour.mp4", seconds=30.0, fps=10, size=(320, 240), scenes=4,
                         title="Manufacturing site tour", speech=_speech("site_tour", 30.0)),
        media.make_video(out / "videos" / "lab_walkthrough.webm", seconds=24.0, fps=10, size=(320, 180),
                         scenes=3, container="webm", title="QC lab walkthrough", speech=_speech("lab_walkthrough", 24.0)),
        media.make_audio(out / "audio" / "interview.mp3", seconds=10.0, container="mp3",
                         speech=_speech("interview", 10.0)),
        media.make_audio(out / "audio" / "besprechung.mp3", seconds=12.0, container="mp3",
                         speech=_speech("besprechung", 12.0)),
        media.make_pdf(out / "docs" / "protocol.pdf", pages=4, images=2, text=PROTOCOL_TEXT,
                       title="Protocol CF-101-02"),
        media.make_pdf(out / "docs" / "leaflet.pdf", pages=1, images=0, text=LEAFLET_TEXT,
                       title="CF-101 patient leaflet"),
        media.make_scanned_pdf(out / "docs" / "batch_record_scan.pdf", SCANNED_PAGES, title="Batch record 4711 (scan)"),
    ]
    clip = media.make_video(out / "clip.tmp.mp4", seconds=4.0, size=(160, 120))
    files.append(media.corrupt_copy(clip, out / "videos" / "broken_upload.mp4"))
    clip.unlink()
    notes = out / "notes.txt"
    notes.write_text("Sample corpus for corpusflow. This text file is not a supported type and is skipped.\n")
    files.append(notes)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder to write the sample corpus into")
    for path in make_sample_corpus(parser.parse_args().outdir):
        print(f"{path.stat().st_size:>9,d}  {path}")


if __name__ == "__main__":
    main()
