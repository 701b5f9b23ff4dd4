"""Forward, then back: img2img against diffusers' own StableDiffusionImg2ImgPipeline, SDEdit on an unconditional
model against a plain-diffusers loop started from scheduler.add_noise, and the snippets the page shows."""

import os
import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.records.runs import iter_saved
from engine.cancel import CancelToken
from engine.errors import Cancelled, InputError
from engine.events import Done, Started, Step
from engine.images import RESIZE_MODES, resize_image
from engine.sampling.img2img import (FIXED_SIZE, Img2ImgRequest, iter_img2img, iter_sdedit, output_size, similarity,
                                     start_timestep)
from engine.records.outputs import a1111_parameters, read_parameters
from engine.sampling.schedulers import make_scheduler


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph (scikit-learn ships it), 640x427, not square: the resize to the run's size matters."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


@pytest.fixture(scope="module")
def small_photo(photo) -> Image.Image:
    """64x48: the photo's middle, scaled down (an image passed to the tiny model at its own size)."""
    return photo.crop((80, 0, 560, 360)).resize((64, 48), Image.LANCZOS)


@pytest.fixture(scope="module")
def tiny_ddpm():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_ddpm_grey():
    """One channel, as the built-in digits-ddpm: the image is made grey before it is noised."""
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=1, sample_size=16, channels=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def run_snippet(code: str, folder) -> dict:
    """The code box's snippet executed in ``folder`` (where its 'original.png' lies), its image not saved: its
    names."""
    namespace, cwd = {}, os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(code.replace("image.save('image.png')\n", ""), "snippet", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def pipeline_image(pipe, image, scheduler, *, prompt, negative_prompt, strength, num_inference_steps,
                   guidance_scale, seed) -> np.ndarray:
    """StableDiffusionImg2ImgPipeline on the same components, given ``image`` as it is."""
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    out = img2img(prompt, image=image, strength=strength, negative_prompt=negative_prompt,
                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    return (out * 255).round().astype(int)


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M Karras", "Euler a"])
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_img2img_matches_the_img2img_pipeline(tiny_sd, photo, scheduler, strength):
    """The default size: the photo's 640x427 aspect at about the tiny model's 64x64 pixels (78.4 x 52.3 ->
    80x56), stretched there ("Just resize"), then the pipeline given that image."""
    kw = dict(prompt="a handwritten digit seven", negative_prompt="blurry", strength=strength,
              num_inference_steps=10, guidance_scale=6.0, seed=1234)
    events = list(iter_img2img(Img2ImgRequest(photo, scheduler=scheduler, **kw), pipe=tiny_sd))
    ours = pixels(events[-1].images[0])
    theirs = pipeline_image(tiny_sd, photo.resize((80, 56), Image.LANCZOS), scheduler, **kw)
    assert ours.shape == theirs.shape == (56, 80, 3)
    assert np.abs(ours - theirs).max() <= 2
    # The comparison can fail: another seed, or another strength, gives a visibly different image.
    resized = photo.resize((80, 56), Image.LANCZOS)
    assert np.abs(pipeline_image(tiny_sd, resized, scheduler, **{**kw, "seed": 99}) - theirs).max() > 10
    other = 0.5 if strength != 0.5 else 0.9
    assert np.abs(pipeline_image(tiny_sd, resized, scheduler, **{**kw, "strength": other}) - theirs).max() > 10


def test_img2img_without_guidance_matches_the_pipeline(tiny_sd, photo):
    kw = dict(prompt="seven", negative_prompt="", strength=0.6, num_inference_steps=5, guidance_scale=1.0, seed=5)
    ours = pixels(list(iter_img2img(Img2ImgRequest(photo, scheduler="Euler", **kw), pipe=tiny_sd))[-1].images[0])
    assert np.abs(ours - pipeline_image(tiny_sd, photo.resize((80, 56), Image.LANCZOS), "Euler", **kw)).max() <= 2


@pytest.mark.parametrize("resize_mode", list(RESIZE_MODES))
@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M Karras"])
def test_an_image_at_its_own_size_matches_the_pipeline_given_it_as_it_is(tiny_sd, small_photo, scheduler,
                                                                         resize_mode):
    """64x48 on a model whose own size is 64x64 (sample_size 32): a 64x48 image, as StableDiffusionImg2ImgPipeline
    makes it from the image untouched, in every resize mode (an image at the run's size is not resized)."""
    kw = dict(prompt="a handwritten digit seven", negative_prompt="", strength=0.7, num_inference_steps=10,
              guidance_scale=6.0, seed=21)
    request = Img2ImgRequest(small_photo, scheduler=scheduler, width=64, height=48, resize_mode=resize_mode, **kw)
    events = list(iter_img2img(request, pipe=tiny_sd))
    ours = pixels(events[-1].images[0])
    theirs = pipeline_image(tiny_sd, small_photo, scheduler, **kw)
    assert ours.shape == theirs.shape == (48, 64, 3)
    assert np.abs(ours - theirs).max() <= 2
    assert events[0].info["width"] == 64 and events[0].info["height"] == 48
    assert np.abs(pipeline_image(tiny_sd, small_photo, scheduler, **{**kw, "seed": 22}) - theirs).max() > 10


@pytest.mark.parametrize("resize_mode", ["Crop and resize", "Resize and fill"])
def test_a_resize_mode_is_the_image_the_pipeline_is_given(tiny_sd, photo, resize_mode):
    """A size given with another aspect (48x64 from the 640x427 photo): the photo brought there by the mode,
    then the pipeline given that image."""
    kw = dict(prompt="seven", negative_prompt="", strength=0.6, num_inference_steps=8, guidance_scale=7.5, seed=3)
    request = Img2ImgRequest(photo, scheduler="DDIM", width=48, height=64, resize_mode=resize_mode, **kw)
    ours = pixels(list(iter_img2img(request, pipe=tiny_sd))[-1].images[0])
    theirs = pipeline_image(tiny_sd, resize_image(photo, 48, 64, resize_mode), "DDIM", **kw)
    assert ours.shape == theirs.shape == (64, 48, 3)
    assert np.abs(ours - theirs).max() <= 2
    stretched = pipeline_image(tiny_sd, photo.resize((48, 64), Image.LANCZOS), "DDIM", **kw)
    assert np.abs(stretched - theirs).max() > 10  # the mode made a difference


@pytest.mark.parametrize(
    "image_size, model_side, given, expected",
    [
        ((640, 427), 64, (None, None), (80, 56)),  # sqrt(4096 x 640/427) = 78.4, 4096 / 78.4 = 52.3
        ((768, 512), 512, (None, None), (624, 416)),  # an SD 1.5 user's 3:2 photo: 627.0 x 418.0
        ((300, 300), 512, (None, None), (512, 512)),  # a square image: the model's own size
        ((64, 48), 64, (None, None), (72, 56)),  # 73.9 x 55.4
        ((640, 427), 64, (96, None), (96, 64)),  # 96 x 427/640 = 64.05
        ((640, 427), 64, (None, 40), (56, 40)),  # 40 x 640/427 = 59.95, nearer 56 than 64
        ((640, 427), 64, (64, 48), (64, 48)),  # both given: as given
        ((5000, 10), 512, (None, None), (2048, 8)),  # a strip: 11449 x 22.9 scaled to a 2048 long side, 4.1 -> 8
    ],
)
def test_the_default_size_is_the_images_aspect_at_about_the_models_pixels(image_size, model_side, given, expected):
    assert output_size(image_size, (model_side, model_side), *given) == expected


def grid(width, height, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("resize_mode", list(RESIZE_MODES))
def test_every_resize_mode_leaves_an_image_at_its_size_untouched(resize_mode):
    image = grid(64, 48)
    assert np.array_equal(np.asarray(resize_image(image, 64, 48, resize_mode)), np.asarray(image))


def test_just_resize_stretches_the_whole_image():
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (40, 0, 80, 40))  # left half red, right half blue
    out = np.asarray(resize_image(image, 40, 40, "Just resize")).astype(int)
    assert out.shape == (40, 40, 3)
    # both halves, squeezed into 20 columns each (Lanczos rings a level or two beside the border)
    assert np.abs(out[:, :19] - (255, 0, 0)).max() <= 2 and np.abs(out[:, 21:] - (0, 0, 255)).max() <= 2


@pytest.mark.parametrize("size, crop", [((80, 40), (20, 0, 60, 40)), ((40, 80), (0, 20, 40, 60))])
def test_crop_and_resize_keeps_the_middle(size, crop):
    """Scaled to cover 40x40 (here already covering it), what overflows cut equally from both sides."""
    image = grid(*size)
    assert np.array_equal(np.asarray(resize_image(image, 40, 40, "Crop and resize")), np.asarray(image.crop(crop)))


def test_crop_and_resize_scales_to_cover():
    image = grid(160, 80)  # to 40x40: scaled to 80x40, then its middle 40 columns
    expected = image.resize((80, 40), Image.LANCZOS).crop((20, 0, 60, 40))
    assert np.array_equal(np.asarray(resize_image(image, 40, 40, "Crop and resize")), np.asarray(expected))


def test_resize_and_fill_fits_the_image_and_stretches_its_edges_over_the_rest():
    """A 160x80 image into 40x40: scaled to fit (40x20), centred (rows 10 to 29), the 10 rows above and below
    drawn from its top and bottom rows."""
    image = grid(160, 80)
    out = np.asarray(resize_image(image, 40, 40, "Resize and fill")).astype(int)
    fitted = np.asarray(image.resize((40, 20), Image.LANCZOS)).astype(int)
    assert out.shape == (40, 40, 3)
    assert np.array_equal(out[10:30], fitted)
    assert (out[:10] == out[0]).all() and (out[30:] == out[39]).all()  # one line drawn out across each band
    assert np.abs(out[0] - fitted[0]).mean() < np.abs(out[0] - fitted[10]).mean()  # from the edge, not the middle
    assert np.abs(out[39] - fitted[19]).mean() < np.abs(out[39] - fitted[10]).mean()


@pytest.mark.parametrize("size, band", [((160, 80), (slice(0, 10), slice(None))), ((80, 160), (slice(None), slice(0, 10)))])
def test_resize_and_fill_on_an_image_constant_across_its_edge_fills_with_that_edge(size, band):
    """Where the image does not change across its edge (stripes running into the band), the band is the edge
    line exactly: stretched, not black, not mirrored."""
    wide = size[0] > size[1]
    line = np.random.default_rng(1).integers(0, 256, (size[0] if wide else size[1], 3), dtype=np.uint8)
    stripes = np.broadcast_to(line[None] if wide else line[:, None], (size[1], size[0], 3)).copy()
    out = np.asarray(resize_image(Image.fromarray(stripes), 40, 40, "Resize and fill")).astype(int)
    fitted = np.asarray(Image.fromarray(stripes).resize((40, 20) if wide else (20, 40), Image.LANCZOS)).astype(int)
    edge = fitted[:1] if wide else fitted[:, :1]
    assert np.array_equal(out[band], np.broadcast_to(edge, out[band].shape))


def plain_sdedit(pipe, image, scheduler_name, *, strength, num_inference_steps, seed) -> np.ndarray:
    """SDEdit written out in plain diffusers: the image at the model's size in [-1, 1], add_noise at the first
    timestep of the strength's part of the schedule, then the usual loop from there."""
    unet = pipe.unet
    scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(seed)
    size = unet.config.sample_size
    picture = image.resize((size, size), Image.LANCZOS).convert("L" if unet.config.in_channels == 1 else "RGB")
    x0 = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1)
    x0 = (x0[None] if x0.ndim == 2 else x0.permute(2, 0, 1))[None]  # (1, C, H, W)
    scheduler.set_timesteps(num_inference_steps)
    kept = int(num_inference_steps * strength)
    timesteps = scheduler.timesteps[num_inference_steps - kept:]
    if hasattr(scheduler, "set_begin_index"):  # DDIM and DDPM count no steps; the multistep solvers do
        scheduler.set_begin_index(num_inference_steps - kept)
    noise = randn_tensor(x0.shape, generator=generator, dtype=x0.dtype)
    sample = scheduler.add_noise(x0, noise, timesteps[:1])
    takes_generator = scheduler_name == "DDPM"
    with torch.no_grad():
        for t in timesteps:
            eps = unet(scheduler.scale_model_input(sample, t), t).sample
            extra = {"generator": generator} if takes_generator else {}
            sample = scheduler.step(eps, t, sample, **extra).prev_sample
    out = (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    return np.round(out * 255).astype(int)


@pytest.mark.parametrize("scheduler", ["DDIM", "DDPM", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_sdedit_matches_a_plain_loop_from_add_noise(tiny_ddpm, photo, scheduler, strength):
    kw = dict(strength=strength, num_inference_steps=20, seed=7)
    events = list(iter_sdedit(Img2ImgRequest(photo, scheduler=scheduler, **kw), pipe=tiny_ddpm))
    ours = pixels(events[-1].images[0])
    theirs = plain_sdedit(tiny_ddpm, photo, scheduler, **kw)
    assert ours.shape == theirs.shape == (16, 16, 3)
    assert np.abs(ours - theirs).max() <= 2
    assert np.abs(plain_sdedit(tiny_ddpm, photo, scheduler, **{**kw, "seed": 8}) - theirs).max() > 10
    assert events[0].info["start_timestep"] == events[0].timesteps[0] == [int(s.timestep) for s in events[1:-1]][0]


def test_sdedit_on_a_one_channel_model_sees_the_image_in_grey(tiny_ddpm_grey, photo):
    kw = dict(strength=0.5, num_inference_steps=10, seed=3)
    done = list(iter_sdedit(Img2ImgRequest(photo, scheduler="DDIM", **kw), pipe=tiny_ddpm_grey))[-1]
    theirs = plain_sdedit(tiny_ddpm_grey, photo, "DDIM", **kw)[..., 0]
    ours = pixels(done.images[0].convert("L"))
    assert np.abs(ours - theirs).max() <= 2


def test_low_strength_keeps_the_image_and_full_strength_loses_most_of_it(tiny_ddpm, photo):
    """What the page's strip shows: the result at strength 0.1 is close to the original, at 1.0 far from it."""
    def result(strength):
        request = Img2ImgRequest(photo, scheduler="DDIM", strength=strength, num_inference_steps=50, seed=2)
        return list(iter_sdedit(request, pipe=tiny_ddpm))[-1].images[0]

    assert similarity(photo, result(0.1)) > 0.9
    assert similarity(photo, result(1.0)) < similarity(photo, result(0.4)) < similarity(photo, result(0.1))


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M Karras", "Heun"])
def test_start_timestep_is_the_pipelines_first(tiny_sd, scheduler):
    """The t the page marks on the schedule plots is the one the pipeline noises the image to."""
    img2img = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    img2img.scheduler = make_scheduler(scheduler, tiny_sd.scheduler.config)
    img2img.scheduler.set_timesteps(25)
    timesteps, steps = img2img.get_timesteps(25, 0.6, "cpu")
    assert start_timestep(scheduler, tiny_sd.scheduler.config, 25, 0.6) == (round(float(timesteps[0])), 15)
    assert steps == 15


@pytest.mark.parametrize("resize_mode", list(RESIZE_MODES))
def test_events_png_and_snippet(tiny_sd, photo, tmp_path, resize_mode):
    """Started, a Step per timestep run, Done; the PNG says the strength, the size and the resize mode; the page's
    snippet (the mode's resize, then the pipeline) gives the image."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    tiny_sd.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "txt2img")
    request = Img2ImgRequest(photo, prompt="a seven", strength=0.5, num_inference_steps=8, scheduler="Euler a",
                             seed=4, model="m", width=48, height=64, resize_mode=resize_mode)
    events = list(iter_saved("img2img", iter_img2img(request, pipe=pipe), pipe=pipe, outputs_dir=tmp_path / "out"))
    started, steps, done = events[0], events[1:-1], events[-1]
    assert isinstance(started, Started) and isinstance(done, Done) and all(isinstance(s, Step) for s in steps)
    assert started.total == len(steps) == 4 and [int(s.timestep) for s in steps] == list(started.timesteps)
    assert started.info["steps_run"] == 4 and started.info["start_timestep"] == started.timesteps[0]
    text = read_parameters(done.paths[0])
    assert text.splitlines()[0] == "a seven"
    assert text.splitlines()[1] == ("Steps: 8, Sampler: Euler a, CFG scale: 7.5, Seed: 4, Size: 48x64, Model: m, "
                                    f"Denoising strength: 0.5, Resize mode: {resize_mode}")
    assert done.images[0].size == (48, 64)
    assert done.info["resize_mode"] == resize_mode and done.info["size_from"] == "width and height as given"
    photo.save(tmp_path / "original.png")
    namespace = run_snippet(done.code, tmp_path)
    assert np.abs(pixels(namespace["image"]) - pixels(done.images[0])).max() <= 2


@pytest.mark.parametrize("scheduler, resize_mode", [("DDIM", "Crop and resize"), ("DDPM", "Resize and fill"),
                                                   ("DDIM", "Just resize")])
def test_sdedit_snippet_gives_the_image(tiny_ddpm, photo, tmp_path, scheduler, resize_mode):
    """The page's "diffusers code" for an unconditional model: the mode's resize to the model's 16x16, then the
    plain loop from add_noise, executed."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    tiny_ddpm.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "unconditional")
    done = list(iter_sdedit(Img2ImgRequest(photo, scheduler=scheduler, strength=0.7, num_inference_steps=12, seed=6,
                                           model="m", resize_mode=resize_mode), pipe=pipe))[-1]
    assert done.images[0].size == (16, 16) and done.info["size_from"] == FIXED_SIZE
    assert f"Resize mode: {resize_mode}" in a1111_parameters(done.info)
    assert "scheduler.add_noise(x0, noise, timesteps[:1])" in done.code
    photo.save(tmp_path / "original.png")
    namespace = run_snippet(done.code, tmp_path)
    assert np.abs(namespace["image"][0].astype(int) - pixels(done.images[0])).max() <= 2


def test_sdedit_keeps_the_models_size_and_refuses_another(tiny_ddpm, small_photo):
    """A 64x48 image on a 16x16 unconditional model runs at 16x16; a width or height other than that is refused
    with what SDEdit takes; the model's own size given is accepted."""
    kw = dict(scheduler="DDIM", strength=0.5, num_inference_steps=10, seed=1)
    done = list(iter_sdedit(Img2ImgRequest(small_photo, **kw), pipe=tiny_ddpm))[-1]
    assert done.images[0].size == (16, 16)
    assert (done.info["width"], done.info["height"], done.info["size_from"]) == (16, 16, FIXED_SIZE)
    given = list(iter_sdedit(Img2ImgRequest(small_photo, width=16, height=16, **kw), pipe=tiny_ddpm))[-1]
    assert np.array_equal(pixels(given.images[0]), pixels(done.images[0]))
    for size, said, field in (((64, 48), "width 64, height 48", "width"), ((None, 24), "height 24", "height")):
        request = Img2ImgRequest(small_photo, width=size[0], height=size[1], **kw)
        with pytest.raises(InputError, match=f"^{re.escape(NOT_FIXED.format(said))}$") as caught:
            list(iter_sdedit(request, pipe=tiny_ddpm))
        assert caught.value.field == field


NOT_FIXED = ("SDEdit runs an unconditional model at its fixed size, 16x16 here; width and height are for "
             "text-to-image models: leave them out; got {}")


def test_cancel_stops_at_step(tiny_ddpm, photo):
    cancel, seen = CancelToken(), []
    with pytest.raises(Cancelled):
        for event in iter_sdedit(Img2ImgRequest(photo, scheduler="DDIM", strength=1.0, num_inference_steps=10),
                                 pipe=tiny_ddpm, cancel=cancel):
            if isinstance(event, Step):
                seen.append(event.step)
                if event.step == 3:
                    cancel.cancel()
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(strength=0), "strength must be a number above 0 and at most 1; got 0"),
        (dict(strength=1.5), "strength must be a number above 0 and at most 1; got 1.5"),
        (dict(strength=float("nan")), "strength must be a number above 0 and at most 1; got nan"),
        (dict(strength=0.03), "strength 0.03 of 25 steps runs no step (int(25 x 0.03) = 0); raise the strength to "
                              "at least 0.04 or the steps"),
        (dict(num_inference_steps=0), "steps must be a whole number from 1 to 1000; got 0"),
        (dict(guidance_scale=30), "guidance scale must be a number from 1 (no guidance) to 20; got 30"),
        (dict(image=None), "no image given; upload one (PNG, JPEG, WebP, ...)"),
        (dict(width=60), "width must be a multiple of 8 (8 to 2048); got 60"),
        (dict(height=4), "height must be a whole number from 8 to 2048; got 4"),
        (dict(height=2056), "height must be a whole number from 8 to 2048; got 2056"),
        (dict(width=64.5), "width must be a whole number from 8 to 2048; got 64.5"),
        (dict(resize_mode="Stretch"), "unknown resize mode 'Stretch'; allowed: Just resize, Crop and resize, "
                                      "Resize and fill"),
        (dict(image=3), "image must be an image file, a PIL image or a uint8 array; got int"),
    ],
)
def test_bad_requests_are_refused(photo, kw, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        Img2ImgRequest(**{"image": photo, **kw})


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(InputError, match=r"^'notes\.png' is not an image PIL can read \(PNG, JPEG, WebP, \.\.\.\): "):
        Img2ImgRequest(image=str(notes))


def test_an_unconditional_run_refuses_a_scheduler_of_text_to_image_only(tiny_ddpm, photo):
    with pytest.raises(InputError, match="^unknown scheduler 'Heun'; allowed: DDIM, DDPM, DPM\\+\\+ 2M, UniPC, PNDM, "
                                         "Euler$"):
        list(iter_sdedit(Img2ImgRequest(photo, scheduler="Heun"), pipe=tiny_ddpm))


def test_the_strength_strip_runs_each_strength_as_a_run_of_its_own(photo, tmp_path):
    """The page's strip: strengths 0.2 ... 1.0 with one seed, each the run /img2img makes alone; the later the start,
    the less of the original survives."""
    from engine.sampling.img2img import STRIP_STRENGTHS
    from engine.workbench import Folders, Workbench

    bench = Workbench(Folders(tmp_path / "m", tmp_path / "d", tmp_path / "o"), device="cpu", worker=False)
    request = Img2ImgRequest(photo, model="digits-ddpm", scheduler="DDIM", num_inference_steps=20, seed=-1)
    frames = list(bench.iter_strength_strip(request))
    assert [f.strength for f in frames] == list(STRIP_STRENGTHS)
    starts = [f.start_timestep for f in frames]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert frames[0].survives > frames[-1].survives
    seeds = {int(Image.open(f.path).text["parameters"].split("Seed: ")[1].split(",")[0]) for f in frames}
    assert len(seeds) == 1  # -1 drew one seed for the whole strip
    (seed,) = seeds
    alone = list(bench.iter_img2img(Img2ImgRequest(photo, model="digits-ddpm", scheduler="DDIM",
                                                   num_inference_steps=20, strength=0.6, seed=seed)))[-1]
    assert np.array_equal(pixels(frames[2].image), pixels(alone.images[0]))
    assert frames[2].caption == f"0.6 · t {frames[2].start_timestep} · {frames[2].survives:.2f}"


def test_the_size_a_run_makes_is_known_before_it_runs(photo, tmp_path):
    """What the page's size line says, read from the model's configs, is the size the run then makes."""
    from engine.workbench import Folders, Workbench

    bench = Workbench(Folders(tmp_path / "m", tmp_path / "d", tmp_path / "o"), device="cpu", worker=False)
    for request in (Img2ImgRequest(photo, model="digits-sd", num_inference_steps=4, seed=1),
                    Img2ImgRequest(photo, model="digits-sd", num_inference_steps=4, seed=1, height=32),
                    Img2ImgRequest(photo, model="digits-ddpm", scheduler="DDIM", num_inference_steps=4, seed=1)):
        before = bench.img2img_size(request)
        done = list(bench.iter_img2img(request))[-1]
        assert before == {k: done.info[k] for k in ("width", "height", "size_from")}
        assert done.images[0].size == (before["width"], before["height"])
    assert bench.img2img_size(Img2ImgRequest(photo, model="digits-sd"))["width"] == 40  # 640x427 at about 32x32
    with pytest.raises(InputError, match="^SDEdit runs an unconditional model at its fixed size, 32x32 here; "):
        bench.check_img2img(Img2ImgRequest(photo, model="digits-ddpm", scheduler="DDIM", width=64))


def test_img2img_steps_carry_text_to_images_views_and_attention(tiny_sd, small_photo):
    """One loop for both (engine.sampling.denoise): an img2img step has the views a Text to image step has, the
    cross-attention maps too, and collecting them leaves the image as it was."""
    from engine.sampling.views import step_attention, step_measures, view_array

    request = Img2ImgRequest(small_photo, prompt="a seven", strength=0.6, num_inference_steps=5, scheduler="DDIM",
                             seed=3, width=64, height=48)
    plain = list(iter_img2img(request, pipe=tiny_sd))[-1]
    events = list(iter_img2img(request, pipe=tiny_sd, attention=True))
    steps, done = events[1:-1], events[-1]
    assert len(steps) == 3 and np.array_equal(pixels(done.images[0]), pixels(plain.images[0]))
    for step in steps:
        assert set(step.views) == {"eps", "v", "guidance", "attention", "measures"}
        assert view_array(step, "guidance").dtype == np.uint8 and view_array(step, "v").shape[2] == 3
        assert step_attention(step).shape[-2:] == step.preview_xt.tensor.shape[-2:]  # over the run's latent
        assert step_measures(step)["t"] == step.timestep


@pytest.mark.parametrize("scheduler", ["DDIM", "DDPM", "Euler a", "PNDM", "DPM++ 2M SDE", "UniPC"])
def test_the_loops_step_arguments_and_start_are_the_pipelines(tiny_sd, scheduler):
    """extra_step_kwargs and get_timesteps are what the pipelines' own methods give for the same scheduler."""
    from engine.sampling.denoise import extra_step_kwargs, get_timesteps

    img2img = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    img2img.scheduler = make_scheduler(scheduler, tiny_sd.scheduler.config)
    generator = torch.Generator("cpu")
    assert extra_step_kwargs(img2img.scheduler, generator) == img2img.prepare_extra_step_kwargs(generator, 0.0)
    ours = make_scheduler(scheduler, tiny_sd.scheduler.config)
    for s in (ours, img2img.scheduler):
        s.set_timesteps(10)
    timesteps, steps = get_timesteps(ours, 10, 0.45)
    theirs, their_steps = img2img.get_timesteps(10, 0.45, "cpu")
    assert steps == their_steps == 4 and torch.equal(timesteps, theirs)
    assert getattr(ours, "begin_index", None) == getattr(img2img.scheduler, "begin_index", None)


def test_sdedit_takes_the_timestep_spacing(tiny_ddpm, photo, tmp_path):
    """SDEdit's scheduler is built with the request's spacing: it starts where the spaced schedule's strength says,
    and its snippet (the scheduler built from_config(..., timestep_spacing=...)) gives the image."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    tiny_ddpm.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "unconditional")
    request = Img2ImgRequest(photo, scheduler="DDIM", strength=0.5, num_inference_steps=10, seed=6, model="m",
                             timestep_spacing="trailing")
    events = list(iter_sdedit(request, pipe=pipe))
    started, done = events[0], events[-1]
    config = pipe.scheduler.config
    assert started.timesteps[0] == start_timestep("DDIM", config, 10, 0.5, "trailing")[0] \
        != start_timestep("DDIM", config, 10, 0.5)[0]
    assert done.info["timestep_spacing"] == "trailing" and "guidance_rescale" not in done.info
    assert "timestep_spacing='trailing'" in done.code
    photo.save(tmp_path / "original.png")
    namespace = run_snippet(done.code, tmp_path)
    assert np.abs(namespace["image"][0].astype(int) - pixels(done.images[0])).max() <= 2
