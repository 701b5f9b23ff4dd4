"""History: the outputs dir's images newest first, paged, filtered by tab and model, searched by prompt; deleting moves
an image to the trash inside the outputs dir and nowhere else."""

import os
import re

import pytest
from PIL import Image

from engine.errors import InputError
from engine.records.history import HistoryQuery, ImageHistory
from engine.records.outputs import save_png

T0 = 1_700_000_000  # the files' modification times, one second apart, set by the test


def saved(outputs, kind, prompt, model, seed, age, size=(8, 8)):
    """An image saved as the loops save them, modified ``age`` seconds after T0."""
    path = save_png(Image.new("RGB", size, (seed % 256, 0, 0)), {"prompt": prompt, "seed": seed, "model": model,
                                                                 "steps": 3, "scheduler": "Euler"}, outputs, kind)
    os.utime(path, (T0 + age, T0 + age))
    return path.relative_to(outputs).as_posix()


@pytest.fixture()
def outputs(tmp_path):
    """Five images of two tabs and two models, one PNG with no parameters, and things that are not images."""
    out = tmp_path / "outputs"
    names = [saved(out, "txt2img", "a handwritten digit seven", "digits-sd", 1, 10),
             saved(out, "txt2img", "A Handwritten Digit Three", "mine", 2, 20),
             saved(out, "unconditional", "", "digits-ddpm", 3, 30),
             saved(out, "txt2img", "seven again", "digits-sd", 4, 40),
             saved(out, "unconditional", "", "digits-ddpm", 5, 50)]
    plain = out / "dropped.png"
    Image.new("RGB", (4, 4)).save(plain)
    os.utime(plain, (T0 + 5, T0 + 5))
    (out / "notes.txt").write_text("not an image")
    (out / ".trash").mkdir()
    Image.new("RGB", (4, 4)).save(out / ".trash" / "old.png")  # hidden folders are never listed
    return out, names


def paths(page):
    return [e.path for e in page.entries]


def test_newest_first_paged(outputs):
    out, names = outputs
    history = ImageHistory(out)
    first = history.page(HistoryQuery(per_page=4))
    assert paths(first) == [names[4], names[3], names[2], names[1]]
    assert (first.page, first.pages, first.total, first.scanned) == (1, 2, 6, 6)
    second = history.page(HistoryQuery(per_page=4, page=2))
    assert paths(second) == [names[0], "dropped.png"]
    assert history.page(HistoryQuery(per_page=4, page=9)).page == 2  # past the end: the last page
    entry = first.entries[1]
    assert (entry.kind, entry.prompt, entry.model, entry.seed, entry.modified) == \
        ("txt2img", "seven again", "digits-sd", 4, T0 + 40)


def test_filters_by_tab_model_and_prompt_words(outputs):
    out, names = outputs
    history = ImageHistory(out)
    assert paths(history.page(HistoryQuery(kind="unconditional"))) == [names[4], names[2]]
    assert paths(history.page(HistoryQuery(model="digits-sd"))) == [names[3], names[0]]
    found = history.page(HistoryQuery(search="DIGIT handwritten"))  # every word, any case
    assert paths(found) == [names[1], names[0]] and (found.total, found.scanned) == (2, 6)
    assert paths(history.page(HistoryQuery(kind="txt2img", model="digits-sd", search="seven"))) == \
        [names[3], names[0]]
    assert paths(history.page(HistoryQuery(search="nothing like this"))) == []


def test_a_changed_image_is_read_again(outputs):
    """Metadata is kept per (size, modification time): an image saved anew under its name is read anew."""
    out, names = outputs
    history = ImageHistory(out)
    assert paths(history.page(HistoryQuery(search="eight"))) == []
    rewritten = out / names[0]
    save_png(Image.new("RGB", (8, 8)), {"prompt": "now an eight", "seed": 1}, out, "txt2img").replace(rewritten)
    os.utime(rewritten, (T0 + 60, T0 + 60))
    assert paths(history.page(HistoryQuery(search="eight"))) == [names[0]]


def test_trash_moves_inside_the_outputs_dir(outputs):
    out, names = outputs
    history = ImageHistory(out)
    moved = history.trash(names[3])
    assert moved == f".trash/{names[3]}" and (out / moved).is_file() and not (out / names[3]).exists()
    assert names[3] not in paths(history.page())
    # Another image of that name later goes beside it, numbered.
    again = saved(out, "txt2img", "seven", "digits-sd", 4, 70)
    assert again == names[3]
    assert history.trash(again) == f".trash/{names[3][:-4]}-1.png"


@pytest.mark.parametrize("path, message", [
    ("../outside.png", "'../outside.png' is not an image of the history; give a PNG's path under the outputs dir, "
                       "as /history lists it"),
    ("/etc/passwd", "'/etc/passwd' is not an image of the history; give a PNG's path under the outputs dir, as "
                    "/history lists it"),
    (".trash/old.png", "'.trash/old.png' is not an image of the history; give a PNG's path under the outputs dir, "
                       "as /history lists it"),
    ("notes.txt", "'notes.txt' is not an image of the history; give a PNG's path under the outputs dir, as "
                  "/history lists it"),
    ("txt2img/gone.png", "'txt2img/gone.png' is no longer in the outputs dir (deleted or moved)"),
    ("", "'' is not an image of the history; give a PNG's path under the outputs dir, as /history lists it"),
])
def test_only_history_images_can_be_deleted(outputs, path, message):
    out, _ = outputs
    (out.parent / "outside.png").write_bytes(b"not to be moved")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        ImageHistory(out).trash(path)
    assert (out.parent / "outside.png").exists() and (out / ".trash" / "old.png").exists()


def test_a_link_out_of_the_outputs_dir_is_refused(outputs, tmp_path):
    out, _ = outputs
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere.png")
    (out / "link.png").symlink_to(tmp_path / "elsewhere.png")
    assert "link.png" not in paths(ImageHistory(out).page())  # links are not listed
    with pytest.raises(InputError, match="^'link.png' is not an image of the history"):
        ImageHistory(out).trash("link.png")
    assert (tmp_path / "elsewhere.png").is_file()


def test_large_images_get_a_thumbnail_small_ones_are_shown_as_they_are(outputs):
    out, names = outputs
    history = ImageHistory(out)
    assert history.thumbnail(names[0]) == out / names[0]
    large = saved(out, "txt2img", "big", "digits-sd", 9, 80, size=(600, 400))
    thumbnail = history.thumbnail(large)
    assert thumbnail.parent.parts[-3] == ".thumbnails" and thumbnail.suffix == ".webp"
    with Image.open(thumbnail) as im:
        assert im.size == (256, 171)
    assert history.thumbnail(large) == thumbnail and large in paths(history.page())
    assert not any(p.startswith(".thumbnails") for p in paths(history.page()))


@pytest.mark.parametrize("change, message", [
    (dict(kind="noise"), "tab must be '' (every tab), 'txt2img' or 'unconditional'; got 'noise'"),
    (dict(page=0), "page must be a whole number from 1 to 1000000000; got 0"),
    (dict(per_page=501), "images a page must be a whole number from 1 to 500; got 501"),
    (dict(search="x" * 1001), "search must be at most 1000 characters; got 1001"),
])
def test_bad_queries_are_refused(change, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        HistoryQuery(**change)


def test_past_folders_are_listed_once_and_again_when_they_change(outputs):
    """A folder's listing is kept while its modification time stays: an image saved into a past day's folder (a
    new name in it) shows at once, and one moved away is gone."""
    out, names = outputs
    day = (out / names[0]).parent
    os.utime(day, (T0, T0))  # a day long past: its listing is kept
    history = ImageHistory(out)
    assert history.page().total == 6
    Image.new("RGB", (4, 4)).save(day / "99999-1.png")
    os.utime(day / "99999-1.png", (T0 + 90, T0 + 90))
    assert paths(history.page())[0] == day.relative_to(out).as_posix() + "/99999-1.png"
    os.utime(day, (T0, T0))
    history.trash(day.relative_to(out).as_posix() + "/99999-1.png")
    assert history.page().total == 6
