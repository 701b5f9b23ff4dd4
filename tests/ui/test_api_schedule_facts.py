"""/schedule_facts through the launched app: a dict of what the schedule leaves at T, per model or settings."""

import re

import pytest
from diffusers import DDIMScheduler

from engine.models.configs import read_scheduler_config
from engine.models.registry import BUILTIN_DIR

SD_SETTINGS = dict(beta_schedule="scaled_linear", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   rescale_betas_zero_snr=False)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_schedule_facts_of_sd_settings_are_lin_et_al_table_1(client):
    facts = client.predict(**SD_SETTINGS, api_name="/schedule_facts")
    assert round(facts["sqrt_alpha_bar_T"], 6) == 0.068265  # Lin et al. 2023, Table 1
    assert round(facts["snr_T"], 6) == 0.004682
    rescaled = client.predict(**{**SD_SETTINGS, "rescale_betas_zero_snr": True}, api_name="/schedule_facts")
    assert (rescaled["sqrt_alpha_bar_T"], rescaled["snr_T"]) == (0.0, 0.0)


def test_a_models_facts_use_its_own_scheduler_config(client):
    facts = client.predict(**SD_SETTINGS, model="digits-sd", scheduler="DDIM", steps=10, timestep_spacing="trailing",
                           api_name="/schedule_facts")
    config = read_scheduler_config(BUILTIN_DIR / "digits-sd")
    for spacing in ("leading", "linspace", "trailing"):
        ddim = DDIMScheduler.from_config(config, timestep_spacing=spacing)
        ddim.set_timesteps(10)
        assert facts["timesteps"][spacing] == ddim.timesteps.tolist()
    assert facts["timestep_spacing"] == "trailing"


@pytest.mark.parametrize("change, pattern", [
    (dict(timestep_spacing="evenly"), exactly("unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing")),
    (dict(steps=0), exactly("steps must be a whole number from 1 to 1000; got 0")),
    (dict(beta_schedule="cubic"),
     exactly("unknown beta schedule 'cubic'; allowed: linear, scaled_linear, squaredcos_cap_v2, sigmoid")),
])
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(client, change, pattern):
    with pytest.raises(Exception, match=pattern) as info:
        client.predict(**{**SD_SETTINGS, **change}, api_name="/schedule_facts")
    assert "Traceback" not in str(info.value)
    assert client.predict(**SD_SETTINGS, api_name="/schedule_facts")["T"] == 1000
