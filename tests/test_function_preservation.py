"""Function-preserving operations keep the function on realistic inputs.

Every case runs the original Keras model on the sample tasks' own data (shape images from
`sample_models.tasks.make_shapes`, token sequences from `make_motifs`) and compares the edited
model's outputs with those reference outputs (atol 1e-5). Architectures: BatchNorm after the
edited layer, a residual Add, a depthwise block, a Concatenate, an LSTM. Operations: transplant
into a fresh model of the same architecture, `widen` (with and without a seed), `deepen`
(identity and residual), `delete_layer` of an identity layer, `merge_lora` with the zero B
Keras starts from, `replace_head(keep_classes=...)` on the kept classes.

The fast tier runs a rotation of (operation, architecture) pairs, two hypothesis examples each;
`make test-slow` runs every pair with more examples.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import surgery
from surgery.sample_models.tasks import make_motifs, make_shapes
from surgery import edit

ATOL = 1e-5
SIZE = 12  # shape images, SIZE x SIZE
SEQ = 16   # motif sequences (the task's own generator, shorter than the sample model's 40)



# ------------------------------------------------------------------ architectures

def _bn(k):
    L = k.layers
    inp = k.Input((SIZE, SIZE, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Activation("linear", name="ident")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(10, activation="relu", name="fc")(x)
    return k.Model(inp, L.Dense(5, name="head")(x), name="bn_net")


def _residual(k):
    L = k.layers
    inp = k.Input((SIZE, SIZE, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inp)
    y = L.Conv2D(6, 3, padding="same", name="conv_a")(x)
    y = L.BatchNormalization(name="bn_a")(y)
    y = L.ReLU(name="relu_a")(y)
    y = L.Conv2D(4, 3, padding="same", name="conv_b")(y)
    y = L.BatchNormalization(name="bn_b")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="relu_out")(x)
    x = L.Activation("linear", name="ident")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inp, L.Dense(5, name="head")(x), name="residual_net")


def _depthwise(k):
    L = k.layers
    inp = k.Input((SIZE, SIZE, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv1")(inp)
    x = L.ReLU(name="relu1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    x = L.ReLU(name="relu_dw")(x)
    x = L.Conv2D(8, 1, name="pw")(x)
    x = L.BatchNormalization(name="bn_pw")(x)
    x = L.ReLU(name="relu_pw")(x)
    x = L.Activation("linear", name="ident")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inp, L.Dense(5, name="head")(x), name="depthwise_net")


def _concat(k):
    L = k.layers
    inp = k.Input((SIZE, SIZE, 3))
    a = L.Conv2D(4, 3, padding="same", name="branch_a")(inp)
    b = L.Conv2D(3, 1, name="branch_b")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.ReLU(name="relu_cat")(x)
    x = L.Conv2D(6, 3, padding="same", name="mix")(x)
    x = L.BatchNormalization(name="bn_mix")(x)
    x = L.ReLU(name="relu_mix")(x)
    x = L.Activation("linear", name="ident")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return k.Model(inp, L.Dense(5, name="head")(x), name="concat_net")


def _lstm(k):
    L = k.layers
    inp = k.Input((SEQ,), dtype="int32")
    x = L.Embedding(64, 8, name="embed")(inp)
    x = L.LSTM(6, name="encoder")(x)
    x = L.Dense(10, activation="relu", name="fc")(x)
    x = L.Activation("linear", name="ident")(x)
    return k.Model(inp, L.Dense(5, name="head")(x), name="lstm_net")


# name -> (builder, layer to widen, layer to deepen after, residual-deepen point, LoRA layers)
ARCHS = {
    "bn": (_bn, "conv1", "relu1", "relu2", ("fc", "conv2")),
    "residual": (_residual, "conv_a", "relu_a", "relu_out", ("conv_a", "head")),
    "depthwise": (_depthwise, "pw", "relu_dw", "relu1", ("pw", "conv1")),
    "concat": (_concat, "mix", "cat", "relu_mix", ("mix", "branch_a")),
    "lstm": (_lstm, "fc", "encoder", None, ("fc", "embed")),
}
OPS = ("transplant", "widen", "deepen", "deepen_residual", "delete_identity", "merge_lora",
       "replace_head")


def _randomize(model, seed: int):
    """Distinct weights everywhere, BatchNorm statistics far from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = ws
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.5, 2.0, v.shape)])
            continue
        new = []
        for w in ws:
            fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 10
            new.append(rng.normal(0, 1.0 / np.sqrt(fan_in), w.shape).astype(w.dtype))
        layer.set_weights(new)
    return model


def _data(arch: str, seed: int) -> np.ndarray:
    if arch == "lstm":
        return make_motifs(16, seed=seed, length=SEQ)[0]
    return make_shapes(16, seed=seed, size=SIZE)[0]


def _build(k, arch: str, seed: int):
    return _randomize(ARCHS[arch][0](k), seed)


def _run(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def _apply(k, op: str, arch: str, model, data) -> tuple[object, np.ndarray]:
    """(edited model, the original's reference outputs to compare with)."""
    _, wide, deep, residual_at, lora = ARCHS[arch]
    ref = _run(model, data.x)
    if op == "transplant":
        fresh = ARCHS[arch][0](k)
        report = surgery.transplant(model, fresh, strict=True)
        assert len(report.copied) == len(model.weights)
        return fresh, ref
    if op == "widen":
        width = getattr(model.get_layer(wide), "units", None) or \
            model.get_layer(wide).filters
        return edit.widen(model, wide, width + data.extra, seed=data.seed).model, ref
    if op == "deepen":
        return edit.deepen(model, deep).model, ref
    if op == "deepen_residual":
        return edit.deepen(model, residual_at, residual=True).model, ref
    if op == "delete_identity":
        return edit.delete_layer(model, "ident").model, ref
    if op == "merge_lora":
        surgery.enable_lora(model, *lora, rank=data.extra)
        for name in lora:  # Keras starts B at zero: the adapted model is the original
            layer = model.get_layer(name)
            b = layer.lora_embeddings_b if hasattr(layer, "lora_embeddings_b") else \
                layer.lora_kernel_b
            assert not np.any(b.numpy())
        return surgery.merge_lora(model), ref
    if op == "replace_head":
        keep = list(data.keep)
        new, _ = surgery.replace_head(model, len(keep) + data.extra - 1, keep_classes=keep)
        return new, ref[:, keep]
    raise AssertionError(op)


class _Case:
    def __init__(self, x, seed, extra, keep):
        self.x, self.seed, self.extra, self.keep = x, seed, extra, keep


def _check(k, op, arch, weight_seed, data_seed, widen_seed, extra, keep):
    if op == "deepen_residual" and ARCHS[arch][3] is None:
        pytest.skip("a residual Conv branch needs a feature map")
    model = _build(k, arch, weight_seed)
    case = _Case(_data(arch, data_seed), widen_seed, extra, keep)
    before = [w.numpy().copy() for w in model.weights]
    new, ref = _apply(k, op, arch, model, case)
    got = _run(new, case.x)
    if op == "replace_head":
        got = got[:, :len(keep)]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    if op not in ("merge_lora",):  # enable_lora acts in place by contract; the rest don't
        for w, b in zip(model.weights, before):
            np.testing.assert_array_equal(w.numpy(), b)


# No shrinking: each example builds and runs TensorFlow models; the failing example printed
# is the one to reproduce.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
_params = dict(weight_seed=st.integers(0, 2**16), data_seed=st.integers(0, 2**16),
               widen_seed=st.one_of(st.none(), st.integers(0, 2**16)),
               extra=st.integers(1, 4),
               keep=st.lists(st.integers(0, 4), min_size=1, max_size=5, unique=True))

# Fast tier: each operation on two architectures, each architecture under several operations.
_ARCH_NAMES = tuple(ARCHS)
FAST = [(op, _ARCH_NAMES[(i + j) % len(_ARCH_NAMES)]) for i, op in enumerate(OPS)
        for j in (0, 2)]


@pytest.mark.parametrize("op,arch", FAST)
@settings(max_examples=2, deadline=None, derandomize=True, database=None,
          phases=_PHASES)
@given(**_params)
def test_function_preserved_on_task_data(keras, op, arch, weight_seed, data_seed, widen_seed,
                                         extra, keep):
    _check(keras, op, arch, weight_seed, data_seed, widen_seed, extra, keep)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("arch", tuple(ARCHS))
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          phases=_PHASES)
@given(**_params)
def test_function_preserved_on_task_data_every_pair(keras, op, arch, weight_seed, data_seed,
                                                    widen_seed, extra, keep):
    _check(keras, op, arch, weight_seed, data_seed, widen_seed, extra, keep)


# ------------------------------------------------------------------ widen without a seed

def test_widen_without_seed_keeps_the_sample_cnn_on_task_images(samples):
    """Issue 15 item 3: the copies for block3_conv and for block3_bn were drawn separately
    when no seed was given (outputs moved by up to 0.6 on the task images)."""
    model = surgery.load_model(samples["cnn"])
    x, _ = make_shapes(64, seed=11)
    ref = _run(model, x)
    old_k = model.get_layer("block3_conv").kernel.numpy()
    old_bn = [w.numpy() for w in model.get_layer("block3_bn").weights]
    wide, report = edit.widen(model, "block3_conv", 96)  # no seed
    np.testing.assert_allclose(_run(wide, x), ref, atol=ATOL, rtol=0)
    # Each new unit's BatchNorm entries are those of the unit its kernel column copies.
    new_k = wide.get_layer("block3_conv").kernel.numpy()
    new_bn = [w.numpy() for w in wide.get_layer("block3_bn").weights]
    width = old_k.shape[-1]
    flat = old_k.reshape(-1, width)
    for j in range(width, 96):
        source = np.flatnonzero((flat == new_k.reshape(-1, 96)[:, [j]]).all(axis=0))
        assert len(source) == 1
        for old, new in zip(old_bn, new_bn):
            assert new[j] == old[source[0]]
    assert "block3_bn: widened with it" in report.changes
