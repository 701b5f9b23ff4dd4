"""bench/gpu.py in its tiny mode on the CPU, as CI runs it: every section runs and prints every figure, so the
script the GPU machine runs does not rot between the times one is lent."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    r"txt2img: first request's extra seconds \(cache given\) +\d+\.\d s",
    r"txt2img: a restart's first request's extra seconds \(warm\) +\d+\.\d s \(bound <= 10 s\)",
    r"unconditional: first request's extra seconds \(cache given\) +\d+\.\d s",
    r"unconditional: a restart's first request's extra seconds \(warm\) +\d+\.\d s \(bound <= 10 s\)",
    r"StableDiffusionPipeline \(plain\) +[\d.]+ it/s +[\d.]+ s/image  peak n/a \(CPU\)",
    r"engine, GPU path, previews streamed +[\d.]+ it/s +[\d.]+ s/image  peak n/a \(CPU\)",
    r"engine, GPU path compiled, previews streamed +[\d.]+ it/s +[\d.]+ s/image  peak n/a \(CPU\)",
    r"engine, GPU path compiled, no previews +[\d.]+ it/s +[\d.]+ s/image\n",
    r"compiled with previews / plain \(it/s\) +[\d.]+x \(bound >= 2\.5x\)",
    r"previews' cost \(compiled, with / without - 1\) +[+-][\d.]+% \(bound <= 3%\)",
    r"parity, engine, GPU path compiled vs pipeline \(float32\) +mean [\d.]+, p99 \d+, max \d+ /255",
    r"DDPMPipeline fp32 \(plain\) +[\d.]+ it/s",
    r"compiled with previews / plain \(it/s\) +[\d.]+x \(bound >= 2x\)",
    r"syncs per step +n/a \(torch\.cuda\.set_sync_debug_mode needs CUDA\)",
    r"0 of 0 bounds met",
]


@pytest.mark.slow
def test_the_gpu_bench_runs_in_tiny_mode_on_the_cpu(compile_cache):
    """Two fresh processes compile and the bench's own process times every path. The compile cache is the
    session's, which the compile tests have filled with the same tiny models where they ran first (their cold
    compile is paid once; here the paths that compile run as they do cold, through the cache)."""
    command = [sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu", "--compile-cache", str(compile_cache)]
    result = subprocess.run(command, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    missing = [figure for figure in FIGURES if not re.search(figure, result.stdout)]
    assert missing == [], result.stdout
    assert "compile problem" not in result.stdout and "MISSES" not in result.stdout
    # Compiled and eager give the same image (CPU fp32): the parity lines' maxima are within the project's 2/255.
    maxima = [int(m) for m in re.findall(r"parity, .* max (\d+) /255", result.stdout)]
    assert len(maxima) == 2 and max(maxima) <= 2
