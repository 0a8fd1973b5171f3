"""Reading files with bounded memory and decoding text in the encodings people actually have.

``read_bytes`` never reads more than the size cap (plus one byte to notice a file that grew).
``decode_text`` accepts UTF-8 (with or without BOM), UTF-16/32 (with BOM, or BOM-less UTF-16
recognised by its zero bytes) and Latin-1/Windows-1252; anything else is refused with a reason
instead of being indexed as mojibake: binary data (NUL bytes, control characters, a known binary
signature) or bytes that are undefined in every encoding tried.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from ingest.documents import SkipFile

_SIGNATURES = (
    (b"%PDF-", "a PDF"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive or Office file"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x7fELF", "an executable"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office (OLE) file"),
    (b"PAR1", "a Parquet file"),
)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v\x1b")  # ESC: colour codes in logs


def size_cap_reason(size: int, max_bytes: int) -> str:
    return f"larger than the size cap ({_size(size)} > {_size(max_bytes)}; raise KB_MAX_FILE_MB to index it)"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 / 10 else f"{n / 1024:.0f} KB"


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, or ``SkipFile`` if it holds more than ``max_bytes`` (memory stays bounded)."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SkipFile(size_cap_reason(path.stat().st_size, max_bytes))
    return data


def read_text(path: Path, max_bytes: int) -> str:
    return decode_text(read_bytes(path, max_bytes))


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding, or raise ``SkipFile`` saying why they are not text."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _checked(_strict(data, encoding, "with a byte-order mark"))
    if not data.strip():
        return ""
    guessed = _bomless_utf16(data)
    if guessed:
        return _checked(_strict(data, guessed, "without a byte-order mark"))
    for signature, what in _SIGNATURES:
        if data.startswith(signature):
            raise SkipFile(f"binary data, not text (looks like {what})")
    if b"\x00" in data[:8192]:
        raise SkipFile("binary data, not text (contains NUL bytes)")
    try:
        return _checked(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    lenient = data.decode("utf-8", errors="replace")
    bad = lenient.count("\ufffd")
    valid_non_ascii = sum(1 for ch in lenient if ord(ch) > 127) - bad
    if valid_non_ascii >= 4 * bad:  # UTF-8 with a few damaged bytes: keep it, damage replaced
        return _checked(lenient)
    try:
        return _checked(data.decode("cp1252"))  # a superset of Latin-1's printable characters
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise SkipFile(
            f"undecodable text: not UTF-8, UTF-16 or Latin-1 (byte 0x{byte:02x} at offset {exc.start})"
        ) from None


def _strict(data: bytes, encoding: str, how: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        name = encoding.upper().replace("-SIG", "")
        raise SkipFile(f"undecodable text: invalid {name} {how} (offset {exc.start})") from None


def _bomless_utf16(data: bytes) -> str | None:
    sample = data[:4096]
    if len(sample) < 4 or len(data) % 2:
        return None
    even, odd = sample[0::2], sample[1::2]
    zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zeros_odd > 0.4 and zeros_even < 0.05:
        return "utf-16-le"
    if zeros_even > 0.4 and zeros_odd < 0.05:
        return "utf-16-be"
    return None


def _checked(text: str) -> str:
    """Refuse decoded text that is mostly control characters: binary data that happened to decode."""
    sample = text[:65536]
    controls = sum(1 for ch in sample if (ord(ch) < 32 or ord(ch) == 127) and ch not in _ALLOWED_CONTROLS)
    if controls > 2 and controls > len(sample) * 0.01:
        raise SkipFile("binary data, not text (control characters)")
    return text
