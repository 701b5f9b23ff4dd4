"""bench/vpred.py in its tiny mode, so the bench does not rot: both runs train, sample and print their figures, and
the v-prediction checkpoint samples through the Unconditional loop (/ddpm's) as DDPMPipeline does."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from engine.events import Done
from engine.sampling.schedulers import make_scheduler
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    r"^epsilon: 3 steps in \d+ s, last loss [\d.]+; readable \d/4 \([\d.]+\), confident \d/4; checkpoint .+$",
    r"^v_prediction: 3 steps in \d+ s, last loss [\d.]+; readable \d/4 \([\d.]+\), confident \d/4; checkpoint .+$",
    r"^readable fraction v_prediction / epsilon: [\d.]+ / [\d.]+ = ([\d.]+|nan); load average at the end [\d.]+$",
]


def test_the_tiny_bench_prints_its_figures_and_the_v_checkpoint_samples_as_ddpm_pipeline(tmp_path):
    from diffusers import DDPMPipeline

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vpred.py"), "--tiny", "--models-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    for pattern in FIGURES:
        assert re.search(pattern, out.stdout, re.MULTILINE), (pattern, out.stdout)

    pipe = DDPMPipeline.from_pretrained(tmp_path / "vpred-v_prediction", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    done = [e for e in iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=3, seed=4),
                                          pipe=pipe) if isinstance(e, Done)][-1]
    pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    theirs = pipe(batch_size=1, generator=torch.Generator("cpu").manual_seed(4), num_inference_steps=3,
                  output_type="np").images[0]
    ours = np.asarray(done.images[0]).astype(int).reshape(theirs.shape)  # the digits are grey: (H, W) as PIL's "L"
    assert np.abs(ours - (theirs * 255).round().astype(int)).max() <= 2
