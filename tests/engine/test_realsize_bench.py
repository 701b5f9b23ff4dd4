"""bench/realsize.py in its tiny mode, as the suite runs it: the app launched on saved diffusers folders, every
figure measured and printed (bounds are checked at real sizes only), so the real-size bench does not rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    r"1\. s/step in the page / StableDiffusionPipeline alone, .* [\d.]+ \([\d.]+ s against [\d.]+ s\) \(<= 1\.05\)",
    r"1\. the page's image / the pipeline's, same seed \(max difference\) +\d+/255",
    r"2\. first run of a model: submit to the first preview in the page +[\d.]+ s \(<= load [\d.]+ \+ first step "
    r"[\d.]+ \+ 1 s = [\d.]+ s\)",
    r"3\. the worker's peak RSS during that run +[\d.]+ GiB \(<= the pipeline alone's [\d.]+ \+ 0\.5 GiB\)",
    r"3\. the server's RSS growth over that run +[+-][\d.]+ GiB .*\(<= 0\.3 GiB\)",
    r"4\. two SD-size models in turn \(A, B, A\): the worker's peak RSS +[\d.]+ GiB .*\(<= one model's [\d.]+ \+ 0\.5",
    r"4\. the machine meanwhile: least available memory; swap used +[\d.]+ GiB; [+-][\d.]+ GiB",
    r"5\. s/step in the page \(/ddpm\) / DDIMPipeline alone, .* [\d.]+ \([\d.]+ s against [\d.]+ s\) \(<= 1\.05\)",
    r"5\. the page's image / the pipeline's, same seed \(max difference\) +\d+/255",
    r"5\. 'DDPM as trained' estimate \(1000 steps, by a 3-step probe\) / the page's s/step x steps .* = [+-][\d.]+% "
    r"\(within 20%\)",
    r"6\. history: the server's RSS growth over two runs, .* [+-][\d.]+ GiB \(scrubber: Scrub through the steps.*\) "
    r"\(<= 0\.3 GiB\)",
    r"6\. history: the worker's RSS growth over those runs +[+-][\d.]+ GiB \(<= 0\.5 GiB\)",
    r"6\. history: bytes a run's history keeps \(every view drawn, thinned as the page thins it\) +[\d.]+ MiB "
    r"\(\d+ of \d+ steps, one in \d+\) \(<= a session's cap, 64 MiB\)",
    r"7\. plain pipeline \(diffusers' SDPA attention\), it/s +[\d.]+ before, [\d.]+ after",
    r"7\. classic attention \(no SDPA\): it/s / plain +[\d.]+x \([\d.]+ it/s; images differ by \d+/255\)",
    r"7\. channels_last \(UNet and VAE\): it/s / plain +[\d.]+x \([\d.]+ it/s; images differ by \d+/255\)",
    r"7\. torch\.compile \(inductor\): it/s / plain +not measured in --tiny",
    r"7\. options >= 1\.15x the plain it/s with images within 2/255 +\S",
    r'\{"bounds": 0, "missed": \[\]\}',
]


@pytest.mark.slow
def test_the_real_size_bench_runs_in_tiny_mode():
    """One run of --tiny: it exits 0 and prints every figure with its value and its bound."""
    result = subprocess.run([sys.executable, "bench/realsize.py", "--tiny"], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    missing = [figure for figure in FIGURES if not re.search(figure, result.stdout)]
    assert missing == [], result.stdout
    assert "MISSES" not in result.stdout
