"""Token costs of images, audio, video and documents, and the facts they depend on.

Each provider prices media by a formula of a few numbers (image width and height, audio
length, PDF page count). The readers here take those from headers where that is cheap,
without decoding whole payloads, and return ``None`` when they cannot tell; the cost
functions then assume a size that errs towards more tokens. ``model`` arguments are bare
lower-case model names (``gpt-4o``, not ``openai/GPT-4o``).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from typing import Literal

__all__ = [
    "ProviderKind",
    "UNREAD_AUDIO_BYTES_PER_SECOND",
    "audio_length",
    "audio_seconds",
    "audio_tokens",
    "base64_size",
    "decode_base64_prefix",
    "document_tokens",
    "image_size",
    "image_tokens",
    "pdf_pages",
    "split_data_url",
    "video_tokens",
]

ProviderKind = Literal["openai", "anthropic", "google", "mistral", "other"]

# Image headers sit near the start; JPEG's frame header can follow an EXIF block
# (thumbnails included), so read a generous prefix rather than the whole image.
_HEADER_BYTES = 256 * 1024

_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_PDF_COUNT = re.compile(rb"/Count\s+(\d+)")


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` -> ``("image/png", "AAAA")``; ``None`` if not base64 data."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[5:].split(";", 1)[0].lower(), payload


def base64_size(data: str | bytes) -> int:
    """Decoded size in bytes of a base64 string (or the length of raw bytes)."""
    if isinstance(data, bytes):
        return len(data)
    stripped = data.rstrip("=")
    return len(stripped) * 3 // 4


def decode_base64_prefix(data: str | bytes, limit: int = _HEADER_BYTES) -> bytes:
    """The first ``limit`` decoded bytes of base64 ``data`` (raw bytes pass through)."""
    if isinstance(data, bytes):
        return data[:limit]
    chunk = data[: (limit // 3) * 4]
    try:
        return base64.b64decode(chunk + "=" * (-len(chunk) % 4))
    except (binascii.Error, ValueError):
        return b""


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, WebP or JPEG from its first bytes, or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8 " and len(head) >= 30:
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(head) >= 30:
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2 : i + 4])
        # SOF0..SOF15 carry the frame size; C4, C8 and CC are other tables.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def pdf_pages(data: bytes) -> int:
    """Page count of a PDF, best effort; at least 1.

    Pages are counted as page objects or from the page tree's ``/Count``, whichever is
    larger. PDFs that keep their page tree in compressed object streams show neither;
    for those we assume a page per 20 kB, which is dense for text documents and so errs
    towards more pages.
    """
    objects = len(_PDF_PAGE.findall(data))
    counts = [int(n) for n in _PDF_COUNT.findall(data)]
    found = max([objects, *counts])
    if found == 0:
        found = len(data) // 20_000 + 1
    return max(found, 1)


# --------------------------------------------------------------------------- costs

_UNKNOWN_IMAGE = (1024, 1024)
_PDF_PAGE_TOKENS = 3000  # text (Anthropic: 1,500-3,000 a page) plus the page image
# Where a length must be inferred from a size, low bit rates are assumed (more seconds).
_PCM_RATE = 8_000  # raw 16-bit mono PCM whose MIME type names no rate: 8 kHz, the lowest
UNREAD_AUDIO_BYTES_PER_SECOND = 1_000
"""Audio whose length its headers do not tell (another format, or one cut short) is taken
to be recorded at 8 kbit/s, the low end of what speech is recorded at (Opus voice, 8 kbit/s
and up; AAC, 64 and up): for more seconds than it has, rarely fewer."""
_VIDEO_BYTES_PER_SECOND = 62_500  # 500 kbit/s

# OpenAI vision costs (base, per 512px tile) and patch multipliers, from OpenAI's
# "Images and vision" guide. Checked in order: longer prefixes first.
_OPENAI_PATCH_MULTIPLIER = (
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
)
_OPENAI_TILE_COST = (
    ("gpt-4o-mini", (2833, 5667)),
    ("gpt-5", (70, 140)),
    ("o1", (75, 150)),
    ("o3", (75, 150)),
    ("computer-use", (65, 129)),
)
_OPENAI_DEFAULT_TILE_COST = (85, 170)


def image_tokens(
    kind: ProviderKind, model: str, size: tuple[int, int] | None, detail: str | None = None
) -> int:
    """Tokens for one image; ``size`` is ``None`` when it could not be read."""
    if kind == "openai":
        return _openai_image_tokens(model, size, detail)
    if kind == "anthropic":
        # width * height / 750 after Anthropic's resize, which caps an image near 1,600;
        # an image of unknown size is taken at that cap.
        return 1600 if size is None else min(math.ceil(size[0] * size[1] / 750), 1600)
    w, h = size or _UNKNOWN_IMAGE
    if kind == "google":
        if model.startswith("gemini-3"):
            return 1120  # media_resolution "high", the default for images
        if w <= 384 and h <= 384:
            return 258
        # 258 per 768px tile; the crop unit can be smaller than 768, so take the larger.
        unit = max(min(w, h) / 1.5, 1.0)
        tiles = max(
            math.ceil(w / 768) * math.ceil(h / 768), math.ceil(w / unit) * math.ceil(h / unit)
        )
        return 258 * tiles
    # Mistral (Pixtral): 16px patches plus a break token per row, longest side <= 1024.
    scale = min(1.0, 1024 / max(w, h, 1))
    cols, rows = math.ceil(w * scale / 16), math.ceil(h * scale / 16)
    mistral = cols * (rows + 1)
    if kind == "mistral":
        return mistral
    return max(mistral, image_tokens("anthropic", model, size))


def _openai_image_tokens(model: str, size: tuple[int, int] | None, detail: str | None) -> int:
    w, h = size or _UNKNOWN_IMAGE
    for prefix, multiplier in _OPENAI_PATCH_MULTIPLIER:
        if model.startswith(prefix):
            return math.ceil(_patches(w, h) * multiplier)
    base, tile = next(
        (cost for prefix, cost in _OPENAI_TILE_COST if model.startswith(prefix)),
        _OPENAI_DEFAULT_TILE_COST,
    )
    if detail == "low":
        return base
    # "high" and "auto" (which may choose high): fit in 2048x2048, then the short side
    # down to 768, then count 512px tiles.
    fw, fh = float(w), float(h)
    if max(fw, fh) > 2048:
        scale = 2048 / max(fw, fh)
        fw, fh = fw * scale, fh * scale
    if min(fw, fh) > 768:
        scale = 768 / min(fw, fh)
        fw, fh = fw * scale, fh * scale
    return base + tile * math.ceil(fw / 512) * math.ceil(fh / 512)


def _patches(w: int, h: int) -> int:
    """32px patches, capped at 1536 by scaling the image down (OpenAI's mini models)."""
    patches = math.ceil(w / 32) * math.ceil(h / 32)
    if patches <= 1536:
        return patches
    r = math.sqrt(32 * 32 * 1536 / (w * h))
    r *= min(math.floor(w * r / 32) / (w * r / 32), math.floor(h * r / 32) / (h * r / 32))
    return min(math.ceil(w * r / 32) * math.ceil(h * r / 32), 1536)


def audio_tokens(kind: ProviderKind, data: str | bytes, mime: str) -> int:
    """Tokens for audio ``data`` (raw or base64) of type ``mime`` (a MIME type, or a format
    name such as ``wav``): OpenAI ~1 token per 100 ms, Gemini 32 a second, for the length
    ``audio_length`` finds."""
    per_second = 10 if kind == "openai" else 32
    return math.ceil(audio_length(data, mime) * per_second) + 1


def audio_length(data: str | bytes, mime: str) -> float:
    """Seconds of audio ``data`` (raw or base64): read from its headers where its format
    has them (``audio_seconds``); raw PCM (``audio/pcm``, ``audio/L16``) at the ``rate=`` its
    MIME type names, else at 8 kHz; anything else as if at 8 kbit/s. A conversation sends
    the same audio again on every turn: lengths are kept by content, so it is decoded once."""
    key = (hash(data), len(data), mime)  # a str or bytes caches its hash: O(1) after once
    seconds = _AUDIO_LENGTHS.get(key)
    if seconds is None:
        seconds = _audio_length(data, mime.lower())
        if len(_AUDIO_LENGTHS) >= _AUDIO_LENGTHS_KEPT:
            _AUDIO_LENGTHS.clear()
        _AUDIO_LENGTHS[key] = seconds
    return seconds


_AUDIO_LENGTHS: dict[tuple[int, int, str], float] = {}
_AUDIO_LENGTHS_KEPT = 1024


def _audio_length(data: str | bytes, mime: str) -> float:
    size = base64_size(data)
    if ("pcm" in mime or "l16" in mime) and "wav" not in mime:  # no header to read
        rate = re.search(r"rate=(\d+)", mime)
        return size / (2 * (int(rate.group(1)) if rate and int(rate.group(1)) else _PCM_RATE))
    raw = data if isinstance(data, bytes) else decode_base64_prefix(data, 1 << 62)
    seconds = audio_seconds(raw) if raw else None
    return seconds if seconds is not None else size / UNREAD_AUDIO_BYTES_PER_SECOND


def video_tokens(size: int) -> int:
    """Tokens for ``size`` bytes of video, at Gemini's 263 tokens a second."""
    return math.ceil(size / _VIDEO_BYTES_PER_SECOND * 263) + 263


def document_tokens(kind: ProviderKind, model: str, pages: int) -> int:
    """Tokens for a PDF of ``pages`` pages (Gemini reads pages as images)."""
    if kind == "google":
        return pages * (560 if model.startswith("gemini-3") else 258)
    return pages * _PDF_PAGE_TOKENS


# -- audio length ---------------------------------------------------------------------------


def audio_seconds(data: bytes) -> float | None:
    """The length of a WAV, FLAC, MP3, Ogg (Opus, Vorbis), MP4 (M4A) or WebM file from its
    headers (an MP3's Xing, Info or VBRI frame count, else its first frame's bit rate; an
    MP4's movie header, wherever it is; a WebM's duration, else its last block and a second
    more), or None when the format is another or its headers do not tell."""
    try:
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return _wav_seconds(data)
        if data[:4] == b"fLaC":
            return _flac_seconds(data)
        if data[:4] == b"OggS":
            return _ogg_seconds(data)
        if data[4:8] == b"ftyp":
            return _mp4_seconds(data)
        if data[:4] == _EBML:
            return _webm_seconds(data)
        return _mp3_seconds(data)
    except (struct.error, IndexError, ZeroDivisionError):
        return None


def _wav_seconds(data: bytes) -> float | None:
    at, byte_rate = 12, 0
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if chunk == b"fmt ":
            byte_rate = struct.unpack_from("<I", data, at + 16)[0]
        elif chunk == b"data":
            # A recording still being written says 0 or 0xFFFFFFFF: the bytes present count.
            present = len(data) - at - 8
            size = present if size in (0, 0xFFFFFFFF) or size > present else size
            return size / byte_rate if byte_rate else None
        at += 8 + size + (size & 1)
    return None


def _flac_seconds(data: bytes) -> float | None:
    if data[4] & 0x7F != 0:  # STREAMINFO comes first
        return None
    info = data[8:42]
    rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
    samples = ((info[13] & 0x0F) << 32) | struct.unpack_from(">I", info, 14)[0]
    return samples / rate if rate and samples else None


def _ogg_seconds(data: bytes) -> float | None:
    # The last page's granule position is the stream's length in samples.
    last = data.rfind(b"OggS\x00")
    granule: int = struct.unpack_from("<q", data, last + 6)[0]
    start = 27 + data[26]  # the first page's packet, after its segment table
    if data[start : start + 8] == b"OpusHead":
        rate = 48_000  # Opus counts its granules at 48 kHz whatever it was recorded at
    elif data[start : start + 7] == b"\x01vorbis":
        rate = struct.unpack_from("<I", data, start + 12)[0]
    else:
        return None
    return granule / rate if granule > 0 and rate else None


def _boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The MP4 boxes between ``start`` and ``end``: each type's first, as (body, end)."""
    found: dict[bytes, tuple[int, int]] = {}
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        body = at + 8
        if size == 1:  # a 64-bit size follows
            size = struct.unpack_from(">Q", data, body)[0]
            body += 8
        elif size == 0:  # to the end
            size = end - at
        if size < body - at:
            break
        found.setdefault(kind, (body, at + size))
        at += size
    return found


def _mp4_seconds(data: bytes) -> float | None:
    moov = _boxes(data, 0, len(data)).get(b"moov")
    if moov is None:
        return None
    mvhd = _boxes(data, *moov).get(b"mvhd")
    if mvhd is None:
        return None
    at = mvhd[0]
    if data[at] == 1:  # version 1: 64-bit times
        scale, duration = struct.unpack_from(">IQ", data, at + 20)
    else:
        scale, duration = struct.unpack_from(">II", data, at + 12)
    return duration / scale if scale and duration else None


_EBML = b"\x1a\x45\xdf\xa3"
_WEBM_CLUSTER_ID = b"\x1f\x43\xb6\x75"
_WEBM_SEGMENT, _WEBM_INFO, _WEBM_CLUSTER = 0x18538067, 0x1549A966, 0x1F43B675
_WEBM_SCALE, _WEBM_DURATION, _WEBM_TIMECODE = 0x2AD7B1, 0x4489, 0xE7
_WEBM_SIMPLE_BLOCK, _WEBM_BLOCK_GROUP, _WEBM_BLOCK = 0xA3, 0xA0, 0xA1


def _vint(data: bytes, at: int, marker: bool = False) -> tuple[int | None, int]:
    """A Matroska variable-size integer at ``at`` (an element's ID with ``marker``, else its
    size: None when unknown) and where what follows it starts."""
    first = data[at]
    length = 9 - first.bit_length()
    if not 1 <= length <= 8:
        raise IndexError("not a variable-size integer")
    value = int.from_bytes(data[at : at + length], "big")
    if marker:
        return value, at + length
    value &= (1 << (7 * length)) - 1
    return (None if value == (1 << (7 * length)) - 1 else value), at + length


def _webm_seconds(data: bytes) -> float | None:
    # The EBML header, then the segment, whose first children (before the clusters) include
    # its Info: TimecodeScale and, in a file written to disk, Duration.
    _, at = _vint(data, 0, marker=True)
    size, at = _vint(data, at)
    if size is None:
        return None
    segment, at = _vint(data, at + size, marker=True)
    if segment != _WEBM_SEGMENT:
        return None
    _, at = _vint(data, at)
    scale, duration = 1_000_000, None  # nanoseconds a tick, unless Info says otherwise
    while at < len(data):
        element, body = _vint(data, at, marker=True)
        size, body = _vint(data, body)
        if element == _WEBM_CLUSTER or size is None:
            break
        if element == _WEBM_INFO:
            scale, duration = _webm_info(data, body, body + size)
            break
        at = body + size
    if duration:
        return duration * scale / 1e9
    # No duration (a browser's MediaRecorder writes none): the latest cluster's timecode plus
    # its last block's; or, if its blocks cannot be read, the most a block can come after it
    # (a signed 16-bit count of ticks).
    latest, blocks = None, 0
    at = data.find(_WEBM_CLUSTER_ID)
    while at != -1:
        _, body = _vint(data, at + 4)
        if data[body] == _WEBM_TIMECODE:
            size, value = _vint(data, body + 1)
            if size is not None and 1 <= size <= 8:
                timecode = int.from_bytes(data[value : value + size], "big")
                if latest is None or timecode >= latest:
                    latest, blocks = timecode, value + size
        at = data.find(_WEBM_CLUSTER_ID, at + 4)
    if latest is None:
        return None
    try:
        after, margin = _last_block(data, blocks), 1.0  # a block lasts well under a second
    except (IndexError, struct.error):
        after, margin = 32_767, 0.0
    return (latest + after) * scale / 1e9 + margin


def _last_block(data: bytes, at: int, end: int | None = None) -> int:
    """The latest timecode, relative to its cluster, of the blocks from ``at`` to ``end``."""
    latest = 0
    end = len(data) if end is None else end
    while at < end:
        element, body = _vint(data, at, marker=True)
        size, body = _vint(data, body)
        if size is None or element == _WEBM_CLUSTER:
            raise IndexError("not a cluster's last blocks")
        if element == _WEBM_BLOCK_GROUP:  # a block with more to say (the last one, often)
            latest = max(latest, _last_block(data, body, min(body + size, end)))
        elif element in (_WEBM_SIMPLE_BLOCK, _WEBM_BLOCK):
            _, timecode = _vint(data, body)  # after the track number
            latest = max(latest, struct.unpack_from(">h", data, timecode)[0])
        at = body + size
    return latest


def _webm_info(data: bytes, at: int, end: int) -> tuple[int, float | None]:
    """A WebM segment's Info: its ticks' length in nanoseconds, and its duration in ticks."""
    scale, duration = 1_000_000, None
    while at < min(end, len(data)):
        element, at = _vint(data, at, marker=True)
        size, at = _vint(data, at)
        if size is None:
            break
        if element == _WEBM_SCALE:
            scale = int.from_bytes(data[at : at + size], "big") or scale
        elif element == _WEBM_DURATION and size in (4, 8):
            duration = float(struct.unpack(">f" if size == 4 else ">d", data[at : at + size])[0])
        at += size
    return scale, duration


_MP3_BITRATES = {  # kbit/s by bitrate index: MPEG-1 layer III, MPEG-2 and 2.5 layer III
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44_100, 48_000, 32_000), 2: (22_050, 24_000, 16_000), 0: (11_025, 12_000, 8_000)}


def _mp3_seconds(data: bytes) -> float | None:
    start = 0
    if data[:3] == b"ID3":  # a tag before the audio: its size is four 7-bit bytes
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        start = 10 + size + (10 if data[5] & 0x10 else 0)
    # The first frame header within the next few bytes (some files pad after the tag).
    for at in range(start, min(start + 4096, len(data) - 4)):
        b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
        version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
        if data[at] == 0xFF and b1 & 0xE0 == 0xE0 and version != 1 and layer == 1:
            if (b2 >> 4) not in (0, 15) and (b2 >> 2) & 3 != 3:
                break
    else:
        return None
    mpeg1 = version == 3
    rate = _MP3_RATES[version][(b2 >> 2) & 3]
    samples_per_frame = 1152 if mpeg1 else 576
    mono = (b3 >> 6) == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    xing = at + 4 + side
    if data[xing : xing + 4] in (b"Xing", b"Info") and data[xing + 7] & 1:
        frames: int = struct.unpack_from(">I", data, xing + 8)[0]
        return frames * samples_per_frame / rate
    if data[at + 36 : at + 40] == b"VBRI":
        vbri: int = struct.unpack_from(">I", data, at + 36 + 14)[0]
        return vbri * samples_per_frame / rate
    bitrate = _MP3_BITRATES[1 if mpeg1 else 2][b2 >> 4] * 1000
    return (len(data) - at) * 8 / bitrate
