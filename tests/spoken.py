"""Speech with known words at known times, from espeak-ng's C library (Debian ``espeak-ng``).

The library reports, while it synthesises, the sample at which each word begins: exact ground truth for
word error rate and word-timestamp error, in any of espeak-ng's languages and voices, made offline in
a second. Used by the ASR quality test, the sample corpus builder and benchmarks/asr_quality.py.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Spoken:
    """Mono float32 samples at ``rate``, the text spoken, and its words with start and end in seconds.

    ``words`` holds the words espeak-ng reported (it folds a few short words into their neighbour, e.g.
    "in the"): score transcripts against ``text``, time words against ``words``.
    """

    pcm: np.ndarray
    rate: int
    text: str
    words: list[tuple[float, float, str]]


class _Synth:
    """The library, initialised once per process; its state is global, so calls take turns."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as e:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)") from e
        self.rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng could not be initialised (is espeak-ng-data installed?)")
        self._chunks: list[np.ndarray] = []
        self._starts: list[tuple[int, int, int]] = []  # (character offset, length, sample)
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the library calls it later
        self._lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_WORD:
                self._starts.append((e.text_position - 1, e.length, e.sample))
            i += 1
        return 0

    def say(self, text: str, voice: str, wpm: int, pitch: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        self._chunks, self._starts = [], []
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self._lib.espeak_SetParameter(_RATE, wpm, 0)
        self._lib.espeak_SetParameter(_PITCH, pitch, 0)
        data = text.encode()
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak-ng failed to speak {text[:40]!r}")
        return np.concatenate(self._chunks or [np.zeros(0, np.float32)]), self._starts


_SYNTH: list[_Synth] = []


def speak(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> Spoken:
    """``text`` spoken by espeak-ng's ``voice`` (e.g. en-us, en-gb+f3, de, fr) at ``wpm`` words per minute.

    A word's end is the last audible sample before the next word starts (espeak-ng reports starts only).
    """
    if not _SYNTH:
        _SYNTH.append(_Synth())
    synth = _SYNTH[0]
    with synth.lock:
        pcm, starts = synth.say(text, voice, wpm, pitch)
    data = text.encode()
    words = []
    for k, (offset, length, sample) in enumerate(starts):
        word = data[offset:offset + length].decode(errors="replace")
        if not re.search(r"\w", word):
            continue
        stop = starts[k + 1][2] if k + 1 < len(starts) else len(pcm)
        audible = np.flatnonzero(np.abs(pcm[sample:stop]) > 0.02)
        end = sample + (int(audible[-1]) + 1 if len(audible) else stop - sample)
        words.append((sample / synth.rate, end / synth.rate, word))
    return Spoken(pcm, synth.rate, text, words)


def resample(pcm: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Band-limited resampling through FFmpeg's resampler (PyAV), as a decoder would do it."""
    import av

    if rate == to:
        return pcm.astype(np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to)
    frame = av.AudioFrame.from_ndarray(pcm.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32)


def script(sentences: list[tuple[float, Spoken]], seconds: float, rate: int) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Utterances placed at given start times on one track of ``seconds`` at ``rate``; their timed words on its axis."""
    track = np.zeros(int(seconds * rate), np.float32)
    words = []
    for at, s in sentences:
        pcm = resample(s.pcm, s.rate, rate)
        a = int(at * rate)
        n = min(len(pcm), len(track) - a)
        track[a:a + n] += pcm[:n]
        words += [(at + ws, at + we, w) for ws, we, w in s.words if at + we <= seconds]
    return track, words


# Sentences of the pharmaceutical-plant kind in the languages espeak-ng speaks well, and its voice for each:
# ground truth for word error rate and language identification (benchmarks/quality.py, the ASR tests,
# the sample corpus). Six a language (twelve in English): two sentences a clip.
VOICES = {"en": "en-us", "de": "de", "es": "es", "fr": "fr", "it": "it", "pt": "pt-br", "nl": "nl", "pl": "pl"}
# espeak-ng's French voice speaks a sentence in 0.6x the time the others take at the same nominal rate (too fast
# for Whisper base to hear it as French at all); this rate gives it the others' pace at 160
WPM_160 = {"fr": 100}
SENTENCES = {
    "en": ["The quality team reviewed the batch records on Monday.",
           "Every deviation was closed before the product was released.",
           "Please send the stability report to the regulatory office.",
           "We expect the final results by the end of next week.",
           "This room holds the filling line for sterile vials.",
           "Operators wear gowns and gloves at all times.",
           "The samples are stored in the freezer at a very low temperature.",
           "Each tube carries a barcode and the date of collection.",
           "The patient reported a mild headache after the second dose.",
           "Blood pressure was measured at every visit during the study.",
           "The clean room is inspected and cleaned before each shift.",
           "Labels are printed and checked against the approved master copy."],
    "de": ["Das Qualitätsteam hat die Chargenprotokolle am Montag geprüft.",
           "Jede Abweichung wurde vor der Freigabe des Produkts abgeschlossen.",
           "Bitte schicken Sie den Stabilitätsbericht an die Behörde.",
           "Wir erwarten die Ergebnisse bis zum Ende der nächsten Woche.",
           "In diesem Raum steht die Abfüllanlage für sterile Ampullen.",
           "Die Mitarbeiter tragen jederzeit Kittel und Handschuhe."],
    "es": ["El equipo de calidad revisó los registros del lote el lunes.",
           "Cada desviación se cerró antes de liberar el producto.",
           "Por favor envíe el informe de estabilidad a la oficina reguladora.",
           "Esperamos los resultados finales antes del fin de la próxima semana.",
           "En esta sala está la línea de llenado de viales estériles.",
           "Los operarios llevan bata y guantes en todo momento."],
    "fr": ["L'équipe qualité a examiné les dossiers de lot lundi.",
           "Chaque écart a été clos avant la libération du produit.",
           "Veuillez envoyer le rapport de stabilité au service réglementaire.",
           "Nous attendons les résultats finaux avant la fin de la semaine prochaine.",
           "Cette salle abrite la ligne de remplissage des flacons stériles.",
           "Les opérateurs portent toujours une blouse et des gants."],
    "it": ["Il team qualità ha esaminato i registri del lotto lunedì.",
           "Ogni deviazione è stata chiusa prima del rilascio del prodotto.",
           "Per favore inviate il rapporto di stabilità all'ufficio regolatorio.",
           "Aspettiamo i risultati finali entro la fine della prossima settimana.",
           "In questa stanza si trova la linea di riempimento delle fiale sterili.",
           "Gli operatori indossano sempre camice e guanti."],
    "pt": ["A equipe de qualidade revisou os registros do lote na segunda-feira.",
           "Cada desvio foi encerrado antes da liberação do produto.",
           "Por favor envie o relatório de estabilidade para o escritório regulatório.",
           "Esperamos os resultados finais até o fim da próxima semana.",
           "Nesta sala fica a linha de envase de frascos estéreis.",
           "Os operadores usam avental e luvas o tempo todo."],
    "nl": ["Het kwaliteitsteam heeft maandag de batchrapporten bekeken.",
           "Elke afwijking werd gesloten voordat het product werd vrijgegeven.",
           "Stuur het stabiliteitsrapport alstublieft naar de toezichthouder.",
           "We verwachten de eindresultaten voor het einde van volgende week.",
           "In deze ruimte staat de vullijn voor steriele flacons.",
           "De medewerkers dragen altijd een schort en handschoenen."],
    "pl": ["Zespół jakości sprawdził dokumentację serii w poniedziałek.",
           "Każde odchylenie zostało zamknięte przed zwolnieniem produktu.",
           "Proszę wysłać raport stabilności do działu rejestracji.",
           "Oczekujemy wyników końcowych do końca przyszłego tygodnia.",
           "W tym pomieszczeniu znajduje się linia napełniania sterylnych fiolek.",
           "Pracownicy zawsze noszą fartuchy i rękawiczki."],
}
