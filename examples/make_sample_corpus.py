"""Write the bundled sample corpus: two short videos, one audio file, two PDFs, a corrupt video, a text file.

    python examples/make_sample_corpus.py examples/sample

Everything is synthetic (coloured scenes, a speech-like tone, generated PDFs), made with the same
generators as the tests, so the corpus exercises every route of a job (video, audio, pdf, error,
skipped) without shipping anyone's data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere: tests/ holds the generators

from tests import media  # noqa: E402

PROTOCOL_TEXT = (  # one text per page, so that a search for a topic lands on its page
    "Protocol CF-101-02: a randomised, double-blind study of CF-101 versus placebo in adults with "
    "moderate asthma. Primary endpoint: change in FEV1 at week 12.",
    "Dosing schedule: one 50 mg tablet of CF-101 or placebo each morning for 12 weeks, taken with water. "
    "A missed dose is skipped, never doubled.",
    "Adverse events are recorded at every visit and reviewed by the safety board within 48 hours.",
    "Visits: screening, baseline, weeks 2, 4, 8 and 12, and a follow-up call two weeks after the last dose.",
)
LEAFLET_TEXT = "Patient leaflet: take one tablet of CF-101 each morning with water. Do not exceed the stated dose."


def make_sample_corpus(out: Path) -> list[Path]:
    """Write the sample files under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = [
        media.make_video(out / "videos" / "site_tour.mp4", seconds=30.0, fps=10, size=(320, 240), scenes=4,
                         title="Manufacturing site tour"),
        media.make_video(out / "videos" / "lab_walkthrough.webm", seconds=24.0, fps=10, size=(320, 180),
                         scenes=3, container="webm", title="QC lab walkthrough"),
        media.make_audio(out / "audio" / "interview.mp3", seconds=10.0, container="mp3"),
        media.make_pdf(out / "docs" / "protocol.pdf", pages=4, images=2, text=PROTOCOL_TEXT,
                       title="Protocol CF-101-02"),
        media.make_pdf(out / "docs" / "leaflet.pdf", pages=1, images=0, text=LEAFLET_TEXT,
                       title="CF-101 patient leaflet"),
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
