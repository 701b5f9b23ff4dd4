"""An image the page sends again lands at the same cache path (Gradio names it by its bytes). Saving it again must
never leave a reader, the page fetching the first copy, with a short file (ui.gradio_compat.cache_images_atomically)."""

import os
import threading

import numpy as np
from gradio import processing_utils
from PIL import Image

from ui.gradio_compat import cache_images_atomically


def short_reads_while_saving_again(tmp_path, saves: int = 400) -> tuple[int, int]:
    """Save the same image ``saves`` times while another thread reads the file whole again and again, as the page's
    file requests do; returns (reads shorter than the file, reads)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    path = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    size = os.path.getsize(path)
    done, short, reads = threading.Event(), [0], [0]

    def read_again_and_again():
        while not done.is_set():
            with open(path, "rb") as f:
                short[0] += len(f.read()) != size
            reads[0] += 1

    reader = threading.Thread(target=read_again_and_again)
    reader.start()
    try:
        for _ in range(saves):
            assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == path
    finally:
        done.set()
        reader.join()
    return short[0], reads[0]


def test_an_image_saved_again_is_never_short_for_a_reader(tmp_path):
    cache_images_atomically()
    short, reads = short_reads_while_saving_again(tmp_path)
    assert reads > 100 and short == 0, (short, reads)


def test_a_new_image_is_whole_once_its_name_is_there_and_a_used_one_is_touched(tmp_path):
    cache_images_atomically()
    image = Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8))
    path = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(image))
    assert [p.name for p in (tmp_path).rglob("*") if p.is_file()] == ["image.png"]  # no staging copy left
    os.utime(path, (1, 1))
    assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == path
    assert os.path.getmtime(path) > 1  # used again: the cache's pruning sees it new
