"""Never lose a user's file (issue #22 §1): every path a command reads is an input and is never
written; outputs are regular files that appear complete or not at all; nothing the tool did not
create is deleted. Each case checks the exact error line, the exit code, that every file in the
folder is unchanged (sha256) and that no temporary file is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

import surgery
from cli import main
from surgery.io.atomic import atomic_path
from surgery.errors import OutputError
from tests.conftest import ROOT, leftovers, sha256


def _snapshot(folder) -> dict[str, str]:
    """Every entry under `folder`: its kind and, for regular files, its sha256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, folder)] = sha256(full)
            elif stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(full, folder)] = "link->" + os.readlink(full)
            else:
                out[os.path.relpath(full, folder)] = stat.filemode(st.st_mode)[0]
    return out


def _refused(args, folder, line: str, code: int = 2):
    before = _snapshot(folder)
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == code, r.output
    assert r.output == f"error: {line}\n", r.output
    assert _snapshot(folder) == before
    assert leftovers(str(folder)) == []


@pytest.fixture()
def proj(tmp_path, samples):
    """A user's project folder: a model, data, rules and an unrelated file."""
    import numpy as np

    shutil.copy(samples["cnn"], tmp_path / "cnn.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.uniform(0, 1, (8, 32, 32, 3)).astype("float32"),
             y=rng.integers(0, 8, 8))
    np.savez(tmp_path / "val.npz", x=rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32"),
             y=rng.integers(0, 8, 4))
    (tmp_path / "rules.toml").write_text('skip = ["head/*"]\n')
    (tmp_path / "notes.txt").write_text("precious\n")
    return tmp_path


# ---------------------------------------------------------------- special files and links
def test_special_files_and_links_are_never_replaced(proj):
    os.mkfifo(proj / "fifo")
    os.symlink("/proc/self/fd/1", proj / "stdout-link")
    os.symlink(proj / "notes.txt", proj / "notes-link")
    for name, kind in (("fifo", "a FIFO"), ("stdout-link", "a symbolic link"),
                       ("notes-link", "a symbolic link")):
        _refused(["freeze", proj / "cnn.keras", "-o", proj / name, "--except", "head",
                  "--overwrite"], proj,
                 f"{proj / name}: is {kind}; surgery writes only regular files (it never "
                 "replaces special files or links), so give another path")


def test_a_character_device_is_never_replaced(proj):
    try:
        os.mknod(proj / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("can't create a device node here")
    _refused(["reinit", proj / "cnn.keras", "-o", proj / "null", "--select", "head",
              "--overwrite"], proj,
             f"{proj / 'null'}: is a character device; surgery writes only regular files (it "
             "never replaces special files or links), so give another path")
    assert stat.S_ISCHR(os.lstat(proj / "null").st_mode)


def test_output_path_ending_in_a_separator(proj):
    _refused(["freeze", proj / "cnn.keras", "-o", f"{proj / 'new.keras'}/", "--except", "head"],
             proj, f"{proj / 'new.keras'}/: is not a file name (it ends with a separator); "
             "give a file path such as out.keras")


# ---------------------------------------------------------------- secondary inputs
def test_secondary_inputs_are_inputs_even_with_overwrite(proj):
    cnn = proj / "cnn.keras"
    _refused(["transplant", cnn, cnn, "-o", proj / "rules.toml", "--rules", proj / "rules.toml",
              "--overwrite"], proj,
             f"{proj / 'rules.toml'}: this is the input {proj / 'rules.toml'}; write the output "
             "to another path (surgery never writes over its input)")
    shutil.copy(cnn, proj / "arch.keras")
    _refused(["transplant", cnn, cnn, "-o", proj / "arch.keras", "--source-architecture",
              proj / "arch.keras", "--overwrite"], proj,
             f"{proj / 'arch.keras'}: this is the input {proj / 'arch.keras'}; write the output "
             "to another path (surgery never writes over its input)")
    _refused(["finetune", cnn, "--data", proj / "data.npz", "--val", proj / "val.npz", "-o",
              proj / "out.keras", "--metrics-out", proj / "val.npz", "--overwrite"], proj,
             f"{proj / 'val.npz'}: this is the input {proj / 'val.npz'}; write the output to "
             "another path (surgery never writes over its input)")


def test_output_inside_an_input_folder(proj):
    images = proj / "images"
    (images / "a").mkdir(parents=True)
    _refused(["finetune", proj / "cnn.keras", "--data", images, "-o", images / "out.keras"],
             proj, f"{images / 'out.keras'}: is inside the input folder {images}; write the "
                   "output elsewhere (surgery never writes into its inputs)")


def test_two_outputs_of_one_command_on_one_path(proj):
    _refused(["finetune", proj / "cnn.keras", "--data", proj / "data.npz", "-o",
              proj / "out.keras", "--metrics-out", proj / "out.keras"], proj,
             f"{proj / 'out.keras'}: is also the output {proj / 'out.keras'} of this command; "
             "give each output its own path")
    _refused(["finetune", proj / "cnn.keras", "--data", proj / "data.npz", "-o",
              proj / "out.keras", "--checkpoint", proj / "out.keras"], proj,
             f"{proj / 'out.keras'}: is also the output {proj / 'out.keras'} of this command; "
             "give each output its own path")


# ---------------------------------------------------------------- plans
def _plan(folder, output: dict) -> str:
    lines = ['[target]', 'model = "cnn.keras"', '[[step]]', 'op = "freeze"',
             'except = ["head"]', '[output]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in output.items()]
    (folder / "plan.toml").write_text("\n".join(lines) + "\n")
    return str(folder / "plan.toml")


@pytest.mark.parametrize("report, line", [
    ("plan.toml", "{p}/plan.toml: this is the input {p}/plan.toml; write the output to another "
                  "path (surgery never writes over its input)"),
    ("cnn.keras", "{p}/cnn.keras: this is the input {p}/cnn.keras; write the output to another "
                  "path (surgery never writes over its input)"),
    ("out.keras", "{p}/out.keras: is also the output {p}/out.keras of this command; give each "
                  "output its own path"),
    ("notes.txt", "{p}/notes.txt: already exists; pass --overwrite (overwrite=True) to replace "
                  "it"),
])
def test_plan_report_never_replaces_inputs_or_the_model(proj, report, line):
    plan = _plan(proj, {"model": "out.keras", "report": report})
    _refused(["apply", plan], proj, line.format(p=proj))


def test_plan_overwrite_is_per_plan_and_still_spares_inputs(proj):
    plan = _plan(proj, {"model": "out.keras", "report": "plan.toml", "overwrite": True})
    _refused(["apply", plan], proj, f"{proj}/plan.toml: this is the input {proj}/plan.toml; "
             "write the output to another path (surgery never writes over its input)")
    plan = _plan(proj, {"model": "out.keras", "report": "out.json"})
    r = CliRunner().invoke(main, ["apply", plan])
    assert r.exit_code == 0, r.output
    assert json.loads((proj / "out.json").read_text())["output"].endswith("out.keras")


# ---------------------------------------------------------------- export
def test_export_overwrite_never_deletes_a_folder_it_did_not_write(proj):
    holder = proj / "holder"
    holder.mkdir()
    shutil.copy(proj / "cnn.keras", holder / "cnn.keras")
    _refused(["export", holder / "cnn.keras", "-o", holder, "--overwrite"], proj,
             f"{holder}: is a folder surgery did not export (it holds cnn.keras); --overwrite "
             "replaces only an earlier export, so give another path")
    _refused(["export", proj / "cnn.keras", "-o", proj, "--overwrite"], proj,
             f"{proj}: is a folder surgery did not export (it holds cnn.keras, data.npz, "
             "holder ...); --overwrite replaces only an earlier export, so give another path")
    _refused(["export", proj / "cnn.keras", "-o", proj / "notes.txt", "--overwrite"], proj,
             f"{proj / 'notes.txt'}: is a file; give a folder path for the export")


@pytest.mark.slow
def test_export_replaces_an_earlier_export_only_with_overwrite(proj):
    out = proj / "hub"
    r = CliRunner().invoke(main, ["export", str(proj / "cnn.keras"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    _refused(["export", proj / "cnn.keras", "-o", out], proj,
             f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    r = CliRunner().invoke(main, ["export", str(proj / "cnn.keras"), "-o", str(out),
                                  "--overwrite"])
    assert r.exit_code == 0, r.output
    assert leftovers(str(proj)) == [] and (out / "saved_model.pb").exists()


# ---------------------------------------------------------------- recipes
def test_recipe_run_never_writes_over_its_input_or_an_existing_file(proj):
    _refused(["recipe", "run", "cnn-channels", "--model", proj / "cnn.keras", "-o",
              proj / "cnn.keras", "--overwrite"], proj,
             f"{proj / 'cnn.keras'}: this is the input {proj / 'cnn.keras'}; write the output "
             "to another path (surgery never writes over its input)")
    _refused(["recipe", "run", "cnn-channels", "-o", proj / "notes.txt"], proj,
             f"{proj / 'notes.txt'}: already exists; pass --overwrite (overwrite=True) to "
             "replace it")
    from surgery.recipes import REGISTRY
    shutil.copy(ROOT + "/sample_models/lstm.keras", proj / "other.keras")
    before = sha256(str(proj / "other.keras"))
    with pytest.raises(OutputError, match="other.keras: already exists"):
        REGISTRY["cnn-channels"].run(model=str(proj / "cnn.keras"),
                                     output=str(proj / "other.keras"))
    assert sha256(str(proj / "other.keras")) == before


# ---------------------------------------------------------------- atomic writes
def test_temporary_names_are_fresh_and_a_planted_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for suffix in ("0", "00000000", "deadbeef"):
        os.symlink(victim, tmp_path / f".out.keras.surgery-tmp-{os.getpid()}-{suffix}.keras")
    with atomic_path(tmp_path / "out.keras") as tmp:
        assert os.path.isfile(tmp) and not os.path.islink(tmp)
        with open(tmp, "w") as f:
            f.write("new")
    assert victim.read_text() == "keep me" and (tmp_path / "out.keras").read_text() == "new"


def test_second_writer_to_one_path_fails_without_overwrite(tmp_path):
    out = tmp_path / "out.keras"
    with pytest.raises(OutputError) as e:
        with atomic_path(out) as tmp:
            with open(tmp, "w") as f:
                f.write("second")
            out.write_text("first")  # another process published meanwhile
    assert str(e.value) == (f"{out}: already exists (another process wrote it meanwhile); pass "
                            "--overwrite (overwrite=True) to replace it")
    assert out.read_text() == "first" and leftovers(str(tmp_path)) == []


def test_two_concurrent_processes_one_wins(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from surgery.io.atomic import atomic_path
        from surgery.errors import OutputError
        try:
            with atomic_path({str(tmp_path / 'out.bin')!r}) as tmp:
                open(tmp, 'w').write(sys.argv[1])
                time.sleep(1.0)  # both have passed the existence check by now
        except OutputError as e:
            print('refused', e); sys.exit(2)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for tag in ("A", "B")]
    codes = sorted(p.wait(timeout=60) for p in procs)
    assert codes == [0, 2]
    assert (tmp_path / "out.bin").read_text() in ("A", "B") and leftovers(str(tmp_path)) == []


def test_sigterm_during_a_write_leaves_nothing(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from surgery.io.atomic import atomic_path
        with atomic_path({str(tmp_path / 'out.bin')!r}) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'x' * (32 << 20))
                print('writing', flush=True)
                time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    assert leftovers(str(tmp_path)) != []  # the temporary file is there while writing
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert p.returncode != 0
    assert os.listdir(tmp_path) == []


def test_cli_sigterm_is_an_interruption(tmp_path, samples):
    script = textwrap.dedent(f"""
        import time
        import surgery.model.saving as m
        real = m.atomic_path if hasattr(m, 'atomic_path') else None
        from surgery.io import atomic
        original = atomic._publish
        def slow(tmp, path, overwrite):
            print('publishing', flush=True)
            time.sleep(60)
        atomic._publish = slow
        from cli import main
        main(['freeze', {samples['cnn']!r}, '-o', {str(tmp_path / 'out.keras')!r},
              '--except', 'head'])
    """)
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "SURGERY_QUIET_TF": "1"})
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "publishing" not in line:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            break
    assert "publishing" in line, p.stderr.read()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err.endswith("error: interrupted; nothing was written\n"), err
    assert os.listdir(tmp_path) == []


def _tmpfs(folder, size: str):
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("can't mount a small tmpfs here (needs root)")


@pytest.fixture()
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    _tmpfs(folder, "64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_is_one_line_and_leaves_nothing(small_disk, samples):
    out = small_disk / "out.keras"
    _refused(["freeze", samples["cnn"], "-o", out, "--except", "head"], small_disk,
             f"{out}: Keras could not write the model (OSError: [Errno 28] No space left on "
             "device); nothing was written")
    with pytest.raises(OutputError) as e:
        with atomic_path(small_disk / "big.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * (200 << 10))
    assert str(e.value) == (f"{small_disk / 'big.bin'}: could not be written (No space left on "
                            "device); free some space; nothing was written")
    assert os.listdir(small_disk) == []


def test_read_only_filesystem(small_disk, samples):
    if subprocess.run(["mount", "-o", "remount,ro", str(small_disk)]).returncode != 0:
        pytest.skip("can't remount read-only here")
    try:
        _refused(["freeze", samples["cnn"], "-o", small_disk / "out.keras", "--except", "head"],
                 small_disk, f"{small_disk / 'out.keras'}: could not be written (Read-only file "
                 "system); write to a writable folder; nothing was written")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)])


def test_python_api_save_model_refuses_the_same_things(proj, samples):
    model = surgery.load_model(samples["cnn"])
    os.mkfifo(proj / "fifo.keras")
    with pytest.raises(OutputError, match="is a FIFO"):
        surgery.save_model(model, proj / "fifo.keras", overwrite=True)
    with pytest.raises(OutputError, match="this is the input"):
        surgery.save_model(model, samples["cnn"], overwrite=True)
    assert leftovers(str(proj)) == []


def test_finetune_keeps_its_checkpoint_when_the_final_write_fails(proj, monkeypatch):
    def fail(*args, **kwargs):
        raise OutputError(f"{proj / 'out.keras'}: could not be written (No space left on "
                          "device); free some space; nothing was written")

    monkeypatch.setattr(surgery, "save_model", fail)
    r = CliRunner().invoke(main, ["finetune", str(proj / "cnn.keras"), "--data",
                                  str(proj / "data.npz"), "-o", str(proj / "out.keras"),
                                  "--epochs", "1", "--quiet", "--train", "head"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "No space" in r.output
    ckpt = proj / "out.keras.ckpt"
    assert ckpt.is_dir() and (ckpt / "surgery-checkpoint.json").exists()  # training kept
    monkeypatch.undo()
    r = CliRunner().invoke(main, ["finetune", str(proj / "cnn.keras"), "--data",
                                  str(proj / "data.npz"), "-o", str(proj / "out.keras"),
                                  "--epochs", "1", "--quiet", "--train", "head", "--resume"])
    assert r.exit_code == 0, r.output
    assert (proj / "out.keras").exists() and not ckpt.exists()
    assert leftovers(str(proj)) == []
