"""Many requests in a row: the page's cache keeps at most --cache-files files of outputs (Gradio alone kept every
preview for an hour, and never deleted those of a widget a run had relabelled), and neither the server nor its
sampling worker grows. bench/soak.py is the long version (200 requests)."""

from pathlib import Path

from bench.soak import launch, soak

# Each request sends about 7 files (its previews and image): 20 requests send some 140, over four times what the
# bound keeps, and the samples after the 5th, 10th, 15th and 20th each find the cache back within it.
REQUESTS, EVERY, KEEP = 20, 5, 12
RSS_GROWTH_MIB = 64  # between the 5th and the 20th request, per process; measured: under 2 MiB on CPU


def test_twenty_requests_keep_the_cache_bounded_and_memory_flat(tmp_path):
    app = launch(tmp_path, cache_files=KEEP)
    try:
        rows = soak(app, REQUESTS, EVERY, KEEP, report=lambda line: None)
        assert app.process.poll() is None  # still serving
    finally:
        app.close()
    first, last = rows[0], rows[-1]
    assert last["files_sent"] > 4 * (KEEP + last["first_values"])  # without the bound the cache would hold these
    for row in rows:
        assert row["cache_files"] <= KEEP + row["first_values"], row
    assert last["server_mib"] - first["server_mib"] < RSS_GROWTH_MIB, rows
    assert last["worker_mib"] - first["worker_mib"] < RSS_GROWTH_MIB, rows


def test_the_bound_deletes_the_oldest_outputs_and_never_uploads_or_first_values(tmp_path):
    import os
    from types import SimpleNamespace

    from ui.common import prune_cache

    def cached(name: str, age: float) -> Path:
        folder = tmp_path / (format(len(list(tmp_path.iterdir())), "064x"))  # a hash folder, as Gradio names them
        folder.mkdir()
        path = folder / name
        path.write_bytes(b"png")
        os.utime(path, (path.stat().st_atime - age,) * 2)
        return path

    outputs = [cached("image.png", age) for age in (50, 40, 30, 20, 10)]  # the last is the newest
    upload, first_value = cached("upload.png", 100), cached("image.png", 100)
    being_copied = cached(".00001-1.png.abc", 100)  # Gradio's copy under way
    other = tmp_path / "not-a-hash"
    other.mkdir()
    (other / "kept.txt").write_text("not Gradio's")
    demo = SimpleNamespace(GRADIO_CACHE=str(tmp_path), upload_file_set={str(upload)},
                           blocks={1: SimpleNamespace(keep_in_cache={str(first_value)})})
    assert prune_cache(demo, keep=2) == 3
    assert [p.exists() for p in outputs] == [False, False, False, True, True]
    assert upload.exists() and first_value.exists() and being_copied.exists() and (other / "kept.txt").exists()
