"""Cross-attention maps per token (engine.sampling.attention): recomputed outside the loop they match the saved
``.npz``; before the clamp a step's maps sum to 1 over every token position; the wrapping processor leaves the
image as it was; with the view off nothing in the UNet changes; bad tokens and a model without cross-attention
are refused with messages that say what is allowed."""

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.events import Done, Step
from engine.sampling.attention import (AttentionDone, CollectingProcessor, CrossAttentionCollector, collecting,
                                       layer_grid, prompt_tokens)
from engine.sampling.schedulers import make_scheduler
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.sampling.views import view_array
from engine.workbench import Folders, Workbench

REQUEST = dict(prompt="a cat", negative_prompt="dog", num_inference_steps=4, guidance_scale=6.0, seed=5,
               scheduler="DDIM")


@pytest.fixture()
def bench_with_tiny(tmp_path):
    """A workbench (sampling in this process) whose models dir holds the tiny pipeline as the folder ``tiny``."""
    from engine.testing.tiny import tiny_sd_pipeline

    tiny_sd_pipeline(seed=0).save_pretrained(tmp_path / "models" / "tiny")
    bench = Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                      worker=False)
    yield bench
    bench.close()


def test_maps_recomputed_with_a_plain_diffusers_pipeline_match_the_npz(bench_with_tiny, tmp_path):
    """A non-square size (40x24: a 20x12 latent, a 10x6 grid in the lower block): the endpoint's maps again, from
    diffusers' own StableDiffusionPipeline on the same components with the processor put in by hand."""
    from diffusers import StableDiffusionPipeline

    request = Txt2ImgRequest(**REQUEST, width=40, height=24, model="tiny")
    events = list(bench_with_tiny.iter_attention(request))
    found = events[-1]
    assert isinstance(found, AttentionDone) and isinstance(events[-2], Done)
    saved = np.load(found.maps_file)
    assert list(saved["tokens"]) == ["<|startoftext|>", "a</w>", "c", "a", "t</w>", "<|endoftext|>"]
    assert saved["per_step"].dtype == np.float32 and saved["per_step"].shape == (4, 6, 12, 20)
    assert saved["maps"].shape == (6, 12, 20)

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "models" / "tiny", local_files_only=True)
    pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    collector = CrossAttentionCollector((12, 20), 6, guided=True)
    per_step = []

    def each_step(pipeline, i, t, kwargs):
        per_step.append(collector.end_step().numpy())
        return kwargs

    with collecting(pipe.unet, collector):
        image = pipe(REQUEST["prompt"], negative_prompt=REQUEST["negative_prompt"], num_inference_steps=4,
                     guidance_scale=6.0, width=40, height=24, generator=torch.Generator("cpu").manual_seed(5),
                     callback_on_step_end=each_step).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(found.image))  # the same run
    np.testing.assert_allclose(saved["per_step"], np.stack(per_step), atol=1e-4, rtol=0)
    np.testing.assert_allclose(saved["maps"], np.stack(per_step).mean(axis=0), atol=1e-4, rtol=0)
    assert np.abs(np.diff(saved["per_step"], axis=0)).max() > 1e-3  # the steps' maps differ: a real per-step map


def test_a_steps_maps_sum_to_one_over_all_77_positions_before_the_clamp():
    """softmax over the 77 keys, every layer and head, bicubic-upsampled: still 1 at every latent pixel (the
    interpolation's weights sum to 1). After the clamp it can only be as large or larger."""
    from engine.testing.tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=1, model_max_length=77)
    pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    unclamped = CrossAttentionCollector((16, 24), 77, guided=True, clamp=False)
    clamped = CrossAttentionCollector((16, 24), 77, guided=True)
    sums = []

    def each_step(pipeline, i, t, kwargs):
        sums.append((unclamped.end_step().sum(dim=0), clamped.end_step().sum(dim=0)))
        return kwargs

    with collecting(pipe.unet, unclamped):
        with collecting(pipe.unet, clamped):
            pipe("a cat", num_inference_steps=3, guidance_scale=5.0, width=48, height=32,
                 generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=each_step)
    assert len(sums) == 3
    for before, after in sums:
        assert before.shape == (16, 24)
        torch.testing.assert_close(before, torch.ones_like(before), atol=1e-5, rtol=0)
        assert bool((after >= before - 1e-6).all())


def test_the_wrapping_processor_gives_the_images_of_the_one_it_replaces(tiny_sd):
    """The same request with and without maps: final images within 2/255 (the output is the replaced processor's,
    so in fact equal), and the model's own processors, the same objects, back after the run."""
    own = dict(tiny_sd.unet.attn_processors)
    plain = list(iter_txt2img(Txt2ImgRequest(**REQUEST, width=32, height=32), pipe=tiny_sd))
    seen = []
    for event in iter_txt2img(Txt2ImgRequest(**REQUEST, width=32, height=32), pipe=tiny_sd, attention=True):
        if isinstance(event, Step) and event.step == 1:
            seen = dict(tiny_sd.unet.attn_processors)
        last = event
    a, b = (np.asarray(e.images[0]).astype(int) for e in (plain[-1], last))
    assert np.abs(a - b).max() <= 2
    wrapped = [name for name, p in seen.items() if isinstance(p, CollectingProcessor)]
    assert wrapped and all(name.endswith("attn2.processor") for name in wrapped)
    assert all(seen[name] is own[name] for name in own if not name.endswith("attn2.processor"))  # attn1 untouched
    assert all(tiny_sd.unet.attn_processors[name] is own[name] for name in own)
    assert view_array(last.steps[0], "attention").dtype == np.uint8


def test_with_the_view_off_nothing_in_the_unet_changes(tiny_sd):
    own = dict(tiny_sd.unet.attn_processors)
    for event in iter_txt2img(Txt2ImgRequest(**REQUEST, width=32, height=32), pipe=tiny_sd):
        if isinstance(event, Step):
            assert all(tiny_sd.unet.attn_processors[n] is p for n, p in own.items())
            assert "attention" not in event.views
            assert view_array(event, "attention") is None


def test_processors_come_back_when_a_run_is_closed_midway(tiny_sd):
    own = dict(tiny_sd.unet.attn_processors)
    events = iter_txt2img(Txt2ImgRequest(**REQUEST, width=32, height=32), pipe=tiny_sd, attention=True)
    for event in events:
        if isinstance(event, Step):
            break
    assert any(isinstance(p, CollectingProcessor) for p in tiny_sd.unet.attn_processors.values())
    events.close()
    assert all(tiny_sd.unet.attn_processors[n] is p for n, p in own.items())


def test_layer_grids_of_a_non_square_latent():
    assert layer_grid(20 * 12, (12, 20)) == (12, 20)
    assert layer_grid(10 * 6, (12, 20)) == (6, 10)
    assert layer_grid(3 * 2, (5, 3)) == (3, 2)  # odd sides round up, as a stride-2 convolution with padding 1
    with pytest.raises(ValueError):
        layer_grid(7, (12, 20))


def test_tokens_words_and_what_the_limit_cuts():
    from engine.builtin.digits import digits_tokenizer

    tokens = prompt_tokens(digits_tokenizer(16), "a handwritten digit seven zebra")
    assert tokens.tokens == ("<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>", "seven</w>", "ze", "b", "r",
                             "a</w>", "<|endoftext|>")
    assert tokens.limit == 16 and tokens.cut == ()
    assert tokens.words[-2] == (5, 6, 7, 8) and tokens.pick("zebra") == (5, 6, 7, 8)  # one word, four tokens
    assert tokens.pick("4") == (4,) and tokens.pick("2, 3") == (2, 3) and tokens.pick("") == (5, 6, 7, 8)
    long = prompt_tokens(digits_tokenizer(16), " ".join(["seven"] * 20))
    assert len(long.tokens) == 16 and long.tokens[-1] == "<|endoftext|>" and long.cut == ("seven</w>",) * 6


def test_a_token_or_word_not_in_the_prompt_is_refused_with_what_it_has():
    from engine.builtin.digits import digits_tokenizer

    tokens = prompt_tokens(digits_tokenizer(16), "a digit seven")
    with pytest.raises(InputError) as error:
        tokens.pick("12")
    assert str(error.value) == "token 12 is not in the prompt: its tokens are 0 to 4" and error.value.field == "tokens"
    with pytest.raises(InputError) as error:
        tokens.pick("zebra")
    assert str(error.value) == ("'zebra' is not a word of the prompt; its words are 'a', 'digit', 'seven' "
                                "(or give token indices, 0 to 4)")


def test_a_model_without_cross_attention_is_refused(tmp_path):
    bench = Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                      worker=False)
    with pytest.raises(InputError) as error:
        bench.prompt_tokens("digits-ddpm", "a seven")
    assert str(error.value) == ("'digits-ddpm' is an unconditional model: it has no cross-attention and takes no "
                                "prompt, so no word has a map; pick a text-to-image model")
    with pytest.raises(InputError):
        next(bench.iter_attention(Txt2ImgRequest(prompt="a seven", model="digits-ddpm")))
    assert bench.prompt_tokens("", "a digit seven").tokens[1:4] == ("a</w>", "digit</w>", "seven</w>")
