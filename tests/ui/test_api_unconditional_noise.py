"""/ddpm and /add_noise through gradio_client against a launched app."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from gradio_client import handle_file
from PIL import Image

from tests.helpers import as_dict, wait_for_outputs

GAP, GAP_GREY = 2, 128  # the grid's gap between tiles: 2 px of mid-grey

DDPM_ARGS = dict(model="digits-ddpm", scheduler="DDIM", steps=12, seed=3, batch_size=2)
NOISE_ARGS = dict(image=None, timesteps="0, 50, 400, 999", beta_schedule="squaredcos_cap_v2",
                  num_train_timesteps=1000, seed=4)


def test_ddpm_streams_previews_then_the_grid_equal_to_the_pipeline(client, running_app):
    job = client.submit(**DDPM_ARGS, api_name="/ddpm")
    updates = list(job)
    assert len(updates) >= 3  # Started, at least one preview, Done
    assert any(u[0] for u in updates[:-1]), "no x0 preview was streamed before the final image"
    final = job.outputs()[-1]
    image_path, info = final[0], as_dict(final[4])
    timesteps = next(u[3] for u in updates if isinstance(u[3], str))  # sent once, when the loop starts
    assert info["seed"] == 3 and info["steps"] == 12 and info["scheduler"] == "DDIM" and len(info["files"]) == 2
    assert "tensor([" in timesteps and timesteps.rstrip("])").endswith(", 0")
    with Image.open(image_path) as im:
        assert im.format == "PNG" and im.size == (64 + GAP, 32)  # two 32 px images side by side, a gap between
        params = im.text["parameters"]
        grid = np.asarray(im.convert("RGB")).astype(int)
    assert "Steps: 12, Sampler: DDIM, Seed: 3, Size: 32x32, Model: digits-ddpm, Batch size: 2" in params
    # The page's grid is DDPMPipeline's batch, to within 2/255.
    model = running_app[1].registry.load("digits-ddpm", "unconditional")
    pipe = DDPMPipeline(unet=model.unet, scheduler=DDIMScheduler.from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=12, generator=torch.Generator("cpu").manual_seed(3),
               output_type="np").images
    theirs = (out * 255).round().astype(int)  # (2, 32, 32, 1)
    assert np.abs(grid[:, :32] - theirs[0]).max() <= 2 and np.abs(grid[:, 32 + GAP:] - theirs[1]).max() <= 2
    assert all(f.startswith("outputs/unconditional/") for f in info["files"])  # shown relative to the server
    with Image.open(running_app[2] / info["files"][1]) as saved:
        assert "Seed: 3" in saved.text["parameters"]


def grid_and_info(final):
    """The final grid's pixels (H, W, 3) and the parameters the page shows."""
    with Image.open(final[0]) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    return pixels, as_dict(final[4])


def test_ddpm_random_seed_is_shown(client):
    args = {**DDPM_ARGS, "seed": -1, "steps": 2}
    (first, info1), (second, info2) = (grid_and_info(client.predict(**args, api_name="/ddpm")) for _ in range(2))
    seeds = info1["seed"], info2["seed"]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    # -1 draws anew each run: another seed shown, and another batch (a fixed seed would give the same one)
    assert seeds[0] != seeds[1]
    assert np.abs(first - second).max() > 10
    # the seed shown is the one used: typed in, it gives the same batch
    again, info = grid_and_info(client.predict(**{**args, "seed": seeds[0]}, api_name="/ddpm"))
    assert info["seed"] == seeds[0] and np.array_equal(again, first)


def test_ddpm_defaults_to_a_fast_sampler(client):
    """/ddpm with only a model and a seed samples with DDIM at 50 steps, not DDPM at the model's 1000."""
    params = {p["parameter_name"]: p for p in client.view_api(return_format="dict", print_info=False)
              ["named_endpoints"]["/ddpm"]["parameters"]}
    assert list(params) == ["model", "scheduler", "steps", "seed", "batch_size", "batch_count", "compile",
                            "timestep_spacing"]  # in order
    assert params["scheduler"]["parameter_default"] == "DDIM" and params["steps"]["parameter_default"] == 50
    assert params["compile"]["parameter_default"] is False
    final = client.predict(model="digits-ddpm", seed=3, api_name="/ddpm")
    info = as_dict(final[4])
    assert (info["scheduler"], info["steps"], info["scheduler_class"]) == ("DDIM", 50, "DDIMScheduler")
    # DDPM as trained is still there when asked for
    assert as_dict(client.predict(model="digits-ddpm", scheduler="DDPM", steps=4, seed=3,
                                  api_name="/ddpm")[4])["scheduler_class"] == "DDPMScheduler"


def test_ddpm_saves_the_grid_beside_its_tiles(client, running_app):
    final = client.predict(**{**DDPM_ARGS, "batch_size": 4, "steps": 3}, api_name="/ddpm")
    info = as_dict(final[4])
    grid_path, tiles = running_app[2] / info["grid"], [running_app[2] / t for t in info["files"]]
    assert grid_path.name.endswith("-grid.png") and len(tiles) == 4
    assert all(Path(t).parent == Path(grid_path).parent for t in tiles)  # beside its tiles
    with Image.open(grid_path) as im:
        assert im.format == "PNG" and im.size == (64 + GAP, 64 + GAP)
        params = im.text["parameters"]
        assert "Steps: 3, Sampler: DDIM, Seed: 3, Size: 32x32, Model: digits-ddpm, Batch size: 4" in params
        saved = np.asarray(im.convert("RGB")).astype(int)
    with Image.open(final[0]) as shown:  # what the page shows is the saved grid
        assert np.array_equal(np.asarray(shown.convert("RGB")).astype(int), saved)
    assert (saved[32:32 + GAP] == GAP_GREY).all() and (saved[:, 32:32 + GAP] == GAP_GREY).all()
    for i, tile in enumerate(tiles):
        y, x = (i // 2) * (32 + GAP), (i % 2) * (32 + GAP)
        with Image.open(tile) as im:
            assert np.array_equal(saved[y:y + 32, x:x + 32], np.asarray(im.convert("RGB")).astype(int))
    # one image is its own grid: nothing more is saved
    one = as_dict(client.predict(**{**DDPM_ARGS, "batch_size": 1, "steps": 2}, api_name="/ddpm")[4])
    assert one["grid"] is None and len(one["files"]) == 1


def diffusers_strip(timesteps, seed=4, **schedule) -> np.ndarray:
    """x_t of the sample image at 128 px through diffusers' own add_noise: (N, H, W, 3) uint8."""
    from engine.forward.noise import image_to_tensor, load_image

    x0 = image_to_tensor(load_image(None, "china.jpg"), 128)
    noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed))
    scheduler = DDPMScheduler(**schedule)
    x_t = torch.cat([scheduler.add_noise(x0, noise, torch.tensor([t])) for t in timesteps])
    return ((x_t / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def plot_rows(plot) -> dict:
    """A plot's data as {series: [(t, value), ...]}."""
    plot = as_dict(plot)
    t, value, series = (plot["columns"].index(c) for c in ("t", "value", "series"))
    rows = {}
    for row in plot["data"]:
        rows.setdefault(row[series], []).append((row[t], row[value]))
    return rows


def test_add_noise_returns_the_strip_the_frame_and_the_curves_as_diffusers_computes_them(client):
    gallery, frame, *plots, note = client.predict(**NOISE_ARGS, t=200, api_name="/add_noise")
    assert [g["caption"].split(",")[0] for g in gallery] == ["t = 0", "t = 50", "t = 400", "t = 999"]
    ours = np.stack([pixels(g["image"]) for g in gallery])
    assert np.array_equal(ours, diffusers_strip((0, 50, 400, 999), beta_schedule="squaredcos_cap_v2"))
    # The frame is x_t at the slider's t, from the same noise.
    assert np.array_equal(pixels(frame)[None], diffusers_strip((200,), beta_schedule="squaredcos_cap_v2"))
    assert note == ""
    # The curve data: four plots, each with the schedule's curve, DDIM's 50 ticks and the cursor at t.
    ddim = DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    ddim.set_timesteps(50)
    assert len(plots) == 4
    for plot in plots:
        rows = plot_rows(plot)
        assert any(s.startswith("squaredcos_cap_v2") for s in rows)
        assert sorted({t for t, _ in rows["DDIM, 50 steps"]}) == sorted(ddim.timesteps.tolist())
        assert {t for t, _ in rows["slider t"]} == {200}


def test_add_noise_frame_defaults_to_t_500(client):
    _, frame, *_ = client.predict(**NOISE_ARGS, api_name="/add_noise")
    assert np.array_equal(pixels(frame)[None], diffusers_strip((500,), beta_schedule="squaredcos_cap_v2"))


def test_timesteps_past_the_end_are_shown_at_the_end_and_said_so(client):
    """num_train_timesteps=500 with 999 still in the timesteps: no error; 999 shown as 499, once."""
    gallery, frame, *_, note = client.predict(**{**NOISE_ARGS, "num_train_timesteps": 500},
                                              api_name="/add_noise")
    assert [g["caption"].split(",")[0] for g in gallery] == ["t = 0", "t = 50", "t = 400", "t = 499"]
    schedule = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500)
    assert np.array_equal(np.stack([pixels(g["image"]) for g in gallery]),
                          diffusers_strip((0, 50, 400, 499), **schedule))
    assert note == "Timestep 999 is past the end of this schedule (num_train_timesteps = 500): shown at t = 499."
    assert np.array_equal(pixels(frame)[None], diffusers_strip((499,), **schedule))  # t = 500 is past it too
    _, _, *_, note = client.predict(**{**NOISE_ARGS, "timesteps": "0, 600, 1000, 999", "num_train_timesteps": 500},
                                    api_name="/add_noise")
    assert note == ("Timesteps 600, 1000, 999 are past the end of this schedule (num_train_timesteps = 500): "
                    "shown at t = 499.")


def test_marker_steps_past_the_schedule_mark_every_timestep_and_say_so(client):
    """A 30-step schedule with DDIM's 50 steps still asked for: every t is marked, no error."""
    gallery, _, beta_plot, *_, note = client.predict(**{**NOISE_ARGS, "timesteps": "0, 10, 29",
                                                        "num_train_timesteps": 30}, api_name="/add_noise")
    assert len(gallery) == 3
    assert note == "DDIM cannot take 50 steps on a schedule of 30 timesteps: marked for 30 steps."
    assert sorted({t for t, _ in plot_rows(beta_plot)["DDIM, 30 steps"]}) == list(range(30))


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    "endpoint, change, pattern",
    [
        ("/add_noise", dict(timesteps="-1"),
         exactly("timesteps must be whole numbers from 0 to 999 (num_train_timesteps - 1); got -1")),
        ("/add_noise", dict(timesteps="5, ten"), exactly("timesteps must be whole numbers like 0, 50, 999; got 'ten'")),
        ("/add_noise", dict(num_train_timesteps=0),
         exactly("num_train_timesteps must be a whole number from 2 to 10000; got 0")),
        ("/add_noise", dict(beta_schedule="cubic"), exactly(
            "unknown beta schedule 'cubic'; allowed: linear, scaled_linear, squaredcos_cap_v2, sigmoid")),
        ("/ddpm", dict(steps=0), exactly("steps must be a whole number from 1 to 10000; got 0")),
        ("/ddpm", dict(batch_size=0), exactly("batch size must be a whole number from 1 to 16; got 0")),
        ("/ddpm", dict(batch_size=1000), exactly("batch size must be a whole number from 1 to 16; got 1000")),
        ("/ddpm", dict(seed=-5), exactly(f"seed must be a whole number from -1 to {2**63 - 1}; got -5")),
        ("/ddpm", dict(steps=1001), exactly(
            "steps for this model (trained with 1000 timesteps) must be a whole number from 1 to 1000; got 1001")),
        # diffusers' own reason follows in brackets
        ("/ddpm", dict(scheduler="PNDM", steps=3),
         "^" + re.escape("PNDM cannot run 3 steps on this model; try more steps or another scheduler (")),
        ("/ddpm", dict(model="digits-sd"),
         exactly("'digits-sd' is a StableDiffusionPipeline, not an unconditional model; use it in the text-to-image tab")),
    ],
)
def test_bad_input_is_a_clear_error_and_server_keeps_serving(client, endpoint, change, pattern):
    base = DDPM_ARGS if endpoint == "/ddpm" else NOISE_ARGS
    with pytest.raises(Exception, match=pattern) as info:
        client.predict(**{**base, **change}, api_name=endpoint)
    assert "Traceback" not in str(info.value)
    ok = client.predict(**{**DDPM_ARGS, "steps": 1}, api_name="/ddpm")
    assert ok[0]


def test_unknown_model_says_where_models_are_looked_for(client, running_app):
    message = ("unknown model 'no-such-model': not a built-in (digits-sd, digits-ddpm), not a folder or .safetensors "
               "file under the models dir (--models-dir), and not a hub id like 'owner/name'")
    with pytest.raises(Exception, match=exactly(message)):
        client.predict(**{**DDPM_ARGS, "model": "no-such-model"}, api_name="/ddpm")
    assert client.predict(**{**DDPM_ARGS, "steps": 1}, api_name="/ddpm")[0]


def test_non_image_upload_is_refused(client, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    # the engine names the file by its name alone: where the server keeps uploads is not the caller's business
    with pytest.raises(Exception, match=exactly("'notes.txt' is not an image PIL can read (PNG, JPEG, WebP, ...): "
                                                "cannot identify image file 'notes.txt'")):
        client.predict(**{**NOISE_ARGS, "image": handle_file(str(notes))}, api_name="/add_noise")
    gallery = client.predict(**NOISE_ARGS, api_name="/add_noise")[0]
    assert len(gallery) == 4


def test_stop_a_1000_step_run_and_the_next_starts(running_app):
    """DDPM as trained (1000 steps): previews stream about 10 a second; Stop ends it."""
    from gradio_client import Client

    # gradio_client downloads each streamed update's images while holding the job's lock, which job.cancel()
    # waits for: without downloads, Stop is asked as soon as the test asks it.
    client = Client(running_app[0], verbose=False, download_files=False)
    job = client.submit(**{**DDPM_ARGS, "scheduler": "DDPM", "steps": 1000, "batch_size": 1}, api_name="/ddpm")
    assert len(wait_for_outputs(job, 3)) >= 3, "no preview arrived"
    stopped = running_app[1].recent_runs()[-1]
    job.cancel()  # how soon Stop answers is bench/page.py's figure 4, not a bound here
    final = client.predict(**{**DDPM_ARGS, "steps": 2}, api_name="/ddpm")
    assert final[0]
    assert "done" not in str(job.outputs()[-1][2])
    following = running_app[1].recent_runs()[-1]
    assert stopped.outcome == "stopped" and stopped.ended <= following.started
    client.close()
