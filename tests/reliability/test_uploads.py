"""Hostile uploads: zip bombs, lying headers, non-images. Each is refused with a clear message, by name, and
leaves nothing in the data dir."""

import io
import re
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.errors import DataError
from engine.training.data import list_sources
from engine.training.uploads import UploadLimits, save_uploads


def png(seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def left_behind(data_dir):
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


def test_zip_bomb_is_refused_while_unpacking_and_leaves_nothing(tmp_path):
    """A 200 KB zip of 200 MB of zeros named zeros.png used to become a data folder."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.png", b"\0" * (200 * 1024**2))
    assert bomb.stat().st_size < 300_000
    data = tmp_path / "data"
    limits = UploadLimits(upload_bytes=64 * 1024**2)
    with pytest.raises(DataError, match=re.escape("bomb.zip unpacks to 209715200 bytes; at most 67108864 allowed "
                                                  "(at most 64 MiB an upload and 8192 MiB in the data dir")):
        save_uploads([bomb], data, "bomb", limits)
    assert left_behind(data) == [] and list_sources(data) == ["digits", "digits-captioned", "digits-framed"]


def lying_zip(path, real: bytes, declared: int) -> None:
    """A zip whose headers say ``declared`` bytes for a member that unpacks to ``real``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", real)
    blob = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        start = blob.find(signature)
        blob[start + offset:start + offset + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(blob))


def test_zip_whose_header_lies_about_its_size_is_refused_clearly(tmp_path):
    """It used to end in 'Internal error (BadZipFile)'."""
    liar = tmp_path / "liar.zip"
    lying_zip(liar, png(1) * 50, declared=100)
    data = tmp_path / "data"
    with pytest.raises(DataError, match=r"^liar\.zip is damaged: member 'a\.png' cannot be read \(.+\); "
                                        r"re-create the zip$"):
        save_uploads([liar], data, "liar")
    assert left_behind(data) == []


def test_header_that_understates_cannot_get_past_the_budget(tmp_path):
    liar = tmp_path / "small.zip"
    lying_zip(liar, b"\0" * 5_000_000, declared=10)
    data = tmp_path / "data"
    with pytest.raises(DataError) as info:
        save_uploads([liar], data, "small", UploadLimits(upload_bytes=1_000_000))
    # Either the budget stops it as it is written, or the CRC/size check finds the lie: never a folder.
    assert re.match(r"^small\.zip(: a\.png unpacks to more than| is damaged)", str(info.value))
    assert left_behind(data) == []


def test_upload_of_only_a_truncated_png_is_refused_by_name(tmp_path):
    broken = tmp_path / "cut.png"
    broken.write_bytes(png(2)[:60])
    good = tmp_path / "good.png"
    good.write_bytes(png(3))
    data = tmp_path / "data"
    with pytest.raises(DataError, match=re.escape("the upload has 1 file(s) PIL cannot read as an image: cut.png (")):
        save_uploads([good, broken], data, "mixed")
    assert left_behind(data) == []


def test_non_images_inside_a_zip_are_named(tmp_path):
    archive = tmp_path / "pics.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.png", png(4))
        z.writestr("fake.png", b"this is text")
    with pytest.raises(DataError, match=re.escape("PIL cannot read as an image: pics/fake.png (")):
        save_uploads([archive], tmp_path / "data", "pics")


def test_data_dir_cap_counts_what_is_already_there(tmp_path):
    data = tmp_path / "data"
    (data / "old").mkdir(parents=True)
    (data / "old" / "big.bin").write_bytes(b"\0" * 3_000_000)
    image = tmp_path / "x.png"
    image.write_bytes(png(5))
    with pytest.raises(DataError, match=re.escape("the data dir is full (3 MiB used); at most 512 MiB an upload "
                                                  "and 2 MiB in the data dir (--max-upload-mb, --max-data-mb)")):
        save_uploads([image], data, "new", UploadLimits(data_dir_bytes=2 * 1024**2))
    assert left_behind(data) == ["old"]
