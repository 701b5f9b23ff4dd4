"""Run files (Export run) in the temp folder: written whole beside and renamed into place, and pruned."""

import json
import os
import time

from ui import common
from ui.common import write_run_file

IMAGE = "outputs/txt2img/2026-01-02/00007-5.png"


def test_a_run_file_rewritten_while_a_download_reads_it_leaves_the_download_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    first = {"run": "first", "padding": "x" * 10_000}
    path = write_run_file(first, IMAGE)
    with open(path) as download:  # a page fetching the file
        write_run_file({"run": "second"}, IMAGE)  # Export run clicked again for the same image
        assert json.loads(download.read()) == first
    assert json.loads(open(path).read()) == {"run": "second"}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["txt2img-2026-01-02-00007-5-run.json"]  # no partial left


def test_run_files_are_pruned_by_count_and_age(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    paths = [write_run_file({"n": n}, f"outputs/txt2img/d/{n:05d}-1.png") for n in range(5)]
    for age, path in enumerate(paths):  # the first written is the oldest
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    monkeypatch.setattr(common, "RUN_FILES_KEPT", 3)
    old = write_run_file({"n": 5}, "outputs/txt2img/d/00005-1.png")
    left = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert left == ["txt2img-d-00003-1-run.json", "txt2img-d-00004-1-run.json", "txt2img-d-00005-1-run.json"]
    os.utime(old, (time.time() - common.RUN_FILE_AGE - 1,) * 2)
    write_run_file({"n": 6}, "outputs/txt2img/d/00006-1.png")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["txt2img-d-00003-1-run.json", "txt2img-d-00004-1-run.json",
                                                                     "txt2img-d-00006-1-run.json"]
