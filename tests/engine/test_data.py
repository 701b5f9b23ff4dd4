"""Training data: sources, checks before training, the tutorial's preprocessing, order, uploads."""

import io
import os
import re
import stat
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from engine.training.data import DIGITS, EpochSampler, attach_transform, list_sources, load_image_data, random_flip
from engine.training.uploads import extract_zip, save_uploads
from engine.errors import DataError, InputError


def write_image(path, mode="RGB", size=(20, 12), seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode).save(path)
    return path


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "mixed" / "sub").mkdir(parents=True)
    for i in range(3):
        write_image(root / "mixed" / f"rgb{i}.png", seed=i)
    write_image(root / "mixed" / "grey.png", "L")
    write_image(root / "mixed" / "sub" / "alpha.png", "RGBA")
    write_image(root / "mixed" / "photo.jpg")
    good = (root / "mixed" / "rgb0.png").read_bytes()
    (root / "mixed" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "mixed" / "not-an-image.png").write_bytes(b"hello")
    (root / "mixed" / "notes.txt").write_text("ignored: not an image suffix")
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_digits_are_built_in_one_channel_in_range():
    data = load_image_data(DIGITS, "/nonexistent")
    assert len(data) == 1797 and data.channels == 1 and data.report.kind == "builtin"
    attach_transform(data, 16)
    images = data.dataset[:4]["images"]
    assert len(images) == 4 and images[0].shape == (1, 16, 16)
    stacked = torch.stack(images)
    assert stacked.min() >= -1 and stacked.max() <= 1
    assert stacked.min() == -1 and stacked.max() > 0.5  # black background, bright strokes


def test_folder_skips_corrupt_counts_and_converts(data_dir):
    data = load_image_data("mixed", data_dir)
    report = data.report
    assert report.num_images == 6 and report.channels == 3
    assert sorted(report.skipped) == ["not-an-image.png", "truncated.png"]
    assert report.converted == 2  # the grey and the RGBA image
    assert "skipped 2 unreadable" in report.summary()
    attach_transform(data, 16)
    images = torch.stack(data.dataset[:]["images"])
    assert images.shape == (6, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1


def test_preprocessing_matches_the_tutorial(data_dir):
    from torchvision import transforms

    preprocess = transforms.Compose([  # the tutorial's, without the random flip (drawn in the loop)
        transforms.Resize((16, 16)), transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
    ])
    data = load_image_data("mixed", data_dir)
    attach_transform(data, 16)
    ours = torch.stack(data.dataset[:]["images"])
    expected = preprocess(Image.open(data_dir / "mixed" / "rgb1.png").convert("RGB"))
    # rows carry no file name: one of them must be that image, preprocessed the same way
    assert min((ours[i] - expected).abs().max().item() for i in range(len(ours))) < 1e-6


def test_rgba_transparent_becomes_white(tmp_path):
    root = tmp_path / "data"
    (root / "clear").mkdir(parents=True)
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(root / "clear" / "a.png")
    data = load_image_data("clear", root)
    attach_transform(data, 8)
    assert torch.allclose(data.dataset[0]["images"], torch.ones(3, 8, 8))


SUFFIXES = ".png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff"
RELATIVE_ONLY = "only plain relative paths are allowed"


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize("source, message", [
    ("empty", f"folder 'empty' has no readable image ({SUFFIXES}); add images or upload some"),
    ("broken", f"folder 'broken' has no readable image ({SUFFIXES}); 1 file(s) could not be read: a.png; "
               "add images or upload some"),
    ("../outside", "'../outside' is outside the data dir (--data-dir); only folders under it can be used"),
    ("/etc", "'/etc' is outside the data dir (--data-dir); only folders under it can be used"),
    ("nothing-here", "unknown data 'nothing-here': not 'digits', not a folder under the data dir (--data-dir) "
                     "(found: broken, mixed), and not a hub id like 'owner/name'"),
    ("x" * 2000, "data must be at most 1024 characters; got 2000"),
    ("a\x00b", "unknown data 'a\\x00b': a data name has no control characters"),
    ("", "no data given; use 'digits', a folder under the data dir, or a hub id 'owner/name'"),
])
def test_bad_sources_say_why(data_dir, source, message):
    with pytest.raises(DataError, match=exactly(message)):
        load_image_data(source, data_dir)


def test_hub_offline_is_a_clear_data_error(data_dir):
    with pytest.raises(DataError) as info:
        load_image_data("huggan/smithsonian_butterflies_subset", data_dir)
    message = str(info.value)
    assert "offline" in message and "hf download huggan/smithsonian_butterflies_subset" in message


def test_list_sources(data_dir):
    assert list_sources(data_dir) == [DIGITS, "digits-captioned", "digits-framed", "broken", "mixed"]  # then folders of images


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, 48, seed=3), EpochSampler(50, 48, seed=3)
    assert list(a) == list(b) and len(list(a)) == 48 and len(set(a)) == 48
    b.epoch = 1
    assert list(b) != list(a)
    b.epoch, b.start = 0, 40
    assert list(b) == list(a)[40:] and len(b) == 8
    assert list(EpochSampler(50, 48, seed=4)) != list(a)


def test_epoch_sampler_splits_across_processes_without_overlap():
    from accelerate.data_loader import BatchSamplerShard

    sampler = EpochSampler(40, 32, seed=0)
    batches = torch.utils.data.BatchSampler(sampler, batch_size=4, drop_last=True)
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=i)) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    order = sampler.order(0)
    for k in range(4):  # global batch k: process 0 takes the first 4 indices, process 1 the next 4
        assert shards[0][k] + shards[1][k] == order[8 * k: 8 * k + 8]


def test_random_flip_is_drawn_from_the_generator():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(8, 1, 1, 1)  # (16,1,2,3)
    out1 = random_flip(images, torch.Generator().manual_seed(0))
    out2 = random_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(out1, out2)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out1, images)]
    kept = [torch.equal(o, i) for o, i in zip(out1, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 16


# -- uploads ------------------------------------------------------------------------------
def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def png_bytes(seed=0):
    buffer = io.BytesIO()
    array = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_save_uploads_files_and_zip_into_a_new_folder(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    files = [write_image(uploads / "one.png"), write_image(uploads / "two photo.jpg", seed=1)]
    files.append(make_zip(uploads / "more.zip", {"a/x.png": png_bytes(2), "b.png": png_bytes(3),
                                                 "readme.txt": b"skip", "__MACOSX/._b.png": b"junk"}))
    data_dir = tmp_path / "data"
    folder = save_uploads(files, data_dir, "cats")
    assert folder == data_dir / "cats"
    assert load_image_data("cats", data_dir).report.num_images == 4
    again = save_uploads(files[:1], data_dir, "cats")
    assert again.name == "cats-2"  # never overwrites an existing folder
    assert sorted(p.name for p in data_dir.iterdir()) == ["cats", "cats-2"]  # no temporary folders left


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "ok/../../evil.png", "C:/evil.png"])
def test_zip_path_traversal_is_refused(tmp_path, member):
    archive = make_zip(tmp_path / "bad.zip", {"fine.png": png_bytes(), member: png_bytes(1)})
    data_dir = tmp_path / "data"
    message = f"bad.zip has an unsafe member {member!r} (absolute path, '..' or a link); {RELATIVE_ONLY}"
    with pytest.raises(DataError, match=exactly(message)):
        save_uploads([archive], data_dir, "x")
    assert not (tmp_path / "evil.png").exists() and not (data_dir / "x").exists()
    assert [p.name for p in data_dir.iterdir()] == []


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    message = f"link.zip has an unsafe member 'link.png' (absolute path, '..' or a link); {RELATIVE_ONLY}"
    with pytest.raises(DataError, match=exactly(message)):
        extract_zip(archive, tmp_path / "out")


def test_zip_over_budget_is_refused(tmp_path):
    archive = make_zip(tmp_path / "big.zip", {"a.png": b"\0" * 10_000})
    with pytest.raises(DataError, match=exactly("big.zip unpacks to 10000 bytes; at most 1000 allowed (at most 512 MiB "
                                                "an upload and 8192 MiB in the data dir (--max-upload-mb, "
                                                "--max-data-mb))")):
        extract_zip(archive, tmp_path / "out", budget=1000)


def test_upload_without_images_and_bad_names(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(DataError, match=exactly(
            f"the upload holds no image files; allowed: {SUFFIXES} or a .zip of them")):
        save_uploads([text], tmp_path / "data", "x")
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="^" + re.escape("fake.zip is not a readable zip file: ")):
        save_uploads([not_zip], tmp_path / "data", "x")
    for name in ("../up", ".hidden", "a/b"):
        message = (f"folder name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
                   "starting with a letter or digit")
        with pytest.raises(InputError, match=exactly(message)):
            save_uploads([text], tmp_path / "data", name)
    assert os.listdir(tmp_path / "data") == []


def test_hub_dataset_errors_say_what_happened(tmp_path, monkeypatch):
    """data.py used to blame an unreachable hub for every error, our own bugs included."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def raising(exc):
        def load_dataset(*args, **kwargs):
            raise exc
        return load_dataset

    monkeypatch.setattr(datasets, "load_dataset", raising(DatasetNotFoundError("Dataset 'o/n' doesn't exist")))
    with pytest.raises(DataError, match=r"the Hugging Face Hub has no dataset 'o/n' that can be read here"):
        load_image_data("o/n", tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", raising(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        load_image_data("o/n", tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", raising(ConnectionError("Couldn't reach 'o/n' on the Hub")))
    with pytest.raises(DataError, match=r"could not get dataset 'o/n' from the Hugging Face Hub .* unreachable"):
        load_image_data("o/n", tmp_path)


def test_the_captioned_builtins_are_the_digits_with_the_captions_they_were_trained_and_proved_with(tmp_path):
    """Issue 22 (3): a LoRA run works with built-in data: the digits captioned as digits-sd was trained, and the LoRA
    proof's framed digits, the same images and captions as the folder the proof writes."""
    import numpy as np

    from engine.builtin.digits import caption
    from engine.builtin.lora_proof import make_framed_digits
    from engine.training.data import list_sources, load_captioned_data, load_image_data

    assert list_sources(tmp_path)[:3] == ["digits", "digits-captioned", "digits-framed"]
    plain, captioned = load_image_data("digits", tmp_path).dataset, load_captioned_data("digits-captioned", tmp_path)
    assert captioned.report.captioned and len(captioned) == len(plain) == 1797
    for i in (0, 1, 500):
        assert captioned.dataset[i]["text"] == caption(plain[i]["label"], i)
        assert np.array_equal(np.asarray(captioned.dataset[i]["image"]), np.asarray(plain[i]["image"]))
    framed = load_captioned_data("digits-framed", tmp_path)
    make_framed_digits(tmp_path / "proof")
    folder = load_captioned_data("proof", tmp_path)
    for i in (0, 1, 1796):
        assert framed.dataset[i]["text"] == folder.dataset[i]["text"]
        assert np.array_equal(np.asarray(framed.dataset[i]["image"].convert("L")),
                              np.asarray(folder.dataset[i]["image"].convert("L")))
    assert framed.dataset[0]["text"].startswith("a framed handwritten digit")
