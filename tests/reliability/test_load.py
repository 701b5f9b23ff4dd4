"""Sampling while a training job runs: the training job (in the server) and the sampling runs (in the worker)
both finish, the images are the pixels a quiet server gives, and the job ends finished with its checkpoint."""

import numpy as np
from PIL import Image

from tests.helpers import wait_until
from tests.training_setups import train_status

REQUEST = dict(model="digits-sd", prompt="a handwritten digit three", negative_prompt="", steps=8, guidance_scale=7.5,
               scheduler="DDIM", width=32, height=32)
SEEDS = (31, 32, 33)
TRAIN = dict(dataset="digits", resolution=16, batch_size=8, max_steps=80, learning_rate=1e-3, lr_warmup_steps=5,
             mixed_precision="no", ema=False, seed=0, run_name="load-train", save_every=0, sample_every=0,
             preset="tiny", first_sample_step=0)


def pixels(final) -> np.ndarray:
    with Image.open(final[0]) as im:
        return np.asarray(im.convert("RGB"))


def state(client) -> dict:
    return train_status(client)[0]


def test_sampling_during_training_gives_the_same_pixels_and_training_ends_with_its_checkpoint(client, running_app):
    dirs = running_app[2]
    quiet = {seed: pixels(client.predict(**REQUEST, seed=seed, api_name="/txt2img")) for seed in SEEDS}
    try:
        started = client.predict(**TRAIN, api_name="/train_start")
        assert (started["state"], started["run_name"]) == ("running", "load-train")
        during, overlapped = {}, 0
        for seed in SEEDS:
            before = state(client)["state"]
            during[seed] = pixels(client.predict(**REQUEST, seed=seed, api_name="/txt2img"))
            overlapped += before == state(client)["state"] == "running"  # the run began and ended within training
        assert overlapped >= 1, "training ended before a run could overlap it"
        final = wait_until(lambda: (found := state(client))["state"] not in ("starting", "running", "stopping")
                           and found, timeout=600, what="the training job's end")
    finally:
        running_app[1].stop_training(wait=60)
    for seed in SEEDS:
        assert np.array_equal(during[seed], quiet[seed]), f"seed {seed}: not the quiet server's pixels"
    assert (final["state"], final["step"], final["checkpoint"], final["checkpoint_step"]) == \
        ("finished", 80, "models/load-train", 80)
    assert (dirs / "models" / "load-train" / "model_index.json").is_file()
    assert "load-train" in running_app[1].list_runs()  # a complete checkpoint, resumable
