"""scikit-learn's handwritten digits: captions, a small word vocabulary, and a classifier
that scores generated samples (the built-in models' published quality figures).
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np

from engine.training.data import CAPTION_TEMPLATES as TEMPLATES, DIGIT_NAMES as NAMES, digit_caption as caption

WORDS = NAMES + ("a", "an", "the", "handwritten", "digit", "number", "image", "of", "picture", "drawing",
                 "written", "hand", "by")
CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def prompt_for(label: int) -> str:
    """The prompt the quality figures use."""
    return f"a handwritten digit {NAMES[label]}"


def digits_tokenizer(model_max_length: int = 16):
    """A CLIP BPE tokenizer whose merges build :data:`WORDS` whole; any other word falls back
    to single characters, and characters outside :data:`CHARS` to the unknown token."""
    from transformers import CLIPTokenizer

    vocab = ["<|startoftext|>", "<|endoftext|>"]
    for c in CHARS:
        vocab += [c, f"{c}</w>"]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            if current not in vocab:
                vocab.append(current)
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                         model_max_length=model_max_length)


# -- scoring samples ------------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    labels: np.ndarray  # (N,) predicted class
    top: np.ndarray  # (N,) probability of the predicted class
    second: np.ndarray  # (N,) probability of the runner-up
    distance: np.ndarray  # (N,) distance at 8x8 to the nearest training digit (0..16 scale)
    typical_distance: float  # the distance that 99% of held-out real digits stay within

    @property
    def confident(self) -> np.ndarray:
        """Classified with a margin: the top probability at least twice the runner-up's and over 0.5."""
        return (self.top >= 0.5) & (self.top >= 2 * self.second)

    @property
    def recognisable(self) -> np.ndarray:
        """Confident and as close to a real digit as real digits are: the SVM alone is confident about noise too
        (an untrained model's samples score about 0.98 confident, nearly all read as "1"), the distance is not."""
        return self.confident & (self.distance <= self.typical_distance)


class DigitClassifier:
    """An RBF SVM on the 8x8 digits (the scikit-learn example's gamma), Platt-calibrated probabilities."""

    def __init__(self, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        digits = load_digits()
        x = digits.images.reshape(len(digits.images), -1)
        x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=seed,
                                                            stratify=digits.target)
        svm = SVC(gamma=0.001, C=10.0, random_state=seed)
        self.model = CalibratedClassifierCV(svm, method="sigmoid", ensemble=False, cv=5).fit(x_train, y_train)
        self.held_out_accuracy = float(self.model.score(x_test, y_test))
        self.train_features = x_train  # (M, 64)
        self.typical_distance = float(np.percentile(self.nearest_distance(x_test), 99))  # about 27 of 0..128

    def nearest_distance(self, features: np.ndarray) -> np.ndarray:
        """(N, 64) -> (N,) Euclidean distance to the nearest training digit."""
        squared = ((features[:, None, :] - self.train_features[None, :, :]) ** 2).sum(axis=2)  # (N, M)
        return np.sqrt(squared.min(axis=1))

    def score(self, images: np.ndarray) -> Scores:
        """``images``: (N, H, W) or (N, H, W, C) uint8, ink bright on dark as in training."""
        features = to_digit_features(images)  # (N, 64)
        probs = self.model.predict_proba(features)
        order = np.argsort(probs, axis=1)
        rows = np.arange(len(probs))
        return Scores(self.model.classes_[order[:, -1]], probs[rows, order[:, -1]], probs[rows, order[:, -2]],
                      self.nearest_distance(features), self.typical_distance)


@functools.lru_cache(maxsize=1)
def classifier() -> DigitClassifier:
    return DigitClassifier()


def to_digit_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> (N, 64) in the digits' 0..16 scale, by area-averaging to 8x8."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=3)
    n, h, w = x.shape
    if h % 8 or w % 8:
        raise ValueError(f"samples must be a multiple of 8 pixels a side to downscale to 8x8; got {h}x{w}")
    x = x.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return (x * (16.0 / 255.0)).reshape(n, 64)


def class_report(scores: Scores, expected: np.ndarray | None = None) -> dict:
    """Per-class share of samples (unconditional) or accuracy (conditional), and the confident share."""
    report = {"n": int(len(scores.labels)), "confident": float(scores.confident.mean()),
              "recognisable": float(scores.recognisable.mean())}
    if expected is None:
        report["share"] = {k: float((scores.labels == k).mean()) for k in range(10)}
    else:
        report["accuracy"] = {k: float((scores.labels[expected == k] == k).mean()) for k in np.unique(expected)}
        report["overall"] = float((scores.labels == expected).mean())
    return report
