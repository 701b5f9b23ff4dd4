"""Training takes prediction_type and the zero-terminal-SNR schedule, as diffusers' training scripts do; the
checkpoint samples through the Unconditional loop (/ddpm's) as DDPMPipeline does."""

import re

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.events import Done
from engine.sampling.schedulers import make_scheduler
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional
from engine.training.request import TrainRequest
from tests.engine.test_train import data_dir, request  # noqa: F401  (data_dir: the fixture)
from tests.training_setups import train_events


def test_a_v_prediction_zero_snr_run_samples_as_ddpm_pipeline(tmp_path, data_dir):  # noqa: F811
    from diffusers import DDPMPipeline

    req = request(run_name="vpred", max_steps=6, seed=3, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    events = train_events(req, tmp_path, data_dir)
    pipe = DDPMPipeline.from_pretrained(events[-1].path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr and float(pipe.scheduler.alphas_cumprod[-1]) == 0.0

    done = [e for e in iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=5, seed=2,
                                                               timestep_spacing="trailing"), pipe=pipe)
            if isinstance(e, Done)][-1]
    original = pipe.scheduler
    pipe.scheduler = make_scheduler("DDIM", original.config, timestep_spacing="trailing")
    theirs = pipe(batch_size=1, generator=torch.Generator("cpu").manual_seed(2), num_inference_steps=5,
                  output_type="np").images[0]
    assert np.abs(np.asarray(done.images[0]).astype(int) - (theirs * 255).round().astype(int)).max() <= 2


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(InputError, match="^" + re.escape(
            "unknown prediction type 'x0'; allowed: epsilon, v_prediction, sample, or '' (the model's own)") + "$"):
        TrainRequest(prediction_type="x0")
