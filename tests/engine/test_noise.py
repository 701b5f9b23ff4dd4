"""The forward process against diffusers' DDPMScheduler.add_noise, and the schedule's curves."""

import io
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from engine.errors import InputError, ModelLoadError
from engine.forward.noise import (
    BETA_SCHEDULES,
    CURVES,
    DEFAULT_TIMESTEPS,
    NoiseRequest,
    NoiseSchedule,
    add_noise,
    clamp_timesteps,
    load_image,
    parse_timesteps,
    schedule_curves,
    schedule_of_model,
    visited_points,
    visited_timesteps,
)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def gradient_image(w=40, h=30) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 6, y * 8, (x + y) * 3], -1).astype(np.uint8))


def expected_strip(x0: torch.Tensor, schedule: NoiseSchedule, timesteps, seed: int) -> np.ndarray:
    """diffusers' own add_noise, with the noise the engine documents: randn from a CPU generator."""
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    scheduler = DDPMScheduler(beta_schedule=schedule.beta_schedule, num_train_timesteps=schedule.num_train_timesteps,
                              beta_start=schedule.beta_start, beta_end=schedule.beta_end,
                              rescale_betas_zero_snr=schedule.rescale_betas_zero_snr)
    out = torch.cat([scheduler.add_noise(x0, noise, torch.tensor([t])) for t in timesteps])
    return ((out / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("schedule", [
    NoiseSchedule(),
    NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    NoiseSchedule("squaredcos_cap_v2", num_train_timesteps=500),
    NoiseSchedule("sigmoid", num_train_timesteps=200, beta_end=0.05),
])
def test_pixels_equal_ddpm_scheduler_add_noise(schedule):
    last = schedule.num_train_timesteps - 1
    timesteps = (0, 10, last // 2, last)
    strip = add_noise(NoiseRequest(timesteps=timesteps, schedule=schedule, seed=5, resolution=24), gradient_image())
    assert strip.timesteps == timesteps and strip.x0.shape == (1, 3, 24, 24)
    ours = np.stack(strip.images)
    theirs = expected_strip(strip.x0, schedule, timesteps, seed=5)
    assert ours.shape == (4, 24, 24, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, theirs)
    # Sensitive: another seed's noise gives other pixels once t is past the first few steps.
    other = expected_strip(strip.x0, schedule, timesteps, seed=6)
    assert np.abs(other[1:].astype(int) - ours[1:]).max() > 10


def test_same_noise_for_every_frame():
    """One noise sample per seed: x_t - sqrt(alpha_bar_t) x0 is sqrt(1 - alpha_bar_t) times the same noise."""
    strip = add_noise(NoiseRequest(timesteps=(300, 700), seed=1, resolution=16), gradient_image())
    again = add_noise(NoiseRequest(timesteps=(700,), seed=1, resolution=16), gradient_image())
    assert np.array_equal(strip.images[1], again.images[0])
    assert torch.equal(strip.noise, again.noise)


def test_default_strip_uses_a_builtin_sample_image_offline():
    strip = add_noise(NoiseRequest(resolution=32))
    assert strip.timesteps == DEFAULT_TIMESTEPS and len(strip.images) == 8
    assert strip.images[0].shape == (32, 32, 3)
    assert strip.images[0].std() > 20  # a photo, not a blank frame
    assert strip.alpha_bars[0] > 0.999 and strip.alpha_bars[-1] < 1e-3


def test_curves_match_the_scheduler():
    linear, cosine = NoiseSchedule(), NoiseSchedule("squaredcos_cap_v2")
    df = schedule_curves({"linear": linear, "cosine": cosine})
    assert set(df["curve"]) == set(CURVES) and set(df["schedule"]) == {"linear", "cosine"}
    reference = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    cos = df[df["schedule"] == "cosine"]
    alpha_bar = cos[cos["curve"] == "alpha_bar"]["value"].to_numpy()
    np.testing.assert_allclose(alpha_bar, reference.alphas_cumprod.numpy(), rtol=1e-6)
    signal = cos[cos["curve"] == "sqrt(alpha_bar)"]["value"].to_numpy()
    noise = cos[cos["curve"] == "sqrt(1 - alpha_bar)"]["value"].to_numpy()
    np.testing.assert_allclose(signal**2 + noise**2, 1.0, rtol=1e-9)
    log_snr = cos[cos["curve"] == "log SNR"]["value"].to_numpy()
    assert np.all(np.diff(log_snr) < 0)  # the signal-to-noise ratio falls with t
    beta = df[(df["schedule"] == "linear") & (df["curve"] == "beta")]["value"].to_numpy()
    assert beta[0] == pytest.approx(1e-4) and beta[-1] == pytest.approx(0.02)


def test_zero_terminal_snr_stays_finite():
    df = schedule_curves({"z": NoiseSchedule("scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             rescale_betas_zero_snr=True)})
    assert np.isfinite(df["value"]).all()
    alpha_bar = df[df["curve"] == "alpha_bar"]["value"].to_numpy()
    assert alpha_bar[-1] == 0.0


def test_visited_timesteps_and_markers():
    assert visited_timesteps("DDIM", 50, NoiseSchedule()) == tuple(range(980, -1, -20))
    assert visited_timesteps("DDPM", 1000, NoiseSchedule())[:3] == (999, 998, 997)
    points = visited_points("DDIM", 5, {"linear": NoiseSchedule()})
    assert sorted(set(points["t"])) == [0, 200, 400, 600, 800]
    curves = schedule_curves({"linear": NoiseSchedule()})
    at = curves[(curves["curve"] == "alpha_bar") & curves["t"].isin([0, 200, 400, 600, 800])]["value"].to_numpy()
    np.testing.assert_allclose(points[points["curve"] == "alpha_bar"]["value"].to_numpy(), at)


def test_schedule_of_a_model_folder(tmp_path):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=400)
    scheduler.save_pretrained(tmp_path / "m" / "scheduler")
    schedule = schedule_of_model(tmp_path / "m")
    assert schedule == NoiseSchedule("squaredcos_cap_v2", num_train_timesteps=400)
    with pytest.raises(ModelLoadError, match="no readable scheduler config"):
        schedule_of_model(tmp_path / "missing")


def test_parse_timesteps():
    assert parse_timesteps("0, 50 100,999") == (0, 50, 100, 999)
    assert parse_timesteps([3, 4.0]) == (3, 4)
    assert parse_timesteps(7) == (7,)
    for bad in ("", None):
        with pytest.raises(InputError, match=exactly("no timesteps given; give whole numbers like 0, 50, 100, 999")):
            parse_timesteps(bad)
    for bad, got in (("0, x", "'x'"), ("1.5", "'1.5'"), ("nan", "'nan'"), ([True], "True"), ([[1]], "[1]")):
        with pytest.raises(InputError, match=exactly(f"timesteps must be whole numbers like 0, 50, 999; got {got}")):
            parse_timesteps(bad)


def test_timesteps_past_the_end_move_to_the_end_once():
    # DDPM's default strip on a 500-step schedule: 600, 800 and 999 would all be 499; it is shown once.
    assert clamp_timesteps(DEFAULT_TIMESTEPS, 500) == ((0, 50, 100, 200, 400, 499), (600, 800, 999))
    assert clamp_timesteps("0, 499, 600", 500) == ((0, 499), (600,))
    assert clamp_timesteps("0, 600, 499", 500) == ((0, 499), (600,))
    # Nothing past the end: as given, duplicates included; negatives are left for NoiseRequest to refuse.
    assert clamp_timesteps("999, 999, 3", 1000) == ((999, 999, 3), ())
    assert clamp_timesteps("-1, 5", 10) == ((-1, 5), ())
    with pytest.raises(InputError, match=exactly("timesteps must be whole numbers like 0, 50, 999; got 'x'")):
        clamp_timesteps("0, x", 1000)
    with pytest.raises(InputError, match=exactly("num_train_timesteps must be a whole number from 2 to 10000; got 1")):
        clamp_timesteps("0", 1)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(timesteps=(0, 1000)),
         "timesteps must be whole numbers from 0 to 999 (num_train_timesteps - 1); got 1000"),
        (dict(timesteps=(-1,)), "timesteps must be whole numbers from 0 to 999 (num_train_timesteps - 1); got -1"),
        (dict(timesteps="5, ten"), "timesteps must be whole numbers like 0, 50, 999; got 'ten'"),
        (dict(timesteps=(10, 200), schedule=NoiseSchedule(num_train_timesteps=100)),
         "timesteps must be whole numbers from 0 to 99 (num_train_timesteps - 1); got 200"),
        (dict(resolution=4), "resolution must be a whole number from 16 to 512; got 4"),
        (dict(seed=-1), f"seed must be a whole number from 0 to {2**63 - 1}; got -1"),
        (dict(sample_image="cat.jpg"), "unknown sample image 'cat.jpg'; allowed: china.jpg, flower.jpg"),
    ],
)
def test_bad_requests_are_refused(kw, message):
    """The message names the field, what is allowed and what was given."""
    with pytest.raises(InputError, match=exactly(message)):
        NoiseRequest(**kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(beta_schedule="cubic"),
         "unknown beta schedule 'cubic'; allowed: linear, scaled_linear, squaredcos_cap_v2, sigmoid"),
        (dict(num_train_timesteps=0), "num_train_timesteps must be a whole number from 2 to 10000; got 0"),
        (dict(beta_start=0.0), "beta_start must be a number between 0 and 1 (exclusive); got 0.0"),
        (dict(beta_end=float("nan")), "beta_end must be a number between 0 and 1 (exclusive); got nan"),
        (dict(beta_start=0.1, beta_end=0.01), "beta_start must not exceed beta_end; got 0.1 > 0.01"),
    ],
)
def test_bad_schedules_are_refused(kw, message):
    with pytest.raises(InputError, match=exactly(message)):
        NoiseSchedule(**kw)


def test_non_image_upload_is_an_input_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(InputError, match="'notes.txt' is not an image"):
        load_image(str(path))
    buffer = io.BytesIO()
    gradient_image().save(buffer, format="PNG")
    (tmp_path / "ok.png").write_bytes(buffer.getvalue())
    assert load_image(str(tmp_path / "ok.png")).size == (40, 30)


def test_every_beta_schedule_builds():
    for name in BETA_SCHEDULES:
        assert NoiseSchedule(name).scheduler().alphas_cumprod.shape == (1000,)
