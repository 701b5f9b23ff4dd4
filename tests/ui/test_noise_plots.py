"""The Noise tab's plot shaping (ui/noise.py) over the engine's schedule curves."""

import numpy as np
from diffusers import DDPMScheduler

from engine.forward.noise import NoiseSchedule, schedule_arrays, visited_timesteps
from ui.noise import MAX_PLOT_ROWS, PLOTS, plot_frames


def test_plot_frames_fit_the_line_plot_and_stem_at_visited_timesteps():
    schedules = {"cosine": NoiseSchedule("squaredcos_cap_v2"), "linear": NoiseSchedule()}
    arrays = {label: schedule_arrays(s) for label, s in schedules.items()}
    visited = visited_timesteps("DDIM", 10, schedules["cosine"])
    frames = plot_frames(arrays, visited, "DDIM, 10 steps")
    assert list(frames) == list(PLOTS)
    alpha_bar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy()
    for title, frame in frames.items():
        assert len(frame) <= MAX_PLOT_ROWS and np.isfinite(frame["value"]).all()
        curves = frame[frame["series"] != "DDIM, 10 steps"]
        assert curves.groupby("series")["t"].agg(["min", "max"]).eq([0, 999]).all().all()  # ends kept
        stems = frame[frame["series"] == "DDIM, 10 steps"]
        assert sorted(set(stems["t"])) == list(range(0, 1000, 100))  # on the chosen (first) schedule only
    stems = frames["alpha_bar_t"][frames["alpha_bar_t"]["series"] == "DDIM, 10 steps"]
    tops = stems.groupby("t")["value"].max()
    np.testing.assert_allclose(tops.to_numpy(), alpha_bar[tops.index.to_numpy()], rtol=1e-9)
    assert "DDIM, 10 steps" not in set(plot_frames(arrays)["log SNR_t"]["series"])
