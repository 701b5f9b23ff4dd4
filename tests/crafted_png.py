"""PNG files written chunk by chunk, for the cases a PNG library will not write: a private chunk where it is
needed, a text bomb, a huge image made in kilobytes."""

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (PNG spec section 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A greyscale image's header chunk."""
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))


def crafted_png(*chunks: bytes) -> bytes:
    """A 1x1 greyscale PNG with ``chunks`` between its IHDR and its pixels."""
    return PNG_SIGNATURE + ihdr(1, 1) + b"".join(chunks) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def deflated_zeros(size: int, block: int = 2**20) -> bytes:
    """``size`` zero bytes, deflated ``block`` bytes at a time (never held whole)."""
    squeeze, parts = zlib.compressobj(9), []
    for start in range(0, size, block):
        parts.append(squeeze.compress(bytes(min(block, size - start))))
    return b"".join(parts) + squeeze.flush()


def black_png(width: int, height: int, *chunks: bytes) -> bytes:
    """A whole, valid 1-bit black PNG of ``width`` x ``height`` (``chunks`` before its pixels): kilobytes on disk,
    ``width * height`` pixels decoded (12000 x 12000 is 18 KB here, 144 megapixels in PIL)."""
    row = 1 + (width + 7) // 8  # a filter byte, then the row's bits
    return PNG_SIGNATURE + ihdr(width, height, 1) + b"".join(chunks) + chunk(b"IDAT", deflated_zeros(row * height, row * 1024)) \
        + chunk(b"IEND", b"")


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose pixels stop at once: what a decompression bomb's
    first bytes look like."""
    return PNG_SIGNATURE + ihdr(width, height, 1) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
