"""What the schedule leaves at T: Lin et al. 2023's Table 1, zero after rescaling, and the spacings' timesteps
against diffusers' own DDIMScheduler."""

import re

import pytest
from diffusers import DDIMScheduler

from engine.errors import InputError
from engine.forward.noise import NoiseSchedule, schedule_facts
from engine.models.configs import read_scheduler_config
from engine.models.registry import BUILTIN_DIR

SD = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
DDPM_LINEAR = NoiseSchedule("linear", 1000, 0.0001, 0.02)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize("schedule, sqrt_alpha_bar_T, snr_T", [
    (SD, 0.068265, 0.004682),  # Lin et al. 2023, Table 1, as printed (six decimals)
    (DDPM_LINEAR, 0.006353, 0.000040),
])
def test_the_end_of_the_schedule_is_lin_et_al_table_1_to_the_digits_printed(schedule, sqrt_alpha_bar_T, snr_T):
    facts = schedule_facts(schedule)
    assert round(facts["sqrt_alpha_bar_T"], 6) == sqrt_alpha_bar_T
    assert round(facts["snr_T"], 6) == snr_T
    assert round(facts["sqrt_one_minus_alpha_bar_T"] ** 2 + facts["sqrt_alpha_bar_T"] ** 2, 5) == 1.0
    assert facts["snr_T"] > 0
    assert facts["lin_et_al_table_1"]["sqrt_alpha_bar_T"] == sqrt_alpha_bar_T
    assert facts["lin_et_al_table_1"]["snr_T"] == snr_T
    assert "never learned to start from pure noise" in facts["meaning"]


@pytest.mark.parametrize("schedule", [SD, DDPM_LINEAR])
def test_zero_terminal_snr_rescaling_leaves_nothing_of_the_image_at_t(schedule):
    rescaled = NoiseSchedule(schedule.beta_schedule, schedule.num_train_timesteps, schedule.beta_start,
                             schedule.beta_end, rescale_betas_zero_snr=True)
    facts = schedule_facts(rescaled)
    assert facts["sqrt_alpha_bar_T"] == 0.0
    assert facts["snr_T"] == 0.0
    assert facts["sqrt_one_minus_alpha_bar_T"] == 1.0
    assert facts["lin_et_al_table_1"] is None  # Table 1's numbers are for the schedules as published
    assert facts["meaning"].startswith("SNR(T) is 0:")


@pytest.mark.parametrize("config", [
    read_scheduler_config(BUILTIN_DIR / "digits-sd"),  # steps_offset 1, linspace: the model's own config counts
    read_scheduler_config(BUILTIN_DIR / "digits-ddpm"),
])
def test_ten_step_timesteps_of_each_spacing_are_diffusers_ddim_schedulers(config):
    schedule = NoiseSchedule.from_config(config)
    facts = schedule_facts(schedule, "DDIM", 10, None, config)
    for spacing in ("leading", "linspace", "trailing"):
        ddim = DDIMScheduler.from_config(config, timestep_spacing=spacing)
        ddim.set_timesteps(10)
        assert facts["timesteps"][spacing] == ddim.timesteps.tolist(), spacing
        assert facts["first_timestep"][spacing] == ddim.timesteps.tolist()[0]
    assert facts["timestep_spacing"] == config["timestep_spacing"]  # none asked: the model's own
    assert facts["timesteps"]["trailing"][0] == schedule.num_train_timesteps - 1
    assert facts["timesteps"]["leading"] != facts["timesteps"]["trailing"]


def test_a_chosen_spacing_is_the_one_used():
    assert schedule_facts(SD, "DDIM", 10, "trailing")["timestep_spacing"] == "trailing"


@pytest.mark.parametrize("change, pattern", [
    (dict(timestep_spacing="evenly"), exactly("unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing")),
    (dict(num_inference_steps=0), exactly("steps must be a whole number from 1 to 1000; got 0")),
    (dict(scheduler="Fast"), "^unknown scheduler 'Fast'; allowed: DDIM, "),
])
def test_bad_input_says_what_was_given_and_what_is_allowed(change, pattern):
    with pytest.raises(InputError, match=pattern):
        schedule_facts(SD, **change)
