"""kavach._media: sizes read from headers, without decoding whole payloads."""

from __future__ import annotations

import base64
import struct

import pytest

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


# -- audio length from headers --------------------------------------------------------------


def _wav(seconds: float, rate: int = 24_000, channels: int = 1) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * channels * int(rate * seconds))
    return out.getvalue()


def _mp3_frame_header(kbps_index: int = 9, mono: bool = False) -> bytes:
    # MPEG-1 layer III, no CRC; 44.1 kHz; bit rate index 9 is 128 kbit/s.
    return bytes([0xFF, 0xFB, (kbps_index << 4) | (0 << 2), 0xC0 if mono else 0x00])


def test_wav_length_is_its_data_over_its_byte_rate() -> None:
    assert _media.audio_seconds(_wav(3)) == 3.0
    assert _media.audio_seconds(_wav(2, rate=44_100, channels=2)) == 2.0
    # Recorded as a stream: the data chunk's size unset; the bytes present count.
    live = bytearray(_wav(1.5))
    live[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert _media.audio_seconds(bytes(live)) == 1.5


def test_flac_length_is_its_streaminfo_samples_over_its_rate() -> None:
    rate, samples = 16_000, 16_000 * 42
    info = bytearray(34)
    info[10] = rate >> 12
    info[11] = (rate >> 4) & 0xFF
    info[12] = (rate & 0x0F) << 4
    info[13] = (samples >> 32) & 0x0F
    info[14:18] = struct.pack(">I", samples & 0xFFFFFFFF)
    flac = b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(info)
    assert _media.audio_seconds(flac) == 42.0


def test_mp3_length_from_its_vbr_header_else_its_bit_rate() -> None:
    frame = _mp3_frame_header() + b"\0" * 413  # 417 bytes a frame at 128 kbit/s, 44.1 kHz
    cbr = frame * 1000
    assert abs(_media.audio_seconds(cbr) - len(cbr) * 8 / 128_000) < 1e-9  # about 26 s
    # A Xing header (after 32 bytes of stereo side information) counts its frames: 500 frames
    # of 1,152 samples, whatever the bit rate of the first frame says.
    xing = (
        _mp3_frame_header() + b"\0" * 32 + b"Xing" + struct.pack(">I", 1) + struct.pack(">I", 500)
    )
    assert _media.audio_seconds(xing + b"\0" * 10_000) == 500 * 1152 / 44_100
    # An ID3 tag before the first frame is skipped (its size: four 7-bit bytes).
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\0" * 128
    assert _media.audio_seconds(tag + xing) == 500 * 1152 / 44_100


def test_ogg_length_is_its_last_granule_over_its_rate() -> None:
    def page(granule: int, packet: bytes) -> bytes:
        # Version, type, granule, serial, sequence, CRC, one segment of the packet's length.
        header = b"OggS\x00\x02" + struct.pack("<q", granule) + b"\0" * 12
        return header + bytes([1, len(packet)]) + packet

    opus = page(0, b"OpusHead\x01\x01" + b"\0" * 9) + page(48_000 * 7, b"\0" * 50)
    assert _media.audio_seconds(opus) == 7.0
    vorbis_id = b"\x01vorbis" + struct.pack("<IBI", 0, 1, 22_050) + b"\0" * 13
    vorbis = page(0, vorbis_id) + page(22_050 * 3, b"\0" * 50)
    assert _media.audio_seconds(vorbis) == 3.0


def test_audio_whose_headers_do_not_tell_has_no_length() -> None:
    assert _media.audio_seconds(b"\x1aE\xdf\xa3" + b"\0" * 100) is None  # WebM
    assert _media.audio_seconds(b"\0\0\0\x10ftypM4A \0\0\0\0") is None  # M4A, no moov
    assert _media.audio_seconds(b"") is None
    assert _media.audio_seconds(b"RIFF\0\0\0\0WAVE") is None  # truncated


def _ogg_opus(seconds: int, payload: int = 50) -> bytes:
    def page(granule: int, packet: bytes) -> bytes:
        header = b"OggS\x00\x02" + struct.pack("<q", granule) + b"\0" * 12
        return header + bytes([1, len(packet)]) + packet

    return page(0, b"OpusHead\x01\x01" + b"\0" * 9) + page(48_000 * seconds, b"\0" * payload)


def test_audio_tokens_come_from_the_length_its_headers_tell() -> None:
    # 3 s of 24 kHz WAV is 144 KB: read as 8 kHz from its size, it was held as 9 s.
    wav = base64.b64encode(_wav(3)).decode()
    assert _media.audio_tokens("openai", wav, "wav") == 31  # 10 a second, + 1
    assert _media.audio_tokens("google", _wav(3), "audio/wav") == 97  # raw bytes: 32 a second
    # 10 s of voice in Opus at a low bit rate is a few hundred bytes: read as 32 kbit/s from
    # its size, it was held as a tenth of a second, a hold far below the bill.
    opus = base64.b64encode(_ogg_opus(10)).decode()
    assert _media.audio_tokens("openai", opus, "audio/ogg") == 101


def test_audio_without_headers_is_read_long() -> None:
    pcm = b"\0\1" * 16_000  # 32,000 bytes of 16-bit samples
    assert _media.audio_length(pcm, "audio/pcm;rate=16000") == 1.0
    assert _media.audio_length(pcm, "audio/L16") == 2.0  # no rate: 8 kHz, the lowest
    # Headers that do not tell: as if at 8 kbit/s, the low end for speech (more seconds).
    assert _media.audio_length(b"\x1aE\xdf\xa3" + b"\0" * 1_996, "audio/webm") == 2.0
    assert _media.audio_length("not base64 at all!", "mp3") == 13 / 1_000


def test_audio_sent_again_each_turn_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = _media.audio_seconds

    def counted(data: bytes) -> float | None:
        reads.append(len(data))
        return real(data)

    monkeypatch.setattr(_media, "audio_seconds", counted)
    speech = base64.b64encode(_wav(2, rate=16_000)).decode()
    for _ in range(5):  # the same recording in the history of five calls
        assert _media.audio_tokens("openai", speech, "wav") == 21
    assert len(reads) == 1
    assert _media.audio_tokens("openai", base64.b64encode(_wav(1)).decode(), "wav") == 11
    assert len(reads) == 2


def test_mp4_length_is_its_movie_header_duration_wherever_the_movie_box_is() -> None:
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", 8 + len(body)) + kind + body

    ftyp = box(b"ftyp", b"M4A \0\0\0\0")
    mvhd0 = box(b"mvhd", b"\0\0\0\0" + struct.pack(">IIII", 0, 0, 44_100, 44_100 * 95))
    mvhd1 = box(b"mvhd", b"\x01\0\0\0" + struct.pack(">QQIQ", 0, 0, 1_000, 12_500))
    mdat = box(b"mdat", b"\0" * 5_000)
    # The movie box after the media, as a recorder writes it, and before, as a streamer does.
    assert _media.audio_seconds(ftyp + mdat + box(b"moov", mvhd0)) == 95.0
    assert _media.audio_seconds(ftyp + box(b"moov", box(b"trak", b"") + mvhd1) + mdat) == 12.5
    assert _media.audio_seconds(ftyp + mdat) is None  # cut off before its movie box


def _element(element_id: bytes, body: bytes) -> bytes:
    assert len(body) < 127
    return element_id + bytes([0x80 | len(body)]) + body


def test_webm_length_is_its_duration_else_bounded_by_its_last_cluster() -> None:
    header = _element(b"\x1a\x45\xdf\xa3", _element(b"\x42\x82", b"webm"))
    unknown_size = b"\x01\xff\xff\xff\xff\xff\xff\xff"
    segment = b"\x18\x53\x80\x67" + unknown_size
    scale = _element(b"\x2a\xd7\xb1", (1_000_000).to_bytes(3, "big"))  # 1 ms a tick
    duration = _element(b"\x44\x89", struct.pack(">d", 42_000.0))
    cluster = b"\x1f\x43\xb6\x75" + unknown_size

    def block(at: int) -> bytes:  # track 1, ``at`` ticks into its cluster, a keyframe
        return _element(b"\xa3", b"\x81" + struct.pack(">h", at) + b"\x80" + b"\0" * 60)

    # Blocks every 20 ms; the last cluster's last one in a group (with its padding).
    last = _element(b"\xa0", _element(b"\xa1", b"\x81" + struct.pack(">h", 480) + b"\0" * 9))

    def clusters(*timecodes: int) -> bytes:
        return b"".join(
            cluster + _element(b"\xe7", t.to_bytes(2, "big")) + block(0) + block(20)
            for t in timecodes
        )

    info = _element(b"\x15\x49\xa9\x66", scale + duration)
    # Written to disk: Info's duration (its first match, in the seek head, is not Info).
    seek_head = _element(b"\x11\x4d\x9b\x74", _element(b"\x53\xab", b"\x15\x49\xa9\x66"))
    assert _media.audio_seconds(header + segment + seek_head + info + clusters(0, 5_000)) == 42.0
    # A browser's MediaRecorder writes no duration: the latest cluster and its last block,
    # and a second for that block's own length.
    live = header + segment + _element(b"\x15\x49\xa9\x66", scale) + clusters(0, 5_000, 10_000)
    assert _media.audio_seconds(live + block(40) + last) == 10.48 + 1.0
    # Blocks it cannot read: the most a block can come after its cluster (32.767 s).
    assert _media.audio_seconds(live + b"\x00\x00") == 42.767
    assert _media.audio_seconds(header + segment) is None  # cut off before any cluster
