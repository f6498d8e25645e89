"""Identify each file by its content: sha256 (the asset id) and kind/format sniffed from its leading bytes.

Extensions lie in a real corpus (a PDF saved as .mp4, a .mov that is really MP4), so the bytes decide.
The file is read once, in bounded chunks, for the hash; the head of the first chunk is sniffed.
Containers that may hold audio only (MP4/M4A, Matroska/WebM, Ogg, ASF, MPEG-TS) are opened with PyAV
to see whether a real video stream (not cover art) is inside.
"""
from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

import av.error

from corpusflow.actors.decode import media_kind, open_media
from corpusflow.contracts import storage
from corpusflow.contracts.stage import Row, Stage, StageContract, StageFailure

CHUNK = 4 << 20
HEAD = 64 << 10

# Extensions whose files we are expected to process, with the kind such a file usually holds: the
# content decides the kind; unrecognised content under one of these names is an error.
EXTENSION_KINDS = {
    **dict.fromkeys("mp4 m4v mov qt 3gp 3g2 mkv webm avi wmv asf flv ts mts m2ts mpg mpeg vob ogv".split(), "video"),
    **dict.fromkeys("m4a m4b mka wav wave wma ogg oga opus flac mp3 aac aiff aif".split(), "audio"),
    "pdf": "pdf",
}
MEDIA_EXTENSIONS = frozenset(e for e, k in EXTENSION_KINDS.items() if k in ("video", "audio"))
DOCUMENT_EXTENSIONS = frozenset(e for e, k in EXTENSION_KINDS.items() if k == "pdf")

# Containers whose kind is only known after looking at the streams.
_PROBED = frozenset({"mp4", "m4v", "mov", "m4a", "3gp", "matroska", "webm", "ogg", "asf", "mpegts"})

_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE = b"\x42\x82"
_MP3_BITRATE_BAD, _MP3_RATE_BAD = 0x0F, 0x03


def _ftyp(head: bytes) -> tuple[str, str] | None:
    """ISO-BMFF (MP4 family) by its ftyp box brand; old QuickTime files start with another atom."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video", "mov"
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "audio", "m4a"
        if brand in (b"M4V ", b"M4VH", b"M4VP"):
            return "video", "m4v"
        if brand.startswith((b"3gp", b"3g2")):
            return "video", "3gp"
        return "video", "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"pnot") and int.from_bytes(head[:4], "big") >= 8:
        return "video", "mov"
    return None


def _ebml(head: bytes) -> tuple[str, str] | None:
    """Matroska or WebM, told apart by the EBML header's DocType element."""
    if not head.startswith(_EBML_MAGIC):
        return None
    at = head.find(_EBML_DOCTYPE, 4, 64)
    if at < 0 or at + 3 > len(head):
        return "video", "matroska"
    size_byte = head[at + 2]
    width = 8 - size_byte.bit_length() + 1  # EBML variable-length integer
    size = int.from_bytes(head[at + 2:at + 2 + width], "big") & ((1 << (7 * width)) - 1)
    doctype = head[at + 2 + width:at + 2 + width + size].rstrip(b"\0")
    return "video", "webm" if doctype == b"webm" else "matroska"


def _mpeg_audio(head: bytes, at: int = 0) -> tuple[str, str] | None:
    """MP3 (MPEG audio layer I-III) or AAC ADTS by their frame sync word, after an ID3v2 tag if any."""
    if head[at:at + 3] == b"ID3" and len(head) >= at + 10:
        size = 0
        for b in head[at + 6:at + 10]:
            size = (size << 7) | (b & 0x7F)
        inner = _mpeg_audio(head, at + 10 + size) if at + 10 + size + 4 <= len(head) else None
        return inner or ("audio", "mp3")
    if head[at:at + 4] == b"fLaC":
        return "audio", "flac"
    b = head[at:at + 4]
    if len(b) < 4 or b[0] != 0xFF or b[1] & 0xE0 != 0xE0:
        return None
    layer = (b[1] >> 1) & 0x03
    if layer == 0 and b[1] & 0xF6 == 0xF0:
        return "audio", "aac"
    if layer and (b[2] >> 4) != _MP3_BITRATE_BAD and ((b[2] >> 2) & 0x03) != _MP3_RATE_BAD and (b[1] >> 3) & 0x03 != 1:
        return "audio", "mp3"
    return None


def _mpegts(head: bytes) -> bool:
    """Transport stream: 0x47 sync bytes at a 188-byte stride (192 for M2TS/Blu-ray)."""
    for stride, first in ((188, 0), (192, 4)):
        count = min(5, (len(head) - first - 1) // stride + 1)
        if count >= 2 and all(head[first + k * stride] == 0x47 for k in range(count)):
            return True
    return False


def sniff(head: bytes) -> tuple[str, str] | None:
    """(kind, format) from a file's leading bytes, or None when the content is not one we handle."""
    if head.startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return "pdf", "pdf"
    found = _ftyp(head) or _ebml(head)
    if found:
        return found
    if head[:4] in (b"RIFF", b"RF64"):
        return {b"AVI ": ("video", "avi"), b"WAVE": ("audio", "wav")}.get(head[8:12])
    if head.startswith(_ASF_GUID):
        return "video", "asf"
    if head.startswith(b"FLV\x01") and len(head) > 4:
        return ("video" if head[4] & 0x01 else "audio"), "flv"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "video", "mpeg"
    if head.startswith(b"OggS"):
        return "audio", "ogg"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio", "aiff"
    if _mpegts(head):
        return "video", "mpegts"
    return _mpeg_audio(head)


def probe_kind(uri: str, default: str) -> str:
    """video when a real picture stream is inside, audio when only sound is; ``default`` if it won't open.

    A file that fails to open here is not failed here: decode reports why in a sentence.
    """
    try:
        with open_media(uri) as container:
            return media_kind(container, default)
    except (av.error.FFmpegError, OSError):
        return default


def _extension(uri: str) -> str:
    return PurePosixPath(uri).suffix.lower().lstrip(".")


def kind_by_name(uri: str) -> str | None:
    """The kind a file's name suggests (video, audio, pdf), or None: a guess for files not yet read."""
    return EXTENSION_KINDS.get(_extension(uri))


_UNKNOWN = {"asset_id": "", "kind": "other", "format": "unknown"}


def content_id(uri: str) -> tuple[str, bytes, int]:
    """(asset id: sha256 of the bytes, the first HEAD bytes, size) from one streamed read."""
    digest, head, size = hashlib.sha256(), b"", 0
    for chunk in storage.read_stream(uri, CHUNK):
        if not head:
            head = bytes(chunk[:HEAD])
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), head, size


class Identify(Stage):
    """Every row → asset_id (sha256 of its bytes), kind (video|audio|pdf|other) and format, from content."""

    contract = StageContract(name="identify", reads=("uri", "bytes"),
                             writes={"asset_id": "str", "kind": "str", "format": "str"})
    empty = _UNKNOWN

    def process_row(self, row: Row) -> dict[str, str]:
        try:
            values, failure = self._identify(str(row["uri"]))
        except (OSError, av.error.FFmpegError) as e:
            raise StageFailure(f"file could not be read: {e}") from e
        if failure:
            raise StageFailure(failure, values=values)  # keeps the asset_id: the assets table needs one
        return values

    def _identify(self, uri: str) -> tuple[dict[str, str], str]:
        """(values, error sentence or ""): one streamed read for the hash, the head sniffed on the way."""
        asset_id, head, size = content_id(uri)
        values = {"asset_id": asset_id, "kind": "other", "format": "unknown"}
        if size == 0:
            return values, "file is empty (0 bytes)"
        found = sniff(head)
        ext = _extension(uri)
        if found is None:
            if ext in MEDIA_EXTENSIONS:
                return values, f"mislabelled or corrupt: named .{ext} but the content is not a recognised media container"
            if ext in DOCUMENT_EXTENSIONS:
                return values, f"mislabelled or corrupt: named .{ext} but the content is not a PDF"
            return values, ""
        kind, fmt = found
        if fmt in _PROBED:
            kind = probe_kind(uri, kind)
        return {**values, "kind": kind, "format": fmt}, ""

