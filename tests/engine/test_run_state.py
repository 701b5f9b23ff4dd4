"""Nothing one run switches on reaches the next: every run sets the whole state it depends on (the LoRA and its scale,
the attention processors, compiled or not, the scheduler) and says it in its record."""

import numpy as np
import pytest

from engine.events import Done
from engine.models.loras import activate
from engine.sampling.img2img import Img2ImgRequest, iter_img2img
from engine.sampling.txt2img import Txt2ImgRequest
from engine.workbench import Folders, Workbench

IMAGE = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))  # a grey ramp


@pytest.fixture(scope="module")
def benches(tmp_path_factory, trained_lora):
    """A LoRA trained for two steps on digits-sd; the folders sampled through the device worker and, fresh, here."""
    from tests.training_setups import install_lora

    root = tmp_path_factory.mktemp("state")
    folders = Folders(root / "models", root / "data", root / "outputs")
    install_lora(trained_lora, folders.models_dir, "lo")
    worker = Workbench(folders, device="cpu")
    yield worker, folders
    worker.close()


def img2img(bench) -> Done:
    request = Img2ImgRequest(IMAGE, prompt="a handwritten digit seven", strength=0.8, num_inference_steps=5, seed=2,
                             scheduler="DDIM", model="digits-sd")
    done = list(bench.iter_img2img(request))[-1]
    assert isinstance(done, Done)
    return done


def test_img2img_after_a_lora_run_equals_img2img_on_a_fresh_worker(benches):
    worker, folders = benches
    lora = Txt2ImgRequest(prompt="a framed handwritten digit seven", num_inference_steps=2, seed=5, lora="lo",
                          lora_scale=2.0, model="digits-sd")
    with_lora = list(worker.iter_txt2img(lora))[-1]
    assert with_lora.info["state"]["lora"] == "lo" and with_lora.record["state"]["lora_scale"] == 2.0
    after = img2img(worker)
    fresh = img2img(Workbench(folders, device="cpu", worker=False))
    assert np.array_equal(np.asarray(after.images[0]), np.asarray(fresh.images[0]))
    assert after.info["state"] == fresh.info["state"]
    assert after.info["state"]["lora"] is None and after.info["state"]["compiled"] is False
    # The comparison can fail: the same img2img with the LoRA left on gives another image.
    local = Workbench(folders, device="cpu", worker=False)
    pipe = local.registry.load("digits-sd", "txt2img")
    activate(pipe, local.registry.lora_file("digits-sd", "lo"), 2.0, name="lo")
    request = Img2ImgRequest(IMAGE, prompt="a handwritten digit seven", strength=0.8, num_inference_steps=5, seed=2,
                             scheduler="DDIM", model="digits-sd")
    leaked = list(iter_img2img(request, pipe=pipe))[-1]
    assert leaked.info["state"]["lora"] == "lo"  # and its record says so
    assert np.abs(np.asarray(leaked.images[0]).astype(int) - np.asarray(fresh.images[0])).max() > 10


def test_attention_processors_a_run_left_changed_are_set_back(benches):
    from diffusers.models.attention_processor import AttnProcessor

    _, folders = benches
    bench = Workbench(folders, device="cpu", worker=False)
    before = img2img(bench)
    pipe = bench.registry.load("digits-sd", "txt2img")
    own = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert own != {"AttnProcessor"}  # so the swap below changes something
    pipe.unet.set_attn_processor(AttnProcessor())  # what a run that failed inside fast.fused_qkv could leave
    after = img2img(bench)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == own
    assert after.info["state"]["attention"] == sorted(own) == before.info["state"]["attention"]
    assert np.array_equal(np.asarray(after.images[0]), np.asarray(before.images[0]))
