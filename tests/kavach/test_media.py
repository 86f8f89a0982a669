"""kavach._media: sizes read from headers, without decoding whole payloads."""

from __future__ import annotations

import base64
import struct

from kavach import _media


def test_split_data_url() -> None:
    assert _media.split_data_url("data:image/PNG;base64,AAAA") == ("image/png", "AAAA")
    assert _media.split_data_url("https://example.com/a.png") is None
    assert _media.split_data_url("data:text/plain,hello") is None


def test_base64_size() -> None:
    raw = b"x" * 1001
    assert _media.base64_size(base64.b64encode(raw).decode()) == 1001
    assert _media.base64_size(raw) == 1001


def test_image_sizes() -> None:
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 640, 480)
    gif = b"GIF89a" + struct.pack("<HH", 32, 16)
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 300, 400) + b"\x03" + b"\x00" * 9
    jpeg = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + sof
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (99).to_bytes(3, "little")
    webp = vp8x + (49).to_bytes(3, "little")
    assert _media.image_size(png) == (640, 480)
    assert _media.image_size(gif) == (32, 16)
    assert _media.image_size(jpeg) == (400, 300)
    assert _media.image_size(webp) == (100, 50)
    assert _media.image_size(b"not an image") is None


def test_decode_base64_prefix_reads_only_the_start() -> None:
    data = base64.b64encode(bytes(range(256)) * 4096).decode()
    head = _media.decode_base64_prefix(data, limit=300)
    assert head == (bytes(range(256)) * 2)[:300]


def test_pdf_pages() -> None:
    pages = b"%PDF-1.7\n" + b"<< /Type /Page /Parent 2 0 R >>\n" * 4
    tree = b"<< /Type /Pages /Kids [3 0 R] /Count 12 >>"
    assert _media.pdf_pages(pages) == 4
    assert _media.pdf_pages(pages + tree) == 12
    assert _media.pdf_pages(b"%PDF-1.7 compressed" + b"\x00" * 50_000) == 3
