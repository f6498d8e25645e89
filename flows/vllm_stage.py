"""Describe for ``vlm_engine: vllm`` in a batch job: Ray's ``ray.data.llm`` vLLM processor, wrapped.

Ray's processor brings what a batch job wants from vLLM — an autoscaling pool of GPU engine
actors, several batches in flight per engine, CPU stages for image parsing, chat template and
tokenisation — so this module does not re-implement any of it. It supplies what is ours: the
prompt (evenly spread frames, each after its timestamp, then metadata, the timestamped transcript
and the task; actors/prompts/video.py), the schema that constrains the answer (actors/prompts/answer.py)
and the validation of the answer into the same columns as :class:`corpusflow.actors.vlm.Describe`.

Differences from Describe: the transcript is thinned (every k-th segment, over the whole video) to
fit one context instead of switching to overlapping windows, and an invalid answer is recorded,
not re-asked. Frames travel to the processor as JPEG data URLs (strings), vLLM's documented
multimodal chat input, so rows stay Arrow-native (JPEG at quality 95: the engine sees the frames
slightly changed, unlike the in-process engines).
"""
from __future__ import annotations

import base64
import io
import json
import time
from typing import Any, Callable, Mapping

import numpy as np

from corpusflow.actors.vlm import Describe, answer_columns, even_indices, video_inputs
from corpusflow.actors.prompts.answer import AnswerError, schema_for, validate
from corpusflow.actors.engines.vlm import frame_label
from corpusflow.actors.prompts.video import DESCRIBE_TASK, SYSTEM, transcript_text, user_text
from corpusflow.actors.engines.vlm_vllm import engine_kwargs, model_path, sampling_params
from corpusflow.actors.models.compile_cache import cache_env, local_compile_cache, publish_compile_cache
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.stage import Batch, Row, RowOutcome, StageContract, StageFailure, run_batch

# Qwen2.5-VL: 14-px patches merged 2×2, so one token per 28×28 pixels, plus vision start/end tokens.
_PIXELS_PER_TOKEN = 28
_TOKENS_AROUND_IMAGE = 2
# Chat-template tokens around the messages.
_TEMPLATE_TOKENS = 64
_JPEG_QUALITY = 95
_KEEP = "_cf_columns"  # names of the row's own columns, carried through the processor
_ENGINE_STAGE = "vLLMEngineStage"  # Ray's name for the processor's engine stage


def _data_url(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _frame_tokens(h: int, w: int, max_pixels: int | None) -> int:
    """Visual tokens of one h×w frame as the image processor sees it (scaled down to ``max_pixels`` when set)."""
    if max_pixels and h * w > max_pixels:
        scale = (max_pixels / (h * w)) ** 0.5
        h, w = (max(_PIXELS_PER_TOKEN, int(v * scale)) for v in (h, w))
    return (h // _PIXELS_PER_TOKEN) * (w // _PIXELS_PER_TOKEN)


def _budget_frames(frames: np.ndarray, budget: int, max_pixels: int | None) -> np.ndarray:
    """Indices of the frames to show: evenly spread, as many as the token budget allows (at least one)."""
    per_frame = _frame_tokens(*frames.shape[1:3], max_pixels) + _TOKENS_AROUND_IMAGE + 16  # + label
    return even_indices(len(frames), max(1, budget // per_frame))


def build_request(row: dict[str, Any], config: StageConfig) -> dict[str, Any]:
    """Chat messages (frames as images after their timestamps, then the text) and sampling params.

    Token counts are bounded by UTF-8 bytes (a byte-level BPE never spends more tokens than bytes),
    so the prompt fits ``max_model_len`` without a tokenizer here; for the same reason the answer's
    schema gets one character per new token (Describe measures the tokenizer and allows more).
    """
    opts = config.profile.options_for(_accelerator(config))
    frames, ts, meta, transcript = video_inputs(row)
    duration = meta.duration_s
    budget = opts.max_model_len - config.vlm.max_new_tokens - _TEMPLATE_TOKENS - len(SYSTEM.encode())
    bare = user_text(meta, "", DESCRIBE_TASK)
    sel = even_indices(len(frames), opts.max_frames)
    sel = sel[_budget_frames(frames[sel], budget - len(bare.encode()), opts.max_frame_pixels)]
    room = budget - len(bare.encode()) - len(sel) * (_frame_tokens(*frames.shape[1:3], opts.max_frame_pixels) + 16)
    chars = min(config.vlm.max_transcript_chars, max(room, 0))
    text = transcript_text(transcript, chars)
    while len(text.encode()) > room and text:
        chars //= 2
        text = transcript_text(transcript, chars)
    content: list[dict] = []
    for i in sel:
        content += [{"type": "text", "text": frame_label(ts[i])},
                    {"type": "image_url", "image_url": {"url": _data_url(frames[i])}}]
    content.append({"type": "text", "text": user_text(meta, text, DESCRIBE_TASK)})
    shown = ts[sel]
    return {"messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                         {"role": "user", "content": content}],
            "shown_ts": shown, "duration": duration,
            "schema": schema_for(shown, config.vlm.max_new_tokens)}


def _accelerator(config: StageConfig) -> str:
    """The GPU type the engine actors are placed on (the job's vlm resources), else this process's."""
    from corpusflow.actors.models.device import accelerator

    return config.resources.vlm.accelerator_type or accelerator()


class _Prompt:
    """Processor preprocess: our row → Ray's request columns, keeping our columns (frames dropped)."""

    def __init__(self, config: StageConfig, fixed_output_tokens: bool):
        self.config, self.fixed = config, fixed_output_tokens

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in row.items() if k not in Describe.contract.drops}
        limit = self.config.vlm.max_new_tokens
        failed = ""
        live = not row["error"] and row["kind"] == "video"  # audio and PDF rows share the stream
        if live:
            try:
                req = build_request(row, self.config)
            except StageFailure as e:
                failed = str(e)
        if not live or failed:  # one token of no consequence keeps the row in the stream
            req = {"messages": [{"role": "user", "content": [{"type": "text", "text": "-"}]}], "shown_ts": np.zeros(0), "duration": 0.0,
                   "schema": {"type": "string"}}
            limit = 1
        sampling = sampling_params(limit, req["schema"], self.fixed)
        if "structured_outputs" in sampling:  # vLLM wants the schema as JSON text through Arrow
            sampling["structured_outputs"] = {"json": json.dumps(req["schema"])}
        return {**kept, _KEEP: json.dumps(sorted(kept)), "_cf_failed": failed, "_cf_t0": time.time(),
                "_cf_shown_ts": req["shown_ts"], "_cf_duration": req["duration"],
                "messages": req["messages"], "sampling_params": sampling}


# Columns the processor adds that the answer step reads (and then drops), with their value where a
# batch lacks one (Ray adds ``__inference_error__`` only when a row failed).
_ENGINE_COLUMNS = {"_cf_failed": "", "_cf_t0": 0.0, "_cf_shown_ts": None, "_cf_duration": 0.0, "generated_text": "",
                   "__inference_error__": "", "time_taken_llm": 0.0}
ANSWER_CONTRACT = StageContract(name=Describe.contract.name, reads=tuple(_ENGINE_COLUMNS), kinds=Describe.contract.kinds,
                                writes=Describe.contract.writes, drops=tuple(_ENGINE_COLUMNS))


class _Answers:
    """Processor output → our columns plus Describe's, each answer validated (the batch step after the engine)."""

    def __init__(self, model_id: str, accel: str):
        self.model_id, self.accel = model_id, accel

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch[_KEEP]) if _KEEP in batch else 0
        if not n:
            return {}
        ours = {k: batch[k] for k in json.loads(batch[_KEEP][0])}
        for col, default in _ENGINE_COLUMNS.items():
            ours[col] = batch[col] if col in batch else np.full(n, default, dtype=object)
        return run_batch(ANSWER_CONTRACT, ours, lambda rows: [self._answer(r) for r in rows], self.accel)

    def _answer(self, row: Row) -> RowOutcome:
        wall = time.time() - float(row["_cf_t0"])
        if row["_cf_failed"]:  # the prompt could not be built; the row never reached the engine
            return RowOutcome(error=StageFailure(str(row["_cf_failed"])), wall_s=wall, device_s=0.0)
        if row["__inference_error__"]:
            return RowOutcome(error=StageFailure(f"the vllm engine failed: {row['__inference_error__']}"),
                              wall_s=wall, device_s=0.0)
        raw = str(row["generated_text"] or "")
        shown = np.asarray(row["_cf_shown_ts"], dtype=np.float64)
        ran = {"vlm_raw": raw, "vlm_model": self.model_id, "vlm_engine": "vllm", "vlm_attempts": 1,
               "vlm_windows": 1, "frames_used": len(shown)}
        device = float(row["time_taken_llm"] or 0.0)
        try:
            answer = validate(raw, shown, float(row["_cf_duration"]))
        except AnswerError as e:
            return RowOutcome(ran, StageFailure(f"the VLM gave no valid answer in 1 attempt(s): {e}"), wall, device)
        return RowOutcome({**ran, **answer_columns(answer)}, wall_s=wall, device_s=device)


def processor_config(config: StageConfig, batch_size: int = 2, max_concurrent_batches: int | None = None):
    """Ray's vLLM processor config: our engine shape for the vlm actors' GPU type, images parsed on CPUs.

    A row is a whole video's prompt (tens of thousands of tokens), so batches are small and many are
    in flight: the engine fills its sequences without waiting for a dozen videos to be transcribed.
    By default twice ``max_num_seqs`` rows are in flight per engine: a batch's slots free only when
    all its rows end, so with exactly ``max_num_seqs`` the engine would run short of sequences
    whenever one row of a batch finished early; the extra rows wait inside vLLM and fill a slot the
    moment one frees.

    Ray Data hands an engine whole blocks (one task each), and rows reach it in blocks of one ASR
    call's files (``resources.asr.batch_size``), not of ``batch_size``; Ray's default of twice
    ``max_concurrent_batches`` tasks per engine would then let the first engine ready take several
    times its share of the queued rows while the others start (benchmarks/feed_sim.py: 116 of 128
    requests on one of 4 engines). So both are counted in blocks: twice ``max_num_seqs`` rows per engine.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    profile, res = config.profile, config.resources.vlm
    block = max(batch_size, config.resources.asr.batch_size or 1)
    if max_concurrent_batches is None:
        seqs = profile.options_for(_accelerator(config)).max_num_seqs
        max_concurrent_batches = -(-2 * seqs // block)
    # A share of a GPU (the ASR actor holding the rest) is asked for as one bundle; else Ray's default, one GPU.
    share = {"bundles": [{"CPU": res.num_cpus, "GPU": res.num_gpus}]} if res.num_gpus else None
    # The engines compile into the model's artifact folder in model_cache (warm from the store when published)
    compiled = local_compile_cache(profile.vlm, _accelerator(config), config.model_cache)
    return vLLMEngineProcessorConfig(
        runtime_env={"env_vars": cache_env(compiled)},
        model_source=model_path(profile, config.model_cache),
        engine_kwargs=engine_kwargs(profile.options_for(_accelerator(config)), tiny=profile.vlm == "tiny-random"),
        batch_size=batch_size, max_concurrent_batches=max_concurrent_batches,
        max_tasks_in_flight_per_actor=max_concurrent_batches, concurrency=(res.min_actors, res.max_actors),
        accelerator_type=res.accelerator_type,
        placement_group_config=share, should_continue_on_error=True, log_engine_metrics=False,
        # "openai" keeps each image where it is in the message, after its timestamp; Ray's default
        # ("string") would move every image in front of all the text.
        prepare_multimodal_stage={"enabled": True, "chat_template_content_format": "openai"},
    )


def describe_with_vllm(ds, config: StageConfig, fixed_output_tokens: bool = False, batch_size: int = 2,
                       max_concurrent_batches: int | None = None, place: Callable[[], dict[str, Any]] | None = None,
                       udfs: Mapping[str, type] | None = None):
    """``ds`` (rows after ASR, with frames) → rows with Describe's columns, through Ray's vLLM processor.

    ``fixed_output_tokens`` is for benchmarks (see corpusflow.actors.engines.vlm_vllm.sampling_params).
    ``place`` schedules each engine actor started (flows/gpu_bundles.py: one engine per GPU bundle).
    ``udfs`` runs other UDF classes in the places of processor steps named in it (Ray's stage names,
    e.g. ``vLLMEngineStage``), their batch sizes, pools and resources unchanged (benchmarks/feed_sim.py).
    """
    from ray.data.llm import build_processor

    accel = _accelerator(config)
    processor = build_processor(processor_config(config, batch_size, max_concurrent_batches),
                                preprocess=_Prompt(config, fixed_output_tokens))
    if place is not None:  # the processor's config has no per-actor scheduling; its engine stage's map_batches does
        processor.get_stage_by_name(_ENGINE_STAGE).map_batches_kwargs["ray_remote_args_fn"] = place
    for name, udf in (udfs or {}).items():
        if name in processor.stages:  # a copy: Ray types some stages' fn as an instance, which assignment would refuse
            processor.stages[name] = processor.stages[name].model_copy(update={"fn": udf})
    model_id = config.profile.vlm
    return processor(ds).map_batches(_Answers(model_id, accel), batch_format="numpy", batch_size=None)


def publish_engine_artifacts(config: StageConfig) -> bool:
    """After a job: the engines' compile artifacts in this node's model_cache go to the store beside
    ``s3://`` weights, if it lacks them (the engines ran where the job's driver runs: one node)."""
    return publish_compile_cache(config.profile.vlm, _accelerator(config), config.model_cache)
