"""Text-to-image training grids sample with the steps the request asks for (they were capped at 25, unsaid)."""

import torch

from engine.builtin.recipes import sd_setup
from engine.training.data import attach_transform, load_image_data
from engine.training.loop import iter_train
from engine.training.objectives.latent import VaeReconstruction
from engine.training.request import TrainDone, TrainRequest


def test_grid_uses_the_requested_sample_steps(tmp_path):
    common = dict(data="digits", resolution=32, batch_size=4, random_flip=False, lr_warmup_steps=0, save_every=0,
                  sample_every=0)
    events = list(iter_train(TrainRequest(run_name="vae", max_steps=1, **common), models_dir=tmp_path,
                             data_dir=tmp_path, device="cpu", objective=VaeReconstruction))
    assert isinstance(events[-1], TrainDone)
    request = TrainRequest(run_name="sd", max_steps=1, sample_num_inference_steps=30, **common)
    data = load_image_data("digits", tmp_path)
    attach_transform(data, request.resolution)
    objective = sd_setup(tmp_path / "vae").from_request(request, data)
    model = objective.build_model(seed=0)
    calls = []
    model.unet.register_forward_hook(lambda module, args, output: calls.append(1))
    images = objective.sample(model, num_images=2, seed=0, num_inference_steps=request.sample_num_inference_steps)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert len(calls) == 30
