"""The README's attention figure: on the built-in digits-sd, how much of each token's run map falls on the digit's
strokes, over many seeds.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/attention_digits.py [--seeds 30] [--figure docs/attention-digits.png]

Seed s draws digit s % 10 with the prompt "a handwritten digit <name>" (25 steps, DPM++ 2M Karras, guidance 7.5,
32x32 px: an 8x8 latent). The measure, per run and token: the share of the token's run map (the mean of its steps'
maps, engine.sampling.attention) that lies on the stroke pixels, over the share of the latent that is stroke
(1.0: the map ignores the strokes; 2.0: twice as dense on them as a uniform map). Strokes: the final image pooled
to the latent's 8x8 (4x4 means), the pixels farther from the background (the border's median) than halfway to
the farthest. Also, per run and token, the correlation (Pearson) of the map with the stroke mask over the 64
latent pixels: whether the map's bright parts are the strokes, however flat the map. Prints the median and the
quartiles of both per token, and how often the digit's word beats "a"; ``--figure`` saves one run's image beside
the maps of the word and of "a".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN_NAMES = ("start", "a", "handwritten", "digit", "<word>", "end")


def strokes(image: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the latent pixels that are stroke (see the module docstring)."""
    gray = image.astype(np.float32).mean(axis=2)
    h, w = latent_hw
    pooled = gray.reshape(h, gray.shape[0] // h, w, gray.shape[1] // w).mean(axis=(1, 3))
    border = np.concatenate([pooled[0], pooled[-1], pooled[:, 0], pooled[:, -1]])
    distance = np.abs(pooled - np.median(border))
    return distance > distance.max() / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--figure", type=Path, help="save the figure here (PNG)")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from engine.builtin.digits import NAMES, prompt_for
    from engine.sampling.attention import AttentionDone
    from engine.sampling.txt2img import Txt2ImgRequest
    from engine.sampling.views import attention_overlay
    from engine.workbench import Folders, Workbench

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="attention-digits-"))
    bench = Workbench(Folders(root / "models", root / "data", root / "outputs"), device="cpu", worker=False)
    ratios: dict[str, list[float]] = {name: [] for name in TOKEN_NAMES}
    correlations: dict[str, list[float]] = {name: [] for name in TOKEN_NAMES}
    word_beats_a = 0
    for seed in range(args.seeds):
        digit = seed % 10
        request = Txt2ImgRequest(model="digits-sd", prompt=prompt_for(digit), seed=seed, width=32, height=32)
        done = [e for e in bench.iter_attention(request) if isinstance(e, AttentionDone)][0]
        assert done.tokens.tokens[4] == f"{NAMES[digit]}</w>", done.tokens.tokens
        image = np.asarray(done.image.convert("RGB"))
        maps = done.maps  # (6, 8, 8)
        mask = strokes(image, maps.shape[1:])
        area = mask.mean()
        for name, token_map in zip(TOKEN_NAMES, maps):
            ratios[name].append(float((token_map * mask).sum() / token_map.sum() / area))
            correlations[name].append(float(np.corrcoef(token_map.ravel(), mask.ravel().astype(float))[0, 1]))
        word_beats_a += ratios["<word>"][-1] > ratios["a"][-1]
        if args.figure and seed == 7:
            tiles = [image] + [attention_overlay(maps, (i,), image) for i in (4, 1)]
            big = [np.asarray(Image.fromarray(t).resize((128, 128), Image.NEAREST)) for t in tiles]
            gap = np.full((128, 6, 3), 255, np.uint8)
            Image.fromarray(np.concatenate([big[0], gap, big[1], gap, big[2]], axis=1)).save(args.figure)
    print(f"{args.seeds} runs (digit = seed % 10), share of a token's run map on the strokes / stroke area:")
    for name, values in ratios.items():
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        print(f"  {name:12s} median {median:.2f}  (quartiles {q1:.2f} to {q3:.2f})")
    print("correlation of a token's run map with the strokes:")
    for name, values in correlations.items():
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        print(f"  {name:12s} median {median:+.2f}  (quartiles {q1:+.2f} to {q3:+.2f})")
    word_corr_beats_a = sum(w > a for w, a in zip(correlations["<word>"], correlations["a"]))
    print(f"  the word's correlation above 'a''s in {word_corr_beats_a} of {args.seeds} runs")
    others = [v for name, values in ratios.items() if name != "<word>" for v in values]
    print(f"  the digit's word over the other tokens' median: {statistics.median(ratios['<word>']):.2f} / "
          f"{statistics.median(others):.2f}; the word above 'a' in {word_beats_a} of {args.seeds} runs")
    bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
