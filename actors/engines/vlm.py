"""The VLM model family: a request is frames + timestamps + text + a JSON schema; the answer is JSON.

The stage (actors/vlm.py) only speaks :class:`VlmEngine`; ``transformers``
(actors/engines/vlm_transformers.py) runs anywhere (CPU or GPU, attention kernel chosen per
device), ``vllm`` (actors/engines/vlm_vllm.py) runs on GPUs. Both must
return JSON that conforms to the request's schema (constrained decoding), so answers parse even
from a randomly initialised model.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from corpusflow.actors.prompts.answer import format_ts
from corpusflow.contracts.config import ModelsProfile, VlmEngineOptions


@dataclass(frozen=True)
class VlmRequest:
    frames: np.ndarray          # (n, H, W, 3) uint8, already resized
    frame_ts: np.ndarray        # (n,) float64 seconds
    system: str
    user: str                   # text that follows the frames (transcript, metadata, task)
    json_schema: dict           # answers MUST conform (constrained decoding)
    max_new_tokens: int


class VlmEngine(Protocol):
    name: str                   # "transformers" | "vllm"
    model_id: str
    max_frames: int             # frame budget of one context on this device
    max_model_len: int
    # True when generate may be called from several threads at once and each call's requests join the
    # batch already running (continuous batching); the online API then hands requests over as they come.
    admits_concurrent_calls: bool

    def count_tokens(self, request: VlmRequest) -> int: ...   # prompt tokens incl. vision tokens

    def generate(self, requests: list[VlmRequest]) -> list[str]: ...   # raw JSON text per request


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run here (package missing); the message says what to do."""


def frame_label(t: float) -> str:
    """Text put before each frame so the model knows when it was taken."""
    return f"[t={format_ts(t)}s]"


def messages(request: VlmRequest) -> list[dict]:
    """Chat messages of a request: each frame as an image preceded by its timestamp, then the text."""
    content: list[dict] = []
    for t in request.frame_ts:
        content += [{"type": "text", "text": frame_label(t)}, {"type": "image"}]
    content.append({"type": "text", "text": request.user})
    return [{"role": "system", "content": request.system}, {"role": "user", "content": content}]


def processor_kwargs(opts: VlmEngineOptions) -> dict[str, int]:
    """Image-processor arguments from the engine options, the same for every engine: the frame pixel cap."""
    return {"max_pixels": opts.max_frame_pixels} if opts.max_frame_pixels else {}


class PromptCounter:
    """Prompt tokens of a request, vision tokens included, from its text and its frames' size.

    Why: the stage checks every prompt against the context before asking the engine, and running
    the image processor over all frames just to count would double its CPU work per request (about
    0.2 s for 15 frames of 448²). Each frame is one ``<|image_pad|>`` in the text and expands to a
    number of vision tokens that depends only on its size, computed once per size.
    """

    def __init__(self, processor):
        self._processor = processor

    def prompt(self, request: VlmRequest) -> str:
        return self._processor.apply_chat_template(messages(request), tokenize=False, add_generation_prompt=True)

    @functools.lru_cache(maxsize=8)
    def _per_image(self, height: int, width: int) -> int:
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        grid = self._processor.image_processor(images=[frame], return_tensors="np")["image_grid_thw"][0]
        return int(np.prod(grid)) // self._processor.image_processor.merge_size ** 2

    def __call__(self, request: VlmRequest) -> int:
        text_ids = self._processor.tokenizer(self.prompt(request))["input_ids"]
        if not len(request.frames):
            return len(text_ids)
        h, w = request.frames.shape[1:3]
        return len(text_ids) + len(request.frames) * (self._per_image(int(h), int(w)) - 1)


# vlm_engine name → ("module:Class", the package it needs); each class is built as ``Engine(profile, cache_dir)``.
ENGINES = {
    "transformers": ("corpusflow.actors.engines.vlm_transformers:TransformersEngine", "transformers"),
    "vllm": ("corpusflow.actors.engines.vlm_vllm:VllmEngine", "vllm"),
}


def load_engine(profile: ModelsProfile, cache_dir: str) -> VlmEngine:
    """The engine the profile names, imported and loaded only now (an actor calls this in its ``__init__``)."""
    path, package = ENGINES[profile.vlm_engine]
    if importlib.util.find_spec(package) is None:
        raise EngineUnavailable(f"models profile {profile.name!r} asks for the {profile.vlm_engine} engine, but the "
                                f"{package} package is not installed here: install {package} on the GPU workers, "
                                "or set vlm_engine: transformers")
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)(profile, cache_dir)
