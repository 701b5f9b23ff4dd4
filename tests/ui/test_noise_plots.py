"""The Noise tab's plot shaping (ui/noise.py) over the engine's schedule curves."""

import numpy as np
from diffusers import DDPMScheduler

from engine.forward.noise import BETA_SCHEDULES, NoiseSchedule, schedule_arrays, visited_timesteps
from ui.noise import (
    CURSOR,
    CURSOR_COLOR,
    MAX_PLOT_ROWS,
    MAX_TICKS,
    PALETTE,
    PLOTS,
    TICK_COLOR,
    TICK_HEIGHT,
    past_the_end_note,
    plot_frames,
    series_colors,
    too_many_steps_note,
)

TICKS = "DDIM, 10 steps"


def test_plot_frames_fit_the_line_plot_with_ticks_at_visited_timesteps_and_a_cursor():
    schedules = {"cosine": NoiseSchedule("squaredcos_cap_v2"), "linear": NoiseSchedule()}
    arrays = {label: schedule_arrays(s) for label, s in schedules.items()}
    visited = visited_timesteps("DDIM", 10, schedules["cosine"])
    frames = plot_frames(arrays, visited, TICKS, cursor=300)
    assert list(frames) == list(PLOTS)
    alpha_bar = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy()
    for title, frame in frames.items():
        assert len(frame) <= MAX_PLOT_ROWS and np.isfinite(frame["value"]).all()
        curves = frame[~frame["series"].isin([TICKS, CURSOR])]
        assert curves.groupby("series")["t"].agg(["min", "max"]).eq([0, 999]).all().all()  # ends kept
        lo, hi = curves["value"].min(), curves["value"].max()
        # Ticks: (t, lo), (t, lo + a twentieth of the range), (t, lo) at each visited t, never up to the curves.
        ticks = frame[frame["series"] == TICKS]
        assert sorted(set(ticks["t"])) == list(range(0, 1000, 100))
        np.testing.assert_allclose(ticks["value"].to_numpy(),
                                   np.tile([lo, lo + TICK_HEIGHT * (hi - lo), lo], 10), rtol=1e-12)
        # The cursor: one vertical line at t across the whole range.
        cursor = frame[frame["series"] == CURSOR]
        assert cursor["t"].tolist() == [300, 300] and cursor["value"].tolist() == [lo, hi]
    signal = frames["ᾱ_t: the share of the image left (squared)"]
    np.testing.assert_allclose(signal[signal["series"] == "cosine"].set_index("t")["value"].loc[[0, 500, 999]],
                               alpha_bar[[0, 500, 999]], rtol=1e-9)
    bare = plot_frames(arrays)["log SNR_t = log(ᾱ_t / (1 - ᾱ_t))"]
    assert set(bare["series"]) == {"cosine", "linear"}  # no ticks, no cursor unless asked


def test_every_visited_timestep_and_five_schedules_still_fit_under_the_row_cap():
    """DDPM's 1000 steps over five schedules: ticks thinned to MAX_TICKS (ends kept), rows under the cap."""
    schedules = {"linear": NoiseSchedule(), **{f"{n} (overlay)": NoiseSchedule(n) for n in BETA_SCHEDULES}}
    arrays = {label: schedule_arrays(s) for label, s in schedules.items()}
    visited = visited_timesteps("DDPM", 1000, schedules["linear"])
    frames = plot_frames(arrays, visited, "DDPM, 1000 steps", cursor=999)
    for title, frame in frames.items():
        assert len(frame) <= MAX_PLOT_ROWS, title
        ticks = sorted(set(frame[frame["series"] == "DDPM, 1000 steps"]["t"]))
        assert len(ticks) == MAX_TICKS and ticks[0] == 0 and ticks[-1] == 999
        assert max(np.diff(ticks)) - min(np.diff(ticks)) <= 1  # evenly
        per_curve = frame[~frame["series"].isin(["DDPM, 1000 steps", CURSOR])].groupby("series").size()
        assert per_curve.min() >= 50, "the curves were thinned too far to read"


def test_series_colors_keep_ticks_grey_and_the_cursor_red():
    schedules = {"cosine": NoiseSchedule("squaredcos_cap_v2"), "linear": NoiseSchedule()}
    frames = plot_frames({label: schedule_arrays(s) for label, s in schedules.items()},
                         visited_timesteps("DDIM", 10, schedules["cosine"]), TICKS, cursor=10)
    colors = series_colors(frames["signal √ᾱ_t and noise √(1 - ᾱ_t)"], TICKS)
    assert colors == {"cosine: signal": PALETTE[0], "cosine: noise": PALETTE[1], "linear: signal": PALETTE[2],
                      "linear: noise": PALETTE[3], TICKS: TICK_COLOR, CURSOR: CURSOR_COLOR}
    assert TICK_COLOR not in PALETTE and CURSOR_COLOR not in PALETTE


def test_past_the_end_note_says_what_was_given_and_where_it_is_shown():
    assert past_the_end_note((), 1000) == ""
    assert past_the_end_note((999,), 500) == (
        "Timestep 999 is past the end of this schedule (num_train_timesteps = 500): shown at t = 499.")
    assert past_the_end_note((600, 800, 999), 500) == (
        "Timesteps 600, 800, 999 are past the end of this schedule (num_train_timesteps = 500): shown at t = 499.")


def test_too_many_steps_note():
    assert too_many_steps_note("DDIM", 50, 50) == ""
    assert too_many_steps_note("DDIM", 50, 30) == (
        "DDIM cannot take 50 steps on a schedule of 30 timesteps: marked for 30 steps.")
