"""Generated data for the sample models, recipes and tests: numpy only, fixed seeds, no downloads.

Three task families:

- `shapes`: 32x32 RGB images of one procedurally drawn shape (random colour, size, position,
  noisy background). `PRETRAIN_SHAPES` is the CNN's pretraining task; `TRANSFER_SHAPES` are
  shapes it never saw, built from the same strokes, for transfer with few labels.
- `motifs`: token sequences (vocabulary `VOCAB`, 0 is padding) where the class is which short
  motif is hidden in random tokens. The LSTM pretrains on `PRETRAIN_MOTIFS`.
- `blobs`: 16-dimensional vectors from a non-linear mixture, for the Hub module and the Keras 2
  model.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SHAPES", "PRETRAIN_SHAPES", "TRANSFER_SHAPES", "make_shapes", "VOCAB", "SEQ_LEN",
    "PRETRAIN_MOTIFS", "TRANSFER_MOTIFS", "make_motifs", "make_blobs", "IMAGE_SIZE",
]

IMAGE_SIZE = 32


def _masks(name: str, x, y, cx, cy, r):
    dx, dy = x - cx, y - cy
    t = r / 3.0
    if name == "circle":
        return dx * dx + dy * dy < r * r
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    if name == "square":
        return (abs(dx) < r) & (abs(dy) < r)
    if name == "diamond":
        return abs(dx) + abs(dy) < r
    if name == "triangle":
        return (dy < r) & (dy > -r) & (abs(dx) < (dy + r) / 2)
    if name == "cross":
        return ((abs(dx) < t) & (abs(dy) < r)) | ((abs(dy) < t) & (abs(dx) < r))
    if name == "hbar":
        return (abs(dx) < r) & (abs(dy) < t)
    if name == "vbar":
        return (abs(dy) < r) & (abs(dx) < t)
    if name == "x":
        return ((abs(dx - dy) < t) | (abs(dx + dy) < t)) & (abs(dx) < r) & (abs(dy) < r)
    if name == "ell":
        return ((abs(dx + r - t) < t) & (abs(dy) < r)) | ((abs(dy - r + t) < t) & (abs(dx) < r))
    if name == "tee":
        return ((abs(dy + r - t) < t) & (abs(dx) < r)) | ((abs(dx) < t) & (abs(dy) < r))
    if name == "frame":
        return (abs(dx) < r) & (abs(dy) < r) & ~((abs(dx) < 0.55 * r) & (abs(dy) < 0.55 * r))
    raise ValueError(f"unknown shape {name!r}")


SHAPES = ("circle", "ring", "square", "diamond", "triangle", "cross", "hbar", "vbar",
          "x", "ell", "tee", "frame")
PRETRAIN_SHAPES = SHAPES[:8]
TRANSFER_SHAPES = SHAPES[8:]


def make_shapes(n: int, classes=PRETRAIN_SHAPES, *, seed: int = 0, size: int = IMAGE_SIZE,
                noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (float32 in [0, 1], shape (n, size, size, 3)) and integer labels."""
    rng = np.random.default_rng(seed)
    y_idx, x_idx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.float32)
    labels = rng.integers(0, len(classes), n)
    for i in range(n):
        r = rng.uniform(0.18, 0.34) * size
        cx, cy = rng.uniform(r, size - r, 2)
        mask = _masks(classes[labels[i]], x_idx, y_idx, cx, cy, r)
        background = rng.uniform(0.0, 0.5, 3).astype(np.float32)
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        while np.abs(colour - background).sum() < 0.6:
            colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        img = np.where(mask[..., None], colour, background)
        img += rng.normal(0.0, noise, img.shape).astype(np.float32)
        images[i] = img
    return np.clip(images, 0.0, 1.0), labels.astype(np.int32)


VOCAB = 64
SEQ_LEN = 40
_MOTIF_RNG = np.random.default_rng(1234)
_MOTIFS = [tuple(int(t) for t in _MOTIF_RNG.choice(np.arange(2, VOCAB), 3, replace=False))
           for _ in range(10)]
PRETRAIN_MOTIFS = tuple(_MOTIFS[:6])
TRANSFER_MOTIFS = tuple(_MOTIFS[6:])


def motif_names(motifs) -> tuple[str, ...]:
    """Class names for motifs: each motif's tokens (``motif-3-17-42``)."""
    return tuple("motif-" + "-".join(str(int(t)) for t in m) for m in motifs)


def make_motifs(n: int, motifs=PRETRAIN_MOTIFS, *, seed: int = 0, length: int = SEQ_LEN,
                distractors: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`n` token sequences (int32, (n, length)) whose label is the motif hidden in them.

    Each sequence holds random tokens, its class motif once (with one random token allowed
    between motif tokens), and `distractors` single motif tokens of other classes.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(2, VOCAB, (n, length)).astype(np.int32)
    labels = rng.integers(0, len(motifs), n)
    for i in range(n):
        motif = motifs[labels[i]]
        gaps = rng.integers(1, 3, len(motif) - 1)
        span = int(gaps.sum()) + 1
        start = int(rng.integers(0, length - span))
        pos = start + np.concatenate([[0], np.cumsum(gaps)])
        x[i, pos] = motif
        for _ in range(distractors):
            other = motifs[int(rng.integers(0, len(motifs)))]
            p = int(rng.integers(0, length))
            if p not in pos:
                x[i, p] = other[int(rng.integers(0, len(other)))]
    return x, labels.astype(np.int32)


def make_blobs(n: int, *, classes: int = 8, dim: int = 16, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """`n` float32 vectors in `dim` dimensions from a non-linear `classes`-way mixture."""
    centres = np.random.default_rng(99).normal(0, 1.0, (classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + rng.normal(0, 0.6, (n, dim)).astype(np.float32)
    x = np.tanh(x) + 0.1 * x ** 2
    return x.astype(np.float32), labels.astype(np.int32)


def balanced(x: np.ndarray, y: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` samples of each class (a few-label training set)."""
    idx = np.concatenate([np.where(y == c)[0][:per_class] for c in np.unique(y)])
    return x[idx], y[idx]


def shape_transfer_task(per_class: int, *, seed: int = 0, test: int = 600):
    """The CNN transfer task: the 4 `TRANSFER_SHAPES` the CNN never saw, `per_class` labels
    each; returns ((x, y), (x_test, y_test))."""
    x, y = make_shapes(per_class * len(TRANSFER_SHAPES) * 4, TRANSFER_SHAPES, seed=100 + seed)
    return balanced(x, y, per_class), make_shapes(test, TRANSFER_SHAPES, seed=999)


MOTIF_FAMILIES = tuple((PRETRAIN_MOTIFS[2 * i], PRETRAIN_MOTIFS[2 * i + 1]) for i in range(3))


def make_motif_families(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM transfer task: 3 classes, each a family of two pretraining motifs, in noisier
    sequences (4 distractor tokens instead of 2)."""
    x, y = make_motifs(n, PRETRAIN_MOTIFS, seed=seed, distractors=4)
    return x, (y // 2).astype(np.int32)


def motif_transfer_task(per_class: int, *, seed: int = 0, test: int = 600):
    """((x, y), (x_test, y_test)) for the motif-family task with `per_class` labels each."""
    x, y = make_motif_families(per_class * 3 * 4, seed=100 + seed)
    return balanced(x, y, per_class), make_motif_families(test, seed=999)


def make_digits_like(n: int, *, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """10-class grayscale images (n, size, size, 1) in [0, 1]: ten of the `SHAPES`, the stand-in
    for the 28x28 digit images of the source material's examples."""
    rng = np.random.default_rng(seed)
    y_idx, x_idx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = np.empty((n, size, size, 1), np.float32)
    for i in range(n):  # white strokes on black, like handwritten digits
        r = rng.uniform(0.25, 0.4) * size
        cx, cy = rng.uniform(r, size - r, 2)
        mask = _masks(SHAPES[labels[i]], x_idx, y_idx, cx, cy, r)
        images[i, ..., 0] = mask + rng.normal(0.0, 0.1, mask.shape)
    return np.clip(images, 0.0, 1.0), labels.astype(np.int32)


TEXT_VOCAB = 10000
TEXT_LEN = 50


def make_text(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary "sentiment" sequences over a 10,000-token vocabulary: label 1 when one of 20
    positive tokens outnumbers the negative ones, among random filler tokens."""
    rng = np.random.default_rng(seed)
    positive = np.arange(100, 120)
    negative = np.arange(200, 220)
    x = rng.integers(1000, TEXT_VOCAB, (n, TEXT_LEN)).astype(np.int32)
    y = rng.integers(0, 2, n).astype(np.int32)
    for i in range(n):
        strong, weak = (positive, negative) if y[i] else (negative, positive)
        k = int(rng.integers(2, 5))
        pos = rng.choice(TEXT_LEN, k + 1, replace=False)
        x[i, pos[:k]] = rng.choice(strong, k)
        x[i, pos[k]] = rng.choice(weak)
    return x, y
