"""load_model / save_model / open_weights: round trips and every bad input of the foundation
issue (exact error line, nothing written, input untouched)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import surgery
from surgery.errors import FormatError, InputError, OutputError, ShapeError, UnsafeModelError
from tests.conftest import leftovers, sha256



def _weights_equal(a, b):
    d = surgery.diff(a, b)
    assert d.identical, str(d)


@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_keras_round_trip_is_bit_identical(samples, tmp_path, name):
    model = surgery.load_model(samples[name])
    out = surgery.save_model(model, tmp_path / f"{name}.keras")
    _weights_equal(samples[name], out)
    _weights_equal(model, out)


def test_legacy_h5_round_trip(samples, tmp_path):
    model = surgery.load_model(samples["keras2_mlp"])
    assert type(model).__module__.startswith("keras")  # rebuilt as Keras 3
    _weights_equal(samples["keras2_mlp"], model)
    out = surgery.save_model(model, tmp_path / "mlp.keras")
    _weights_equal(samples["keras2_mlp"], out)
    legacy = surgery.load_model(samples["keras2_mlp"], legacy=True)
    assert type(legacy).__module__.startswith("tf_keras")
    out2 = surgery.save_model(legacy, tmp_path / "mlp2.h5")
    _weights_equal(samples["keras2_mlp"], out2)


def test_weights_h5_round_trip(samples, tmp_path):
    model = surgery.load_model(samples["cnn"])
    out = surgery.save_model(model, tmp_path / "cnn.weights.h5")
    _weights_equal(model, surgery.open_weights(out, architecture=samples["cnn"]))


def test_live_models_pass_through(keras):
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert surgery.load_model(m) is m


def test_savedmodel_refused_with_pointer(samples):
    with pytest.raises(InputError) as e:
        surgery.load_model(samples["hub_module"])
    assert str(e.value) == (f"{samples['hub_module']}: a SavedModel directory, which Keras 3 "
                            "can't load as a model; read its variables with "
                            "surgery.open_weights(path), or call it as a layer with "
                            "surgery.hub_layer(path)")


def test_savedmodel_variables_read_without_running(samples):
    with surgery.open_weights(samples["hub_module"]) as w:
        assert list(w) == ["l1/kernel", "l1/bias", "l2/kernel", "l2/bias"]  # module's order
        assert w.shape("l1/kernel") == (16, 32)
        assert w.read("l2/bias").dtype == np.float32


def test_keras_export_lists_each_variable_once(keras, tmp_path):
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    m.export(str(tmp_path / "exp"), verbose=False)
    with surgery.open_weights(str(tmp_path / "exp")) as w:
        assert list(w) == ["variables/0", "variables/1"]
        np.testing.assert_array_equal(w["variables/0"], m.get_layer("fc").get_weights()[0])


def test_npz_source(tmp_path):
    np.savez(tmp_path / "w.npz", **{"conv1.weight": np.ones((2, 3), np.float32)})
    with surgery.open_weights(str(tmp_path / "w.npz")) as w:
        assert list(w) == ["conv1.weight"] and w.shape("conv1.weight") == (2, 3)
        np.testing.assert_array_equal(w["conv1.weight"], np.ones((2, 3)))


def test_npz_with_pickles_refused(tmp_path):
    np.savez(tmp_path / "p.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="holds Python objects"):
        surgery.open_weights(str(tmp_path / "p.npz"))


# ------------------------------------------------------------------------ bad inputs


def _expect(exc, message, fn, *args, **kw):
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.keras")
    _expect(InputError, f"{p}: no such file or directory", surgery.load_model, p)
    _expect(InputError, f"{p}: no such file or directory", surgery.inspect, p)


def test_directory_that_is_not_a_savedmodel(tmp_path):
    _expect(InputError, f"{tmp_path}: a directory that is not a SavedModel (no saved_model.pb); "
            "pass a model file, or the SavedModel's top directory", surgery.load_model,
            str(tmp_path))


@pytest.mark.parametrize("content,message", [
    (b"hello, I am text\n", "{p}: format not recognised (not a .keras/.h5/.weights.h5/"
     ".weights.json/.npz/.safetensors file, SavedModel directory or TF checkpoint)"),
    (b"", "{p}: empty file, not a model or weights file"),
])
def test_file_that_is_not_a_model(tmp_path, content, message):
    p = tmp_path / "m.bin"
    p.write_bytes(content)
    _expect(FormatError, message.format(p=p), surgery.load_model, str(p))


def test_zip_without_config(tmp_path):
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    _expect(FormatError, f"{p}: zip without config.json, so not a Keras model archive; pass a "
            ".keras file written by model.save()", surgery.load_model, str(p))


def test_truncated_keras(samples, tmp_path):
    data = open(samples["cnn"], "rb").read()
    p = tmp_path / "cut.keras"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as e:
        surgery.load_model(str(p))
    assert str(e.value).startswith(f"{p}: truncated or damaged Keras archive")
    with pytest.raises(FormatError):
        surgery.inspect(str(p))


def _lambda_model(keras, tmp_path):
    inp = keras.Input((3,))
    out = keras.layers.Lambda(lambda t: t * 2, name="double")(inp)
    p = tmp_path / "lam.keras"
    keras.Model(inp, out).save(p)
    return p


def test_lambda_refused_in_safe_mode(keras, tmp_path):
    p = _lambda_model(keras, tmp_path)
    before = sha256(str(p))
    _expect(UnsafeModelError, f"{p}: layer 'double' is a Lambda layer, which runs code stored "
            "in the file; safe mode refuses it; load it with safe_mode=False (CLI: --unsafe) "
            "only if you trust the file", surgery.load_model, str(p))
    assert sha256(str(p)) == before
    model = surgery.load_model(str(p), safe_mode=False)
    np.testing.assert_allclose(model.predict(np.ones((1, 3)), verbose=0), 2.0)


def test_module_outside_keras_refused(samples, tmp_path):
    import json
    src = zipfile.ZipFile(samples["lstm"])
    config = json.loads(src.read("config.json"))
    config["config"]["layers"][1]["module"] = "os"
    p = tmp_path / "evil.keras"
    with zipfile.ZipFile(p, "w") as z:
        for name in src.namelist():
            z.writestr(name, json.dumps(config) if name == "config.json" else src.read(name))
    _expect(UnsafeModelError, f"{p}: layer 'embed' names module 'os', outside Keras; safe mode "
            "refuses it; load it with safe_mode=False (CLI: --unsafe) only if you trust the "
            "file", surgery.load_model, str(p))


def test_weights_not_matching_architecture(keras, samples, tmp_path):
    other = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3,
                              name="block1_conv")])
    other.save_weights(tmp_path / "w.weights.h5")
    _expect(FormatError, f"{tmp_path / 'w.weights.h5'}: no weights stored for layer 'block1_bn' "
            "of the architecture; the weights belong to another model", surgery.open_weights,
            str(tmp_path / "w.weights.h5"), architecture=samples["cnn"])


def test_weights_with_other_shapes(keras, tmp_path):
    def build(units):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="fc")])
    build(3).save(tmp_path / "arch.keras")
    build(5).save_weights(tmp_path / "w.weights.h5")
    _expect(ShapeError, f"{tmp_path / 'w.weights.h5'}: fc/kernel has shape (4, 5) but the "
            f"architecture {tmp_path / 'arch.keras'} has (4, 3); these weights belong to "
            "another model", surgery.open_weights, str(tmp_path / "w.weights.h5"),
            architecture=str(tmp_path / "arch.keras"))


def test_output_equal_to_input(samples, tmp_path):
    src = tmp_path / "m.keras"
    src.write_bytes(open(samples["lstm"], "rb").read())
    before = sha256(str(src))
    model = surgery.load_model(str(src))
    msg = (f"{src}: this is the input {os.path.realpath(src)}; write the output to another "
           "path (surgery never writes over its input)")
    _expect(OutputError, msg, surgery.save_model, model, str(src), overwrite=True)
    link = tmp_path / "link.keras"
    os.symlink(src, link)
    with pytest.raises(OutputError, match="this is the input"):
        surgery.save_model(model, str(link), overwrite=True)
    hard = tmp_path / "hard.keras"
    os.link(src, hard)
    with pytest.raises(OutputError, match="this is the input"):
        surgery.save_model(model, str(hard), overwrite=True)
    assert sha256(str(src)) == before and leftovers(str(tmp_path)) == []


def test_output_exists_without_overwrite(samples, tmp_path):
    model = surgery.load_model(samples["lstm"])
    out = tmp_path / "out.keras"
    out.write_bytes(b"precious")
    _expect(OutputError, f"{out}: already exists; pass --overwrite (overwrite=True) to replace "
            "it", surgery.save_model, model, str(out))
    assert out.read_bytes() == b"precious" and leftovers(str(tmp_path)) == []
    surgery.save_model(model, str(out), overwrite=True)
    _weights_equal(model, str(out))


def test_output_folder_missing_or_through_a_file(samples, tmp_path):
    model = surgery.load_model(samples["lstm"])
    missing = tmp_path / "no" / "such" / "m.keras"
    _expect(OutputError, f"{missing}: the folder {tmp_path / 'no' / 'such'} does not exist; "
            "create it first", surgery.save_model, model, str(missing))
    (tmp_path / "afile").write_text("x")
    through = tmp_path / "afile" / "m.keras"
    _expect(OutputError, f"{through}: {tmp_path / 'afile'} is a file, not a folder; choose an "
            "output path inside a folder", surgery.save_model, model, str(through))


def test_failed_save_leaves_nothing(samples, tmp_path, monkeypatch):
    model = surgery.load_model(samples["lstm"])

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(model), "save", boom)
    out = tmp_path / "o.keras"
    with pytest.raises(OutputError, match="Keras could not write the model"):
        surgery.save_model(model, str(out))
    assert not out.exists() and leftovers(str(tmp_path)) == []


def test_stale_temp_file_of_killed_process_is_cleaned(samples, tmp_path):
    model = surgery.load_model(samples["lstm"])
    stale = tmp_path / ".o.keras.surgery-tmp-999999-deadbeef.keras"
    stale.write_bytes(b"partial")
    surgery.save_model(model, str(tmp_path / "o.keras"))
    assert not stale.exists() and leftovers(str(tmp_path)) == []


def test_safetensors_writer_keeps_scalars_scalar(tmp_path):
    """PyTorch's BatchNorm `num_batches_tracked` is a 0-d tensor: it must stay shape ()."""
    import json
    import struct

    from surgery.io.safetensors import write_safetensors

    path = str(tmp_path / "s.safetensors")
    write_safetensors({"bn.num_batches_tracked": np.array(7, np.int64),
                       "bn.weight": np.ones(3, np.float32)}, path)
    with open(path, "rb") as f:  # the header as the safetensors spec lays it out
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    assert header["bn.num_batches_tracked"]["shape"] == []
    assert header["bn.num_batches_tracked"]["data_offsets"][1] - \
        header["bn.num_batches_tracked"]["data_offsets"][0] == 8
    with surgery.open_weights(path) as src:
        value = src.read("bn.num_batches_tracked")
    assert value.shape == () and value == 7
