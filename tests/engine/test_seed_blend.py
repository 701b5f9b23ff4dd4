"""Seed blend: slerp as diffusers' community interpolation pipeline does it, endpoints bit-equal to the single-seed
runs, the middle equal to StableDiffusionPipeline given latents= the slerped noise."""

import re

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.sampling.blend import noise_norms, seed_noise, slerp
from engine.sampling.compare import CompareRequest
from engine.records.outputs import a1111_parameters
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img


def community_slerp(t, v0, v1, DOT_THRESHOLD=0.9995):
    """diffusers' examples/community/interpolate_stable_diffusion.py, slerp, on numpy arrays."""
    dot = np.sum(v0 * v1 / (np.linalg.norm(v0) * np.linalg.norm(v1)))
    if np.abs(dot) > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta_0 = np.arccos(dot)
    sin_theta_0 = np.sin(theta_0)
    theta_t = theta_0 * t
    s0 = np.sin(theta_0 - theta_t) / sin_theta_0
    s1 = np.sin(theta_t) / sin_theta_0
    return s0 * v0 + s1 * v1


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_slerp_is_the_community_pipelines(t):
    v0, v1 = seed_noise(1, (1, 4, 8, 8)), seed_noise(2, (1, 4, 8, 8))
    theirs = community_slerp(t, v0.double().numpy(), v1.double().numpy())
    assert np.allclose(slerp(t, v0, v1).numpy(), theirs, atol=1e-6)
    # nearly parallel: plain lerp
    near = v0 + 1e-3 * v1
    assert torch.allclose(slerp(t, v0, near), (1 - t) * v0 + t * near, atol=1e-6)


def test_lerp_washes_out_and_slerp_keeps_the_norm():
    norms = noise_norms(1, 2, (1, 4, 32, 32), [0.0, 0.5, 1.0])
    assert abs(norms["lerp"][1] - 0.5 ** 0.5) < 0.03 and abs(norms["slerp"][1] - 1.0) < 0.03
    assert norms["lerp"][0] == norms["slerp"][0] and norms["lerp"][2] == norms["slerp"][2]


KW = dict(prompt="a handwritten digit seven", negative_prompt="", num_inference_steps=4, guidance_scale=7.5,
          seed=3)


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a"])  # Euler a draws noise in its steps: the generator counts
def test_the_middle_of_a_blend_is_the_pipeline_given_the_slerped_latents(tiny_sd, scheduler):
    done = list(iter_txt2img(Txt2ImgRequest(**KW, scheduler=scheduler, seed_b=8, seed_blend=0.5), pipe=tiny_sd))[-1]
    side = tiny_sd.unet.config.sample_size  # the model's own size, as the run above takes
    shape = (1, tiny_sd.unet.config.in_channels, side, side)
    latents = slerp(0.5, seed_noise(3, shape), seed_noise(8, shape))
    from engine.sampling.schedulers import make_scheduler

    original = tiny_sd.scheduler
    tiny_sd.scheduler = make_scheduler(scheduler, original.config)
    try:
        out = tiny_sd(KW["prompt"], num_inference_steps=4, guidance_scale=7.5, latents=latents,
                      generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    finally:
        tiny_sd.scheduler = original
    ours = np.asarray(done.images[0]).astype(int)
    assert np.abs(ours - (out * 255).round().astype(int)).max() <= 2
    plain = np.asarray(list(iter_txt2img(Txt2ImgRequest(**KW, scheduler=scheduler), pipe=tiny_sd))[-1].images[0])
    assert "Variation seed: 8, Variation seed strength: 0.5" in a1111_parameters(done.info)
    assert "Variation seed" not in a1111_parameters(list(iter_txt2img(Txt2ImgRequest(**KW, scheduler=scheduler),
                                                                      pipe=tiny_sd))[-1].info)
    assert np.abs(ours - plain.astype(int)).max() > 10  # the blend changes the image


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from engine.workbench import Folders, Workbench

    root = tmp_path_factory.mktemp("blend")
    return Workbench(Folders(root / "models", root / "data", root / "outputs"), device="cpu", worker=False)


def test_a_blend_compare_has_the_single_seed_runs_at_its_ends_bit_for_bit(bench):
    request = CompareRequest(axis="seed blend", values=("0", "0.5", "1"), prompt="a seven", seed=3, seed_b=8,
                             num_inference_steps=3, scheduler="Euler a", model="digits-sd")
    done = list(bench.iter_compare(request))[-1]
    finals = [np.asarray(c.done.images[0]) for c in done.columns]
    for seed, final in ((3, finals[0]), (8, finals[2])):
        alone = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a seven", seed=seed, num_inference_steps=3,
                                                       scheduler="Euler a", model="digits-sd")))[-1]
        assert np.array_equal(final, np.asarray(alone.images[0]))
    assert not np.array_equal(finals[1], finals[0]) and not np.array_equal(finals[1], finals[2])
    norms = done.info["noise_norms"]
    assert norms["t"][10] == 0.5 and norms["lerp"][10] < 0.8 < 0.95 < norms["slerp"][10]


@pytest.mark.parametrize("change, message, field", [
    (dict(values=("0", "1.5")), "seed blend value 1.5 is not one this axis takes: seed blend must be a number "
                                "from 0 to 1; got 1.5", "values"),
    (dict(seed_b=-1), f"seed blend needs a second seed (seed_b) from 0 to {2**63 - 1}; got -1", "seed_b"),
    (dict(model="digits-ddpm"), "seed blend takes a text-to-image model: an unconditional run's noise is a batch of "
                                "images, not blended here", "model"),
])
def test_bad_blends_are_said_on_their_field(bench, change, message, field):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$") as info:
        bench.compare_columns(CompareRequest(**{**dict(axis="seed blend", values=("0", "0.5"), seed=1, seed_b=2,
                                                       model="digits-sd"), **change}))
    assert info.value.field == field
