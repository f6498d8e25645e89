"""Speech detection: where a track holds speech, as the chunks the ASR engines decode.

whisperX's shape is VAD → speech merged into chunks of at most ``asr.chunk_s`` → batched decoding.
The first two steps are CPU work (Silero VAD takes ~4 s of one core per 30-minute track), so they
are a stage of their own: fused with decode's tasks in the batch job and run in the decode
deployment online, while the ASR actors' GPU share only decodes chunks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from corpusflow.actors.asr import checked_pcm
from corpusflow.actors.decode import PCM_RATE
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Row, Stage, StageContract


def merge_speech(regions: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive speech regions (sample offsets) joined into chunks no longer than ``max_samples``.

    This is whisperX's merge (``whisperx.vads.Vad.merge_chunks``): a chunk takes the next region
    while it still ends within ``max_samples`` of the chunk's start, else a new chunk begins; for
    regions that fit (the VAD already splits at ``asr.chunk_s``) the chunks are the same. It also
    cuts a region longer than that into equal pieces (whisperX would pass it on whole), so every
    chunk fits Whisper's window, and it needs no pyannote import.
    """
    pieces: list[tuple[int, int]] = []
    for start, end in regions:
        n = max(1, -(-(end - start) // max_samples))
        edges = np.linspace(start, end, n + 1).round().astype(int)
        pieces += [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    chunks: list[tuple[int, int]] = []
    for start, end in pieces:
        if chunks and end - chunks[-1][0] <= max_samples:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, end))
    return chunks


class DetectSpeech(Stage):
    """Ray Data / Serve stage: 16 kHz mono ``pcm`` → speech chunks (seconds on the media's time axis).

    Silero VAD is the offline ONNX model faster-whisper ships (whisperX's default, pyannote, needs a
    download), with whisperX's hysteresis: speech starts above ``asr.vad_onset`` and ends below
    ``asr.vad_offset``. Keeps ``pcm``: the ASR stage decodes it.
    """

    contract = StageContract(name="speech", reads=("pcm",), kinds=("video", "audio"),
                             writes={"speech_start_s": "tensor[float64]", "speech_end_s": "tensor[float64]"})

    def __init__(self, config: StageConfig) -> None:
        super().__init__(config)
        from faster_whisper.vad import VadOptions, get_vad_model

        asr = config.asr
        self._options = VadOptions(threshold=asr.vad_onset, neg_threshold=asr.vad_offset,
                                   max_speech_duration_s=asr.chunk_s)
        self._max_samples = int(asr.chunk_s * PCM_RATE)
        get_vad_model()  # the ONNX session, once per process

    def process_row(self, row: Row) -> dict[str, Any]:
        from faster_whisper.vad import get_speech_timestamps

        pcm = checked_pcm(row["pcm"])
        stamps = get_speech_timestamps(pcm, self._options, sampling_rate=PCM_RATE) if len(pcm) else []
        chunks = merge_speech([(s["start"], s["end"]) for s in stamps], self._max_samples)
        return {"speech_start_s": np.asarray([a / PCM_RATE for a, _ in chunks], dtype=np.float64),
                "speech_end_s": np.asarray([b / PCM_RATE for _, b in chunks], dtype=np.float64)}
