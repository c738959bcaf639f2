"""Zero-rule PyTorch <-> Keras ports (issue #20): `surgery.port_rules`, `transplant(...,
layout="torch")`, `surgery transplant --from torch [--write-rules]`, `export --like`.

The reference for every port is a PyTorch-layout state dict written here with plain numpy from
the documented layout equations (conv OIHW = np.transpose of HWIO, depthwise (C*m, 1, kh, kw),
transposed conv (in, out, kh, kw), Linear (out, in) with the rows of a Linear after an NCHW
flatten permuted, LSTM gates i, f, g, o as Keras's with the bias split into two halves, GRU
gates r, z, n against Keras's z, r, h with the two bias rows), under torchvision's key names.
Ported back with no rules into a fresh model of the same architecture, every variable must be
bitwise the original's and the outputs equal on the sample tasks' own data. Real PyTorch checks
the same ports in tests/interop (make test-interop)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import surgery
from surgery.cli import main
from surgery.entries import VariableInfo
from surgery.errors import AmbiguousPort, RulesError, UnsupportedModelError
from surgery.io.safetensors import write_safetensors
from surgery.sample_models.tasks import make_motifs, make_shapes
from surgery.transfer.port import torch_units
from tests.conftest import sha256

# ------------------------------------------------------------------ Keras models


def _vgg(k):
    """features: conv-bn-relu x2, pool, conv-bn-relu, pool, conv-bn-relu; classifier."""
    L = k.layers
    return k.Sequential([
        k.Input((16, 16, 3)),
        L.Conv2D(8, 3, padding="same", name="c1"), L.BatchNormalization(epsilon=1e-5, name="n1"),
        L.ReLU(), L.Conv2D(8, 3, padding="same", name="c2"),
        L.BatchNormalization(epsilon=1e-5, name="n2"), L.ReLU(), L.MaxPooling2D(2),
        L.Conv2D(8, 3, padding="same", name="c3"), L.BatchNormalization(epsilon=1e-5, name="n3"),
        L.ReLU(), L.MaxPooling2D(2), L.Conv2D(8, 3, padding="same", name="c4"),
        L.BatchNormalization(epsilon=1e-5, name="n4"), L.ReLU(), L.Flatten(name="flat"),
        L.Dense(32, name="fc1"), L.ReLU(), L.Dropout(0.1), L.Dense(10, name="fc2")], name="vgg")


_VGG = [("c1", "features.0", "conv"), ("n1", "features.1", "bn"), ("c2", "features.3", "conv"),
        ("n2", "features.4", "bn"), ("c3", "features.7", "conv"), ("n3", "features.8", "bn"),
        ("c4", "features.11", "conv"), ("n4", "features.12", "bn"),
        ("fc1", "classifier.0", ("linear", (4, 4, 8))), ("fc2", "classifier.3", "linear")]


def _bottleneck(L, x, name, planes, out, down):
    """torchvision's Bottleneck; the downsample branch is built first, so that Keras's graph
    order reaches it before conv3 (both 1x1 planes -> out with BatchNorm out, in parallel)."""
    skip = x
    if down:
        skip = L.Conv2D(out, 1, use_bias=False, name=f"{name}_down")(x)
        skip = L.BatchNormalization(epsilon=1e-5, name=f"{name}_down_bn")(skip)
    y = x
    for i, (width, size) in enumerate([(planes, 1), (planes, 3), (out, 1)], 1):
        y = L.Conv2D(width, size, padding="same", use_bias=False, name=f"{name}_conv{i}")(y)
        y = L.BatchNormalization(epsilon=1e-5, name=f"{name}_bn{i}")(y)
        y = L.ReLU()(y) if i < 3 else y
    return L.ReLU()(L.Add()([y, skip]))


def _resnet(k):
    L = k.layers
    inp = k.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.MaxPooling2D(2)(L.ReLU()(L.BatchNormalization(epsilon=1e-5, name="bn1")(x)))
    x = _bottleneck(L, x, "b1", 8, 32, True)
    x = _bottleneck(L, x, "b2", 8, 32, False)
    return k.Model(inp, L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x)), name="resnet")


def _block_names(keras_block, torch_block, down):
    out = [(f"{keras_block}_{kind}{i}", f"{torch_block}.{kind}{i}", "conv" if kind == "conv"
            else "bn") for i in (1, 2, 3) for kind in ("conv", "bn")]
    if down:
        out += [(f"{keras_block}_down", f"{torch_block}.downsample.0", "conv"),
                (f"{keras_block}_down_bn", f"{torch_block}.downsample.1", "bn")]
    return out


_RESNET = [("conv1", "conv1", "conv"), ("bn1", "bn1", "bn"), *_block_names("b1", "layer1.0", True),
           *_block_names("b2", "layer1.1", False), ("fc", "fc", "linear")]


def _mobilenet(k):
    """features.0 (conv-bn-relu6), features.1 (expand, depthwise, project, bn; residual),
    features.2 (a depthwise conv with depth_multiplier 2, biased), classifier.1."""
    L = k.layers
    inp = k.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU(6.0)(L.BatchNormalization(epsilon=1e-5, name="stem_bn")(x))
    y = L.Conv2D(16, 1, use_bias=False, name="expand")(x)
    y = L.ReLU(6.0)(L.BatchNormalization(epsilon=1e-5, name="expand_bn")(y))
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = L.ReLU(6.0)(L.BatchNormalization(epsilon=1e-5, name="dw_bn")(y))
    y = L.Conv2D(8, 1, use_bias=False, name="project")(y)
    x = L.Add()([x, L.BatchNormalization(epsilon=1e-5, name="project_bn")(y)])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    return k.Model(inp, L.Dense(10, name="classifier")(x), name="mobilenet")


_MOBILENET = [("stem", "features.0.0", "conv"), ("stem_bn", "features.0.1", "bn"),
              ("expand", "features.1.conv.0.0", "conv"),
              ("expand_bn", "features.1.conv.0.1", "bn"),
              ("dw", "features.1.conv.1.0", "depthwise"), ("dw_bn", "features.1.conv.1.1", "bn"),
              ("project", "features.1.conv.2", "conv"), ("project_bn", "features.1.conv.3", "bn"),
              ("dw2", "features.2", "depthwise"), ("classifier", "classifier.1", "linear")]


def _recurrent(k):
    """Embedding -> 2-layer bidirectional LSTM -> GRU (reset_after=True) -> Dense."""
    L = k.layers
    return k.Sequential([
        k.Input((16,), dtype="int32"), L.Embedding(64, 12, name="embed"),
        L.Bidirectional(L.LSTM(10, return_sequences=True), name="bi1"),
        L.Bidirectional(L.LSTM(10, return_sequences=True), name="bi2"),
        L.GRU(8, name="gru"), L.Dense(6, name="head")], name="recurrent")


_RECURRENT = [("embed", "embed", "embedding"), ("bi1", "rnn", ("bilstm", 0)),
              ("bi2", "rnn", ("bilstm", 1)), ("gru", "gru", ("gru", 0)),
              ("head", "head", "linear")]


def _conv1d(k):
    L = k.layers
    return k.Sequential([
        k.Input((40, 64)), L.Conv1D(16, 5, name="ca"), L.BatchNormalization(epsilon=1e-5,
                                                                          name="na"),
        L.ReLU(), L.MaxPooling1D(2), L.Conv1D(16, 3, name="cb"), L.ReLU(), L.Flatten(),
        L.Dense(6, name="out")], name="audio")


_CONV1D = [("ca", "net.0", "conv"), ("na", "net.1", "bn"), ("cb", "net.4", "conv"),
           ("out", "fc", ("linear", (1, 16, 16)))]


def _misc(k):
    """A transposed conv, a channel-wise PReLU and a LayerNorm."""
    L = k.layers
    inp = k.Input((8, 8, 3))
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(inp)
    x = L.PReLU(shared_axes=[1, 2], name="act")(x)
    x = L.LayerNormalization(epsilon=1e-5, name="ln")(x)
    return k.Model(inp, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(x)), name="misc")


_MISC = [("up", "up", "conv"), ("act", "act", "prelu"), ("ln", "ln", "ln"),
         ("out", "out", "linear")]


def _images(size):
    return make_shapes(12, size=size, seed=5)[0]


def _tokens():
    return make_motifs(8, length=16, seed=5)[0]  # short: eager LSTMs cost ~0.1 s per step


def _one_hot():
    return np.eye(64, dtype="float32")[make_motifs(12, seed=5)[0]]


CASES = {"vgg": (_vgg, _VGG, lambda: _images(16)), "resnet": (_resnet, _RESNET,
                                                              lambda: _images(16)),
         "mobilenet": (_mobilenet, _MOBILENET, lambda: _images(16)),
         "recurrent": (_recurrent, _RECURRENT, _tokens), "conv1d": (_conv1d, _CONV1D, _one_hot),
         "misc": (_misc, _MISC, lambda: _images(8))}


def _randomize(model, seed):
    """Distinct random values in every variable (positive variances), so swaps show."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        value = rng.uniform(0.5, 1.5, shape) if v.path.endswith("moving_variance") else \
            rng.normal(0, 0.3, shape)
        v.assign(value.astype(v.dtype))
    return model


# ------------------------------------------------------------------ the numpy reference

def _conv(k):
    """Keras (*k, in, out) -> PyTorch (out, in, *k); a transposed conv's (*k, out, in) ->
    (in, out, *k) is the same transpose."""
    n = k.ndim - 2
    return np.ascontiguousarray(np.transpose(k, (n + 1, n, *range(n))))


def _depthwise(k):
    kh, kw, c, m = k.shape
    return np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


def _linear(k, feature=None):
    if feature:  # rows in (h, w, c) order -> PyTorch's NCHW flatten, (c, h, w)
        h, w, c = feature
        k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    return np.ascontiguousarray(k.T)


def _zr(a, units):
    """Keras GRU gate blocks z, r, h <-> PyTorch's r, z, n (the last axis)."""
    return np.concatenate([a[..., units:2 * units], a[..., :units], a[..., 2 * units:]], -1)


def _recurrent_keys(prefix, index, suffix, kernel, recurrent, bias, gru, export=False):
    tail = f"_l{index}{suffix}"
    if gru:
        units = recurrent.shape[0]
        return {f"{prefix}.weight_ih{tail}": _zr(kernel, units).T.copy(),
                f"{prefix}.weight_hh{tail}": _zr(recurrent, units).T.copy(),
                f"{prefix}.bias_ih{tail}": _zr(bias[0], units),
                f"{prefix}.bias_hh{tail}": _zr(bias[1], units)}
    return {f"{prefix}.weight_ih{tail}": kernel.T.copy(),
            f"{prefix}.weight_hh{tail}": recurrent.T.copy(),
            f"{prefix}.bias_ih{tail}": bias if export else bias / 2,  # b_ih + b_hh = bias
            f"{prefix}.bias_hh{tail}": np.zeros_like(bias) if export else bias / 2}


def torch_state(model, names, tracked=7, export=False):
    """The PyTorch state dict of `model` under `names` [(Keras layer, PyTorch module, kind)],
    from the documented layout equations (`export`: an LSTM's bias all in b_ih, as
    `lstm_to_torch` documents; else split in halves)."""
    out = {}
    for layer_name, module, kind in names:
        w = [np.asarray(v) for v in model.get_layer(layer_name).get_weights()]
        kind, extra = (kind, None) if isinstance(kind, str) else kind
        if kind in ("conv", "depthwise", "linear"):
            fn = {"conv": _conv, "depthwise": _depthwise,
                  "linear": lambda a: _linear(a, extra)}[kind]
            out[f"{module}.weight"] = fn(w[0])
            if len(w) > 1:
                out[f"{module}.bias"] = w[1]
        elif kind == "bn":
            out.update({f"{module}.{r}": a for r, a in zip(
                ("weight", "bias", "running_mean", "running_var"), w)})
            out[f"{module}.num_batches_tracked"] = np.array(tracked, np.int64)
        elif kind in ("embedding", "ln"):
            out.update({f"{module}.{r}": a for r, a in zip(("weight", "bias"), w)})
        elif kind == "prelu":
            out[f"{module}.weight"] = w[0].reshape(-1)
        elif kind == "bilstm":
            out.update(_recurrent_keys(module, extra, "", *w[:3], False, export))
            out.update(_recurrent_keys(module, extra, "_reverse", *w[3:], False, export))
        else:  # gru
            out.update(_recurrent_keys(module, extra, "", *w, True))
    return out


def _same_weights(a, b) -> bool:
    return len(a.weights) == len(b.weights) and all(
        x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(a.weights, b.weights))


@pytest.fixture(scope="module")
def ported(keras, tmp_path_factory):
    """Each case: the randomized original, its state dict (numpy) and the file holding it."""
    folder = tmp_path_factory.mktemp("port")
    out = {}
    for i, (name, (build, names, _)) in enumerate(CASES.items()):
        model = _randomize(build(keras), seed=i)
        state = torch_state(model, names)
        path = str(folder / (f"{name}.npz" if name == "conv1d" else f"{name}.safetensors"))
        if path.endswith(".npz"):
            np.savez(path, **state)
        else:
            write_safetensors(state, path)
        out[name] = (model, state, path)
    return out


# ------------------------------------------------------------------ the torch side


@pytest.mark.parametrize("order", [
    ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
     "layer1.0.conv3", "layer1.0.bn3", "layer1.0.downsample.0", "layer1.0.downsample.1",
     "layer1.1.conv1", "layer2.0.conv1", "layer10.0.conv1", "fc"],
    ["features.0", "features.1", "features.2", "features.9", "features.10", "features.11"],
    ["features.0.0", "features.0.1", "features.1.conv.0.0", "features.1.conv.0.1",
     "features.1.conv.1.0", "features.1.conv.1.1", "features.1.conv.2", "features.1.conv.3",
     "features.2.conv.0.0"],
], ids=["resnet", "vgg", "mobilenet"])
def test_modules_follow_execution_order_for_torchvision_names(order):
    """Natural order (a string sort would put features.10 before features.2, layer1 before
    bn1 and downsample before conv1), whatever the file's order."""
    shuffled = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    units, unknown = torch_units([VariableInfo(f"{m}.weight", (2, 2), "float32")
                                  for m in shuffled])
    assert unknown == [] and [u.name for u in units] == order


def test_one_lstm_module_is_one_unit_per_layer_with_both_directions():
    keys = ["rnn.weight_ih_l1", "rnn.bias_hh_l0_reverse", "rnn.weight_ih_l0_reverse",
            "rnn.weight_ih_l0", "rnn.proj.weight", "rnn.weight_hr_l0"]
    units, unknown = torch_units([VariableInfo(k, (2, 2), "float32") for k in keys])
    assert [u.name for u in units] == ["rnn[l0]", "rnn[l1]", "rnn.proj"]
    assert dict(units[0].keys) == {"b_hh_reverse": "rnn.bias_hh_l0_reverse",
                                   "w_ih_reverse": "rnn.weight_ih_l0_reverse",
                                   "w_ih": "rnn.weight_ih_l0"}
    assert unknown == ["rnn.weight_hr_l0"]


# ------------------------------------------------------------------ PyTorch -> Keras


@pytest.mark.parametrize("case", list(CASES))
def test_port_with_no_rules_is_bitwise_and_keeps_the_outputs(keras, ported, case):
    build, _, inputs = CASES[case]
    model, _, path = ported[case]
    fresh = build(keras)
    assert not _same_weights(model, fresh)
    report = surgery.transplant(path, fresh, layout="torch")
    assert report.ok and not report.unused and not report.missing
    assert _same_weights(model, fresh)
    x = inputs()
    np.testing.assert_array_equal(np.asarray(fresh(x, training=False)),
                                  np.asarray(model(x, training=False)))


def test_resnet_bottleneck_pairs_conv3_and_downsample_by_key_order(keras, ported):
    plan = surgery.port_rules(ported["resnet"][2], _resnet(keras))
    pairs = {p.target_layer: p for p in plan.pairs}
    assert pairs["b1_conv3"] == surgery.PortPair(
        "layer1.0.conv3", "b1_conv3", "conv_from_torch", "shape, after layer1.0.bn2 (key order)")
    assert pairs["b1_down"] == surgery.PortPair("layer1.0.downsample.0", "b1_down",
                                                "conv_from_torch", "shape + order")
    assert pairs["b1_down_bn"].source_module == "layer1.0.downsample.1"
    assert pairs["b2_conv3"].source_module == "layer1.1.conv3"
    assert pairs["fc"].transform == "linear_from_torch"
    vgg = surgery.port_rules(ported["vgg"][2], _vgg(keras))
    assert str(vgg.pairs[-2]) == ("classifier.0 -> fc1: linear_from_torch (feature_shape "
                                  "[4, 4, 8]); only candidate")


def _branches(k):
    L = k.layers
    inp = k.Input((16, 16, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="stem")(inp))
    a = L.Conv2D(8, 3, padding="same", name="branch_a")(x)
    b = L.Conv2D(8, 3, padding="same", name="branch_b")(x)
    out = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(L.Add()([a, b])))
    return k.Model(inp, out, name="branches")


_BRANCHES = [("stem", "stem", "conv"), ("branch_a", "left", "conv"),
             ("branch_b", "right", "conv"), ("head", "head", "linear")]
_SETTLE = ('[[adapter]] target = "branch_a/kernel", source = "left.weight", name = '
           '"conv_from_torch"; [[rename]] from = \'^left\\.bias$\', to = "branch_a/bias"')


@pytest.fixture(scope="module")
def branches(keras, tmp_path_factory):
    model = _randomize(_branches(keras), 9)
    path = str(tmp_path_factory.mktemp("branches") / "branches.safetensors")
    write_safetensors(torch_state(model, _BRANCHES), path)
    return model, path


def test_two_parallel_branches_with_unrelated_names_are_refused(keras, branches):
    model, path = branches
    with pytest.raises(AmbiguousPort) as e:
        surgery.port_rules(path, _branches(keras))
    assert str(e.value) == (
        f"{path}: Keras layers 'branch_a', 'branch_b' (Conv2D, same shapes, neither feeding "
        "the other) could each take PyTorch module left or right, and the key order doesn't "
        f"decide; add --rules R.toml with {_SETTLE} (or the pairing you mean), and the rest "
        "follows (1 more layer waits on them)")
    assert isinstance(e.value, RulesError) and e.value.layer == "branch_a"


def test_parallel_branches_after_the_same_module_are_refused_whatever_the_numbers(keras,
                                                                                  tmp_path):
    """conv1 follows conv0 in key order, but either branch could be it: Keras's order of two
    parallel layers is only the order the model's code built them in."""
    model = _randomize(_branches(keras), 9)
    names = [("stem", "conv0", "conv"), ("branch_a", "conv1", "conv"),
             ("branch_b", "conv2", "conv"), ("head", "fc", "linear")]
    path = _state_file(tmp_path, torch_state(model, names))
    with pytest.raises(AmbiguousPort) as e:
        surgery.port_rules(path, _branches(keras))
    assert str(e.value).startswith(
        f"{path}: Keras layers 'branch_a', 'branch_b' (Conv2D, same shapes, neither feeding "
        "the other) could each take PyTorch module conv1 or conv2, and the key order doesn't "
        "decide; add --rules R.toml with [[adapter]] target = \"branch_a/kernel\", source = "
        "\"conv1.weight\"")


def test_user_rules_settle_the_ambiguity_and_the_rest_is_inferred(keras, branches, tmp_path):
    model, path = branches
    rules = tmp_path / "settle.toml"
    rules.write_text("[[adapter]]\ntarget = \"branch_a/kernel\"\nsource = \"left.weight\"\n"
                     "name = \"conv_from_torch\"\n[[rename]]\nfrom = '^left\\.bias$'\n"
                     "to = \"branch_a/bias\"\n")
    fresh = _branches(keras)
    report = surgery.transplant(path, fresh, str(rules), layout="torch")
    assert [(p.source_module, p.target_layer) for p in report.port] == [
        ("stem", "stem"), ("right", "branch_b"), ("head", "head")]
    assert _same_weights(model, fresh)
    x = _images(16)
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
    plan = surgery.port_rules(path, _branches(keras), str(rules))
    assert plan.to_toml().count(f"# your rules ({rules})") == 1


def _same_outputs(a, b, x):
    np.testing.assert_array_equal(np.asarray(a(x, training=False)),
                                  np.asarray(b(x, training=False)))


def test_batchnorm_epsilon_that_differs_is_refused_naming_both(keras, ported):
    fresh = _vgg(keras)
    fresh.get_layer("n2").epsilon = 1e-3  # as built with Keras's default
    with pytest.raises(RulesError) as e:
        surgery.transplant(ported["vgg"][2], fresh, layout="torch")
    assert str(e.value) == (
        "n2: the Keras layer's epsilon is 0.001 but PyTorch's BatchNorm eps is 1e-05 unless the "
        "module was built otherwise (a state dict doesn't store it), so the outputs would "
        "differ; build the Keras layer with epsilon=1e-05, or, if features.4 was built with "
        "eps=0.001, add --rules R.toml with [[adapter]] target = \"n2\", name = "
        "\"batchnorm_from_torch\", eps = 0.001, sources = { weight = \"features.4.weight\", "
        "bias = \"features.4.bias\", running_mean = \"features.4.running_mean\", "
        "running_var = \"features.4.running_var\" }")


def test_batchnorm_epsilon_settled_by_the_rule_the_error_names(keras, ported, tmp_path):
    """The rule from the error, taken literally (a module built with eps=1e-3), ports the layer
    with that eps: the Keras layer with epsilon 1e-3 then computes what PyTorch's BatchNorm
    with eps 1e-3 computes (the variance is carried as it is)."""
    model, _, src = ported["vgg"]
    fresh = _vgg(keras)
    fresh.get_layer("n2").epsilon = 1e-3
    with pytest.raises(RulesError) as e:
        surgery.transplant(src, fresh, layout="torch")
    snippet = str(e.value).split("--rules R.toml with ", 1)[1]
    rule = snippet.replace(", name", "\nname").replace(", eps", "\neps").replace(
        ", sources", "\nsources").replace("[[adapter]] ", "[[adapter]]\n")
    (tmp_path / "R.toml").write_text(rule)
    report = surgery.transplant(src, fresh, str(tmp_path / "R.toml"), layout="torch")
    assert report.ok
    for a, b in zip(model.get_layer("n2").get_weights(), fresh.get_layer("n2").get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ the CLI


def test_cli_from_torch_writes_rules_that_repeat_the_port_bitwise(keras, ported, tmp_path):
    model, _, src = ported["resnet"]
    target = str(tmp_path / "target.keras")
    _resnet(keras).save(target)
    before = {p: sha256(p) for p in (src, target)}
    out1, out2, mapping = (str(tmp_path / n) for n in ("a.keras", "b.keras", "mapping.toml"))
    r = CliRunner().invoke(main, ["transplant", src, target, "-o", out1, "--from", "torch",
                                  "--write-rules", mapping])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    first = lines.index("paired by names and shapes (17; PyTorch module -> Keras layer, "
                        "transform, why):")
    assert first < min(i for i, line in enumerate(lines) if line.startswith("conv1/kernel "))
    assert [line.split() for line in lines[first + 1:first + 18]
            if line.split()[0].endswith(("downsample.0", "downsample.1", "conv3"))] == [
        ["layer1.0.conv3", "->", "b1_conv3", "conv_from_torch", "shape,", "after",
         "layer1.0.bn2", "(key", "order)"],
        ["layer1.0.downsample.0", "->", "b1_down", "conv_from_torch", "shape", "+", "order"],
        ["layer1.0.downsample.1", "->", "b1_down_bn", "batchnorm_from_torch", "shape,",
         "after", "layer1.0.downsample.0", "(key", "order)"],
        ["layer1.1.conv3", "->", "b2_conv3", "conv_from_torch", "shape,", "after",
         "layer1.1.bn2", "(key", "order)"]]
    assert lines[-1] == f"wrote {mapping} (the inferred rules: --rules {mapping} repeats this " \
                        "port)"
    r = CliRunner().invoke(main, ["transplant", src, target, "-o", out2, "--rules", mapping])
    assert r.exit_code == 0, r.output and "paired by" not in r.output
    a, b = keras.saving.load_model(out1), keras.saving.load_model(out2)
    assert _same_weights(model, a) and _same_weights(model, b)
    _same_outputs(model, b, _images(16))
    assert before == {p: sha256(p) for p in (src, target)}
    r = CliRunner().invoke(main, ["transplant", src, target, "-o", str(tmp_path / "c.keras"),
                                  "--from", "torch", "--write-rules", mapping])
    assert r.exit_code == 2 and r.output == (f"error: {mapping}: already exists; pass "
                                             "--overwrite (overwrite=True) to replace it\n")


def test_cli_from_torch_dry_run_prints_and_writes_the_rules_and_json(keras, ported, tmp_path):
    _, _, src = ported["recurrent"]
    target, mapping = str(tmp_path / "target.keras"), tmp_path / "mapping.toml"
    _recurrent(keras).save(target)
    r = CliRunner().invoke(main, ["transplant", src, target, "--dry-run", "--from", "torch",
                                  "--write-rules", str(mapping)])
    assert r.exit_code == 0, r.output
    text = mapping.read_text()
    assert "(dry run: nothing changed)" in r.output and f"\n{text.rstrip()}\n" in r.output
    assert text.splitlines()[:6] == [
        "# PyTorch -> Keras (surgery transplant ... --from torch):",
        "# a mapping inferred from names and shapes.", f"# PyTorch: {src}",
        f"# Keras: {target}", "# Review it, edit it, commit it; this repeats it exactly:",
        "#   surgery transplant SOURCE TARGET -o OUT --rules THIS.toml"]
    rules = surgery.load_rules(str(mapping))
    assert rules.strict and rules.match == "exact"
    r = CliRunner().invoke(main, ["transplant", src, target, "--dry-run", "--from", "torch",
                                  "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [(p["source_module"], p["target_layer"], p["transform"]) for p in data["port"]] == [
        ("embed", "embed", "copy"), ("rnn[l0]", "bi1", "lstm_from_torch"),
        ("rnn[l1]", "bi2", "lstm_from_torch"), ("gru[l0]", "gru", "gru_from_torch"),
        ("head", "head", "linear_from_torch")]
    assert {"target": "bi2/backward", "name": "lstm_from_torch", "sources": {
        "w_ih": "rnn.weight_ih_l1_reverse", "w_hh": "rnn.weight_hh_l1_reverse",
        "b_ih": "rnn.bias_ih_l1_reverse", "b_hh": "rnn.bias_hh_l1_reverse"}} \
        in data["rules"]["adapter"]
    assert {"from": "^embed\\.weight$", "to": "embed/embeddings"} in data["rules"]["rename"]
    assert data["dry_run"] is True and data["ok"] is True and data["rules_file"] is None


# ------------------------------------------------------------------ Keras -> PyTorch


@pytest.mark.parametrize("case", ["vgg", "recurrent", "mobilenet", "misc"])
def test_export_like_a_template_writes_its_keys_and_the_reference_values(keras, ported, case,
                                                                         tmp_path):
    model, names = ported[case][0], CASES[case][1]
    reference = torch_state(model, names, tracked=0, export=True)
    template = str(tmp_path / "template.safetensors")
    write_safetensors({k: np.full(v.shape, 3, v.dtype) for k, v in
                       reversed(list(reference.items()))}, template)
    out, rules, out2 = (str(tmp_path / n) for n in ("out.safetensors", "export.toml",
                                                     "again.safetensors"))
    report = surgery.export_state_dict(model, out, like=template, write_rules=rules)
    assert [p.target_layer for p in report.port] == [n for n, _, _ in names]
    with surgery.open_weights(out) as got, surgery.open_weights(template) as want:
        assert list(got) == list(want)
        for key in want:
            assert (got.shape(key), got.dtype(key)) == (want.shape(key), want.dtype(key)), key
            assert np.array_equal(got.read(key), reference[key]), key
    surgery.export_state_dict(model, out2, rules)
    with surgery.open_weights(out2) as again:
        assert {k: again.read(k).tobytes() for k in again} == {
            k: np.asarray(v).tobytes() for k, v in reference.items()}


def test_export_like_with_user_rules_on_top_and_the_template_dtypes(keras, ported, tmp_path):
    model = ported["vgg"][0]
    reference = torch_state(model, _VGG, tracked=0, export=True)
    template = str(tmp_path / "t.safetensors")
    write_safetensors({k: v.astype("float16") if k == "classifier.0.bias" else v
                       for k, v in reference.items()}, template)
    rules = {"export": [{"source": "fc2/kernel", "name": "linear_to_torch",
                         "target": "classifier.3.weight"}],
             "rename": [{"from": "^fc2/bias$", "to": "classifier.3.bias"}]}
    out = str(tmp_path / "out.safetensors")
    report = surgery.export_state_dict(model, out, rules, like=template)
    assert [p.target_layer for p in report.port] == [n for n, _, _ in _VGG[:-1]]
    rows = {r.key: r for r in report.rows}
    assert rows["classifier.3.weight"].how == "linear_to_torch"
    assert rows["classifier.0.bias"].note == "cast float32 -> float16 (the template's)"
    with surgery.open_weights(out) as got:
        assert got.dtype("classifier.0.bias") == "float16"
        assert np.array_equal(got.read("classifier.0.bias"),
                              reference["classifier.0.bias"].astype("float16"))
        assert all(np.array_equal(got.read(k), v) for k, v in reference.items()
                   if k != "classifier.0.bias")


def test_cli_export_like(keras, ported, tmp_path):
    model = ported["vgg"][0]
    path, template = str(tmp_path / "vgg.keras"), str(tmp_path / "t.safetensors")
    model.save(path)
    reference = torch_state(model, _VGG, tracked=0, export=True)
    write_safetensors({k: np.zeros_like(v) for k, v in reference.items()}, template)
    out, rules = str(tmp_path / "vgg.safetensors"), str(tmp_path / "export.toml")
    r = CliRunner().invoke(main, ["export", path, "--format", "torch", "--like", template,
                                  "-o", out, "--write-rules", rules])
    assert r.exit_code == 0, r.output
    assert "\n  fc1 -> classifier.0  linear_to_torch (feature_shape [4, 4, 8])  only " \
           "candidate\n" in r.output
    assert r.output.splitlines()[-2:] == [
        f"wrote {out} (torch state dict, 32 tensors)",
        f"wrote {rules} (the inferred export rules: --rules {rules} repeats this export)"]
    with surgery.open_weights(out) as got:
        assert all(np.array_equal(got.read(k), v) for k, v in reference.items())
    assert "[[export]]\nsource = \"fc1/kernel\"\nname = \"linear_to_torch\"\ntarget = " \
           "\"classifier.0.weight\"\nfeature_shape = [4, 4, 8]\n" in open(rules).read()


# ------------------------------------------------------------------ bad inputs


def test_template_missing_a_key_is_refused_naming_the_layer(keras, ported, tmp_path):
    reference = torch_state(ported["vgg"][0], _VGG, tracked=0, export=True)
    del reference["classifier.3.bias"]
    template, out = str(tmp_path / "t.safetensors"), str(tmp_path / "out.safetensors")
    write_safetensors(reference, template)
    with pytest.raises(RulesError) as e:
        surgery.export_state_dict(ported["vgg"][0], out, like=template)
    assert str(e.value) == (
        f"{template}: no PyTorch module has the shapes Keras layer 'fc2' (Dense) needs (weight "
        "(10, 32), bias (10,)); modules left without a layer: classifier.3 (weight (10, 32)); "
        "make the two models agree, or cover it with --rules R.toml ([[rename]]/[[adapter]])")
    assert os.listdir(tmp_path) == ["t.safetensors"]


def _state_file(tmp_path, state):
    path = str(tmp_path / "state.safetensors")
    write_safetensors(state, path)
    return path


def test_a_shape_that_fits_nothing_is_refused(keras, ported, tmp_path):
    state = dict(ported["vgg"][1])
    state["features.3.weight"] = np.zeros((8, 8, 5, 5), "float32")
    path = _state_file(tmp_path, state)
    with pytest.raises(RulesError) as e:
        surgery.port_rules(path, _vgg(keras))
    assert str(e.value) == (
        f"{path}: Keras layers 'c2', 'c3', 'c4' (Conv2D) need 3 PyTorch modules with weight "
        "(8, 8, 3, 3), bias (8,), but there are 2 (features.7, features.11); modules left "
        "without a layer: features.3 (weight (8, 8, 5, 5), bias (8,)); make the two models "
        "agree, or cover it with --rules R.toml ([[rename]]/[[adapter]])")


def test_modules_left_over_and_unknown_keys_are_refused(keras, ported, tmp_path):
    state = dict(ported["vgg"][1])
    state.update({"aux.weight": np.zeros((3, 10), "float32"),
                  "aux.bias": np.zeros(3, "float32")})
    path = _state_file(tmp_path, state)
    with pytest.raises(RulesError) as e:
        surgery.port_rules(path, _vgg(keras))
    assert str(e.value) == (
        f"{path}: PyTorch modules with no Keras layer of their shapes: aux (weight (3, 10), "
        "bias (3,)); add those layers to the Keras model, or skip them with --rules R.toml "
        "(skip = [\"aux.*\"])")
    plan = surgery.port_rules(path, _vgg(keras), {"skip": ["aux.*"]})  # the settling rule
    assert plan.rules["skip"] == ["aux.*"] and len(plan.pairs) == 10
    state["pos_embedding"] = np.zeros((4, 8), "float32")
    path = _state_file(tmp_path, state)
    with pytest.raises(RulesError) as e:
        surgery.port_rules(path, _vgg(keras), {"skip": ["aux.*"]})
    assert str(e.value) == (
        f"{path}: pos_embedding: a role the port doesn't know (it pairs weight, bias, "
        "running_mean, running_var, num_batches_tracked and LSTM/GRU weight_ih_l<k>, "
        "weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>[_reverse]); cover them with --rules R.toml "
        "(a [[rename]], an [[adapter]] or skip = [...])")


def test_nested_subclassed_and_unportable_models_are_refused(keras, ported, tmp_path):
    L = keras.layers
    path = ported["vgg"][2]
    trunk = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")], name="trunk")
    inp = keras.Input((4,))
    nested = keras.Model(inp, L.Dense(2, name="head")(trunk(inp)), name="outer")
    with pytest.raises(UnsupportedModelError) as e:
        surgery.port_rules(path, nested)
    assert str(e.value) == (
        "outer: layer 'trunk' is a nested model (Sequential); a PyTorch port pairs flat "
        "Functional and Sequential models: flatten it, or write the rules by hand (--rules "
        "R.toml)")

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(UnsupportedModelError) as e:
        surgery.port_rules(path, sub)
    assert str(e.value) == (
        "sub: a subclassed model (Sub) has no layer graph to pair; a PyTorch port pairs flat "
        "Functional and Sequential models (or write the rules by hand: --rules R.toml)")
    gru = keras.Sequential([keras.Input((5, 3)), L.GRU(4, reset_after=False, name="enc")],
                           name="old_gru")
    state = _state_file(tmp_path, {"gru.weight_ih_l0": np.zeros((12, 3), "float32")})
    with pytest.raises(UnsupportedModelError) as e:
        surgery.port_rules(state, gru)
    assert str(e.value) == (
        "old_gru: layer 'enc' (GRU) has reset_after=False, but PyTorch's GRU computes "
        "reset_after=True; rebuild the Keras layer with reset_after=True")
    flat = keras.Sequential([keras.Input((8, 8, 3)), L.Permute((2, 1, 3)), L.Flatten(),
                             L.Dense(2, name="fc")], name="permuted")
    with pytest.raises(AmbiguousPort) as e:
        surgery.port_rules(state, flat)
    assert str(e.value).startswith(
        "permuted: Dense 'fc': the Flatten 'flatten")
    assert str(e.value).endswith(
        "reads a map that Permute 'permute' rearranged, so the row order of the PyTorch "
        "Linear it pairs with can't be derived; add --rules R.toml with [[adapter]] target = "
        "\"fc/kernel\", name = \"linear_from_torch\", source = \"<the Linear's weight>\" "
        "(with feature_shape = [height, width, channels] if PyTorch flattened an NCHW map)")
