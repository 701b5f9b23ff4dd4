"""A run's history crossing from the device worker: each VAE-decoded x0 frame is decoded once, and with
``history="after"`` or ``"streamed"`` the final image goes out before any frame the stream skipped is drawn."""

import numpy as np
import pytest

from engine.events import Done, Step, StepsDrawn
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.worker.child import PortableRun

STEPS = 7
STREAMED = {1, 4, 7}  # the steps a throttled stream sent (the last always)


@pytest.fixture
def decoded(tiny_sd):
    """The number of images each real VAE decode call draws, in call order."""
    calls: list[int] = []
    original = tiny_sd.vae.decode

    def counting(latents, *args, **kwargs):
        calls.append(int(latents.shape[0]))
        return original(latents, *args, **kwargs)

    tiny_sd.vae.decode = counting
    yield calls
    tiny_sd.vae.decode = original


def a_run(tiny_sd, scheduler: str):
    request = Txt2ImgRequest(prompt="a seven", num_inference_steps=STEPS, scheduler=scheduler, seed=2, preview="vae")
    events = list(iter_txt2img(request, pipe=tiny_sd))
    steps = [e for e in events if isinstance(e, Step)]
    return steps, events[-1]


def send(run: PortableRun, steps, done) -> list:
    """What the worker sends: the streamed steps, then what the Done turns into."""
    sent = [next(iter(run.events(s))) for s in steps if s.step in STREAMED]
    return sent + list(run.events(done))


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M Karras"])  # x0 from step(), and x0 drawn from eps
def test_drawn_history_decodes_each_frame_once_and_matches_this_process(tiny_sd, decoded, scheduler):
    steps, done = a_run(tiny_sd, scheduler)
    local = [s.preview_x0.array() for s in done.steps]  # drawn here, one decode each
    decoded.clear()
    sent = send(PortableRun("drawn"), steps, done)
    assert isinstance(sent[-1], Done) and len(sent) == len(STREAMED) + 1
    # one decode per streamed frame, then one batched decode of the frames the stream skipped
    assert decoded == [1] * len(STREAMED) + [STEPS - len(STREAMED)]
    for mine, theirs in zip(local, sent[-1].steps):
        assert np.abs(mine.astype(int) - theirs.preview_x0.array().astype(int)).max() <= 2


def test_after_sends_done_before_drawing_the_skipped_frames(tiny_sd, decoded):
    steps, done = a_run(tiny_sd, "DDIM")
    local = [s.preview_x0.array() for s in done.steps]
    decoded.clear()
    run = PortableRun("after")
    for s in steps:
        if s.step in STREAMED:
            next(iter(run.events(s)))
    out = run.events(done)
    first = next(out)
    assert isinstance(first, Done) and decoded == [1] * len(STREAMED)  # nothing drawn for the Done itself
    # a gap shows the frame streamed before it: steps 2-3 show step 1's, 5-6 step 4's
    shown = {s.step: s.preview_x0.array() for s in first.steps}
    for gap, near in ((2, 1), (3, 1), (5, 4), (6, 4)):
        assert np.array_equal(shown[gap], shown[near])
    assert not np.array_equal(shown[1], shown[4])
    drawn = next(out)
    assert isinstance(drawn, StepsDrawn) and decoded[-1] == STEPS - len(STREAMED)
    assert next(out, None) is None
    for mine, theirs in zip(local, drawn.steps):
        assert np.abs(mine.astype(int) - theirs.preview_x0.array().astype(int)).max() <= 2


def test_streamed_draws_nothing_after_the_loop(tiny_sd, decoded):
    steps, done = a_run(tiny_sd, "Euler")
    decoded.clear()
    sent = send(PortableRun("streamed"), steps, done)
    assert [type(e) for e in sent[-1:]] == [Done] and decoded == [1] * len(STREAMED)
    assert len(sent[-1].steps) == STEPS and all(s.preview_x0 is not None for s in sent[-1].steps)
