"""A small mutation check: does the suite notice when the array and matching code is wrong?

`python -m tests.mutation` (part of `make test-slow`) mutates `surgery/reshape/*.py`,
`surgery/transfer/matching.py` and `surgery/transfer/adapters.py` one change at a time
(comparisons flipped, ``+``/``-`` swapped in index arithmetic, integer constants in slices and
``axis=`` moved by one, a boolean ``return`` negated, ``and``/``or`` swapped, a ``.T`` or a
``transpose`` dropped, two transpose axes swapped), runs the tests that execute the mutated
line against each mutant, and reports which mutants the tests killed.

How it works:
1. The working tree is copied to a temporary folder; the working tree is never written.
2. Baseline: the mapped test files run once in that copy with a line tracer limited to the
   target files, which records, per test, the lines it executes and how long it takes. Tests
   that fail on the unmutated code are left out (and listed).
3. Every mutation site inside a function, on a line some test executes, is a candidate; a
   seeded sample of ``SURGERY_MUTANTS`` (default 30) is drawn round-robin over the groups
   (reshape, matching, adapters) and, within each, over the functions.
4. Each mutant is written into the copy and the tests that executed its line run, fastest
   first, with ``-x`` and a timeout. On Linux each run is a fork of a process that has already
   imported TensorFlow (a run then costs its tests, not a 3-8 s import); ``--no-fork`` (or
   ``SURGERY_MUTATION_FORK=0``) starts a fresh ``python -m pytest`` instead.
5. A table, the mutation score (killed + timed out) / (killed + timed out + survived), and every
   survivor (file:line, the change) are printed. The exit status is 1 when the score is under
   ``SURGERY_MUTATION_MIN`` (default `MIN_SCORE`), 2 when the check itself could not run.
   Mutants read and found unable to change behaviour are listed in `EQUIVALENT` and skipped.

Options: ``--mutants N``, ``--seed S``, ``--min-score X``, ``--list`` (show the sample, run
nothing), ``--no-fork``, ``--only SUBSTRING`` (targets whose path contains it), ``--at
FILE:LINE`` (only that line's mutants; repeatable), ``--logs DIR`` (keep each run's output).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import gc
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import pytest

__all__ = ["Mutant", "Group", "Config", "Outcome", "Result", "generate_mutants", "apply_mutant",
           "sample_mutants", "is_equivalent", "run_mutation", "render", "exit_status", "main",
           "MIN_SCORE", "EQUIVALENT"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The check fails below this score. Set from what the suite achieved when the check was added:
# 0.97-1.0 on the default sample (seed 0, 30 mutants), 0.91-0.95 on other seeds with 60-90
# mutants before the tests those runs showed missing were added (tests/test_mutation_gaps.py).
MIN_SCORE = 0.9

# Mutants that can't change behaviour, found by reading them: (file, function, the start of
# the mutated line, before, after) -> why. They are left out of the sample; an entry stops
# matching (and the mutant comes back) as soon as its line changes.
EQUIVALENT = {
    ("surgery/transfer/adapters.py", "_resize", "lossy = mode == \"center\" and any(", "-2",
     "-1"): "zip() stops at the shorter side: the spatial axes are compared either way",
    ("surgery/transfer/adapters.py", "_both_sides", "return (src[0] if len(src) == 1", "0",
     "-1"): "taken only when the tuple has one entry",
    ("surgery/transfer/matching.py", "_Matching.unique_shapes", "self.used.add(same_s[0]", "0",
     "-1"): "taken only when same_s has one entry",
    ("surgery/transfer/matching.py", "_Matching.unique_shapes",
     "self.steps[t.path] = Step(t.path, Outcome.COPIED, (same_s[0]", "0", "-1"):
        "taken only when same_s has one entry",
    ("surgery/transfer/matching.py", "_layers", "sig = (members[0].layer_class", "0", "-1"):
        "every member is a variable of the same layer, so of the same class",
}

# Entries of the working tree that the temporary copy leaves out.
_SKIP_COPY = {".git", ".venv", ".hypothesis", ".pytest_cache", "__pycache__", "demo-out",
              "bench-out", "build", "dist", "tmp"}


# --------------------------------------------------------------------------------- mutants


@dataclass(frozen=True)
class Mutant:
    """One change to one file: bytes ``start:end`` of the source become ``replacement``.

    Attributes:
        path: the file, relative to the tree's root.
        line, end_line: the lines of the mutated expression.
        stmt_line: the first line of the statement holding it.
        function: the qualified name of the enclosing function.
        kind: the operator (``compare``, ``arith``, ``off-by-one``, ``axis``, ``return-not``,
            ``boolop``, ``drop-T``, ``drop-transpose``, ``swap-axes``).
        before, after: the expression before and after, as source text.
    """

    path: str
    line: int
    end_line: int
    stmt_line: int
    function: str
    kind: str
    before: str
    after: str
    start: int
    end: int
    replacement: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def change(self) -> str:
        return f"{_short(self.before)} -> {_short(self.after)}"

    @property
    def lines(self) -> tuple[int, ...]:
        """The lines of the mutated expression: a test that executes none of them (a branch
        of ``and``/``or`` it never reaches) can't notice the change."""
        return tuple(range(self.line, self.end_line + 1))


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
         ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
         ast.In: ast.NotIn, ast.NotIn: ast.In}
_BOOL_CALLS = {"isinstance", "all", "any", "bool", "callable", "hasattr", "issubclass"}
_INDEX_CALLS = {"range", "arange", "slice"}
_TRANSPOSE = {"transpose", "swapaxes", "moveaxis"}


def _int_value(node: ast.AST) -> int | None:
    """The value of an integer literal (``3`` or ``-3``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and
            isinstance(node.operand, ast.Constant) and type(node.operand.value) is int):
        return -node.operand.value
    return None


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_boolish(node: ast.AST) -> bool:
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return True
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return True
    return isinstance(node, ast.Call) and _call_name(node) in _BOOL_CALLS


class _Sites:
    """Walks a module and lists (node, kind, new expression text) for every mutation site."""

    def __init__(self, tree: ast.Module):
        self.found: list[tuple[ast.AST, str, str, str, int]] = []
        self._visit(tree, func=(), stmt=None, in_slice=False, in_index=False)

    def _add(self, node, kind, new_text, func, stmt):
        if func:
            self.found.append((node, kind, new_text, ".".join(func), stmt.lineno))

    def _visit(self, node, func, stmt, in_slice, in_index):
        if isinstance(node, ast.JoinedStr):
            return  # error messages: a change there is not a change of what the code does
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            func = func + (node.name,)
        if isinstance(node, ast.stmt):
            stmt = node
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                return  # docstring
        self._mutate(node, func, stmt, in_slice, in_index)
        for name, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                s = in_slice or (isinstance(node, ast.Subscript) and name == "slice")
                i = in_index or (isinstance(node, ast.Call) and name == "args" and
                                 _call_name(node) in _INDEX_CALLS)
                if isinstance(node, ast.Call) and name == "func":
                    s = i = False
                self._visit(child, func, stmt, s, i)

    def _mutate(self, node, func, stmt, in_slice, in_index):
        add = lambda kind, text: self._add(node, kind, text, func, stmt)  # noqa: E731
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in _FLIP:
                    ops = list(node.ops)
                    ops[k] = _FLIP[type(op)]()
                    add("compare", ast.unparse(ast.Compare(node.left, ops, node.comparators)))
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            add("boolop", ast.unparse(ast.BoolOp(other, node.values)))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            if in_slice or in_index or _int_value(node.left) is not None or \
                    _int_value(node.right) is not None:
                op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
                add("arith", ast.unparse(ast.BinOp(node.left, op, node.right)))
        elif isinstance(node, ast.Return) and node.value is not None and \
                _is_boolish(node.value):
            self._add(node.value, "return-not", f"not ({ast.unparse(node.value)})", func, stmt)
        elif isinstance(node, ast.Attribute) and node.attr == "T" and \
                isinstance(node.ctx, ast.Load):
            add("drop-T", ast.unparse(node.value))
        elif isinstance(node, ast.Call):
            self._mutate_call(node, add)
        if in_slice and _int_value(node) is not None and not (
                isinstance(node, ast.Constant) and getattr(node, "_negated", False)):
            v = _int_value(node)
            add("off-by-one", str(v + 1))
            add("off-by-one", str(v - 1))
        if isinstance(node, ast.UnaryOp) and _int_value(node) is not None:
            node.operand._negated = True  # the literal -n is one site, not two

    def _mutate_call(self, node: ast.Call, add) -> None:
        for kw in node.keywords:
            v = _int_value(kw.value) if kw.arg == "axis" else None
            if v is not None:
                for new in (v + 1, v - 1):
                    kws = [ast.keyword(k.arg, ast.Constant(new)) if k is kw else k
                           for k in node.keywords]
                    add("axis", ast.unparse(ast.Call(node.func, node.args, kws)))
        name = _call_name(node)
        if name not in _TRANSPOSE:
            return
        method = isinstance(node.func, ast.Attribute) and not (
            isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"))
        receiver = node.func.value if method else (node.args[0] if node.args else None)
        if receiver is not None:
            add("drop-transpose", ast.unparse(receiver))
        axes = node.args if method else node.args[1:]
        if len(axes) >= 2 and ast.unparse(axes[0]) != ast.unparse(axes[1]):
            args = list(node.args)
            a = 0 if method else 1
            args[a], args[a + 1] = args[a + 1], args[a]
            add("swap-axes", ast.unparse(ast.Call(node.func, args, node.keywords)))
            return
        for sub in (n for a in axes for n in ast.walk(a)):
            if isinstance(sub, ast.Tuple) and len(sub.elts) >= 2 and \
                    ast.unparse(sub.elts[0]) != ast.unparse(sub.elts[1]):
                elts = [sub.elts[1], sub.elts[0]] + sub.elts[2:]
                swapped = _rebuild(node, sub, ast.Tuple(elts, ast.Load()))
                add("swap-axes", ast.unparse(swapped))
                return


def _rebuild(node, old, new):
    """A copy of `node` with `old` (found by identity) replaced by `new`."""
    if node is old:
        return new
    if not isinstance(node, ast.AST):
        return node
    fields = {}
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            fields[name] = [_rebuild(v, old, new) for v in value]
        else:
            fields[name] = _rebuild(value, old, new)
    return type(node)(**fields)


def _byte_offsets(source: str) -> list[int]:
    """Byte offset of the start of each line (1-based index; AST columns are UTF-8 bytes)."""
    starts, total = [0, 0], 0
    for line in source.encode().splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def generate_mutants(source: str, path: str) -> list[Mutant]:
    """Every mutant of `source` (the text of the file `path`), in source order.

    Only code inside functions is mutated; docstrings and f-strings (error messages) are not.
    Each mutant compiles, and differs from the original in its syntax tree.
    """
    tree = ast.parse(source)
    original = ast.dump(tree)
    starts = _byte_offsets(source)
    data = source.encode()
    out, seen = [], set()
    for node, kind, new_text, func, stmt_line in _Sites(tree).found:
        start = starts[node.lineno] + node.col_offset
        end = starts[node.end_lineno] + node.end_col_offset
        before = data[start:end].decode()
        # parenthesised, with the original's line breaks inside, so line numbers don't move
        text = f"({new_text}{chr(10) * (node.end_lineno - node.lineno)})"
        mutated = (data[:start] + text.encode() + data[end:]).decode()
        try:
            new_tree = ast.parse(mutated)
        except SyntaxError:
            continue
        dump = ast.dump(new_tree)
        if dump == original or dump in seen:
            continue
        seen.add(dump)
        out.append(Mutant(path, node.lineno, node.end_lineno, stmt_line, func, kind, before,
                          new_text, start, end, text))
    return sorted(out, key=lambda m: (m.start, m.end, m.kind, m.after))


def is_equivalent(mutant: Mutant, source: str) -> bool:
    """Whether `mutant` is one of the `EQUIVALENT` entries."""
    line = source.splitlines()[mutant.line - 1].strip()
    return any(path == mutant.path and func == mutant.function and line.startswith(start) and
               (before, after) == (mutant.before, mutant.after)
               for path, func, start, before, after in EQUIVALENT)


def apply_mutant(source: str, mutant: Mutant) -> str:
    """`source` with `mutant` applied."""
    data = source.encode()
    return (data[:mutant.start] + mutant.replacement.encode() + data[mutant.end:]).decode()


def sample_mutants(mutants: Sequence[Mutant], n: int, seed: int, *,
                   group_of=lambda m: "") -> list[Mutant]:
    """A deterministic sample of `n` mutants: round-robin over groups, then over the
    functions of each group (in a seeded order), one mutant of each function at a time."""
    rng = random.Random(seed)
    groups: dict[str, dict[tuple[str, str], list[Mutant]]] = {}
    for m in mutants:
        groups.setdefault(group_of(m), {}).setdefault((m.path, m.function), []).append(m)
    queues = []
    for g in sorted(groups):
        funcs = sorted(groups[g])
        rng.shuffle(funcs)
        per_func = []
        for f in funcs:
            ms = list(groups[g][f])
            rng.shuffle(ms)
            per_func.append(ms)
        queues.append(_round_robin(per_func))
    picked: list[Mutant] = []
    for m in _round_robin(queues):
        if len(picked) >= n:
            break
        picked.append(m)
    return picked


def _round_robin(lists) -> list:
    iters = [iter(x) for x in lists]
    out = []
    while iters:
        alive = []
        for it in iters:
            for value in it:
                out.append(value)
                alive.append(it)
                break
        iters = alive
    return out


# --------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Group:
    """Target modules (globs relative to the root) and the test files that cover them."""

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS = (
    Group("reshape", ("surgery/reshape/*.py",),
          ("tests/test_reshape.py", "tests/test_roles.py", "tests/test_mutation_gaps.py")),
    Group("matching", ("surgery/transfer/matching.py",),
          ("tests/test_transplant.py", "tests/test_mutation_gaps.py")),
    Group("adapters", ("surgery/transfer/adapters.py",),
          ("tests/test_transplant.py", "tests/test_roles.py",
           "tests/bad_inputs/test_adapter_options.py", "tests/test_mutation_gaps.py")),
)
_NOT_TARGETS = ("*/__init__.py",)


@dataclass(frozen=True)
class Config:
    root: str = ROOT
    groups: tuple[Group, ...] = GROUPS
    mutants: int = 30
    seed: int = 0
    min_score: float = MIN_SCORE
    fork: bool = hasattr(os, "fork")
    marker: str = "not slow and not interop"
    preload: tuple[str, ...] = ("numpy", "tensorflow", "keras", "tf_keras", "hypothesis", "h5py",
                                "click")
    timeout_floor: float = 20.0
    timeout_factor: float = 4.0
    only: str = ""
    at: tuple[str, ...] = ()  # only mutants at these places ("spatial.py:102")
    packages: tuple[str, ...] = ()  # top-level names a fork child re-imports from the copy
    pytest_args: tuple[str, ...] = ()  # added to every pytest run
    logs: str = ""  # a folder to keep each run's pytest output in (NN-status.txt)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, error
    tests: int
    seconds: float
    by: str = ""  # the first test that failed


@dataclass
class Result:
    outcomes: list[Outcome]
    candidates: int
    covered: int
    excluded: list[str] = field(default_factory=list)  # tests failing on unmutated code
    baseline_seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def score(self) -> float:
        detected = self.count("killed") + self.count("timeout")
        scored = detected + self.count("survived")
        return detected / scored if scored else 0.0


def _targets(config: Config) -> dict[str, Group]:
    """Target file (relative) -> its group."""
    out: dict[str, Group] = {}
    for g in config.groups:
        for pattern in g.modules:
            for path in sorted(glob.glob(os.path.join(config.root, pattern))):
                rel = os.path.relpath(path, config.root)
                if any(fnmatch.fnmatch("/" + rel, p) for p in _NOT_TARGETS):
                    continue
                if config.only and config.only not in rel:
                    continue
                out.setdefault(rel, g)
    return out


def _copy_tree(root: str, dest: str) -> None:
    ignore = shutil.ignore_patterns(*_SKIP_COPY, "*.pyc", "*.egg-info")
    for name in sorted(os.listdir(root)):
        if name in _SKIP_COPY or name.endswith(".egg-info"):
            continue
        src, dst = os.path.join(root, name), os.path.join(dest, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, ignore=ignore, symlinks=True)
        elif os.path.isfile(src):
            shutil.copy2(src, dst)


def _packages(root: str) -> tuple[str, ...]:
    names = []
    for name in os.listdir(root):
        if name.endswith(".py"):
            names.append(name[:-3])
        elif os.path.isfile(os.path.join(root, name, "__init__.py")):
            names.append(name)
    return tuple(sorted(names))


class _Tracer:
    """pytest plugin: per test, the lines of the target files it executes, its duration and
    whether it passed. Written as JSON to `out` when the session ends."""

    def __init__(self, files: dict[str, str], out: str):
        self.spec = dict(files)
        self.files = {os.path.realpath(p): rel for p, rel in files.items()}
        self.out = out
        self.tests: dict[str, dict] = {}
        self._known: dict[str, str | None] = {}
        self._lines: set = set()

    def _global(self, frame, event, arg):
        fn = frame.f_code.co_filename
        rel = self._known.get(fn, 0)
        if rel == 0:
            rel = self._known[fn] = self.files.get(os.path.realpath(fn))
        if rel is None:
            return None
        lines = self._lines

        def local(frame, event, arg):
            if event == "line":
                lines.add((rel, frame.f_lineno))
            return local
        lines.add((rel, frame.f_lineno))
        return local

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self._lines = set()
        self.tests[item.nodeid] = {"passed": True, "seconds": 0.0, "lines": []}
        t0 = time.perf_counter()
        sys.settrace(self._global)
        threading.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(None)
            threading.settrace(None)
            rec = self.tests[item.nodeid]
            rec["seconds"] = time.perf_counter() - t0
            rec["lines"] = sorted(self._lines)

    def pytest_runtest_logreport(self, report):
        rec = self.tests.get(report.nodeid)
        if rec is not None and (report.failed or report.skipped):
            rec["passed"] = False

    def pytest_sessionfinish(self, session):
        with open(self.out, "w") as f:
            json.dump(self.tests, f)


def pytest_configure(config):
    """Plugin hook (``-p tests.mutation`` in a fresh interpreter, ``--no-fork``): registers
    the baseline's tracer described by ``SURGERY_MUTATION_TRACE``."""
    spec = os.environ.get("SURGERY_MUTATION_TRACE")
    if spec:
        s = json.loads(spec)
        config.pluginmanager.register(_Tracer(s["files"], s["out"]), "surgery-mutation-trace")


class _Runner:
    """Runs pytest in the copied tree: a fork of this process (modules preloaded) or a fresh
    interpreter."""

    def __init__(self, config: Config, work: str):
        self.config, self.work = config, work
        self.log = os.path.join(work, ".mutation-log.txt")
        self.packages = config.packages or _packages(work)
        if config.fork:
            for name in config.preload:
                try:
                    __import__(name)
                except ImportError:
                    pass

    def run(self, args: list[str], timeout: float, plugins=()) -> tuple[int | None, str]:
        """(pytest's exit status or None on timeout, its output)."""
        sys.stdout.flush()
        sys.stderr.flush()
        # no Hypothesis database carried over: a failure found under one mutant would be
        # replayed under the next
        shutil.rmtree(os.path.join(self.work, ".hypothesis"), ignore_errors=True)
        args = [*args, *self.config.pytest_args]
        if self.config.fork:
            rc = self._fork(args, timeout, plugins)
        else:
            rc = self._spawn(args, timeout, plugins)
        with open(self.log, errors="replace") as f:
            return rc, f.read()

    def _fork(self, args, timeout, plugins) -> int | None:
        # What is loaded now (TensorFlow: a large heap) stays out of the child's collections:
        # pytest's gc.collect() at exit would otherwise cost ~2 s per run.
        gc.freeze()
        pid = os.fork()
        if pid:
            gc.unfreeze()
        if pid == 0:  # child: never returns
            code = 3
            this = sys.modules[__name__]  # before the purge below, which may remove it
            try:
                os.setpgid(0, 0)
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                os.chdir(self.work)
                for name in list(sys.modules):
                    if name.split(".")[0] in self.packages:
                        del sys.modules[name]
                sys.path.insert(0, self.work)
                # processes the tests start (the `surgery` script) import the mutant too
                os.environ["PYTHONPATH"] = os.pathsep.join(
                    p for p in (self.work, os.environ.get("PYTHONPATH", "")) if p)
                code = int(pytest.main(args, plugins=[this, *plugins]))
            except BaseException:  # noqa: BLE001 - report anything, then leave
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        return self._wait(pid, timeout)

    @staticmethod
    def _wait(pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                return None
            time.sleep(0.05)

    def _spawn(self, args, timeout, plugins) -> int | None:
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self.work, here, env.get("PYTHONPATH", "")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("SURGERY_MUTATION_TRACE", None)
        for p in plugins:  # the tracer travels as a JSON spec read by pytest_configure
            env["SURGERY_MUTATION_TRACE"] = json.dumps({"files": p.spec, "out": p.out})
        cmd = [sys.executable, "-m", "pytest", "-p", "tests.mutation", *args]
        with open(self.log, "w") as log:
            proc = subprocess.Popen(cmd, cwd=self.work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ", 1)[0]
    return ""


def _pyc_clear(path: str) -> None:
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    for pyc in glob.glob(os.path.join(folder, "__pycache__", f"{stem}.*.pyc")):
        os.remove(pyc)


def run_mutation(config: Config, *, list_only: bool = False, log=print) -> Result:
    """Runs the whole check on a temporary copy of `config.root`; returns the `Result`."""
    targets = _targets(config)
    if not targets:
        raise SystemExit(f"mutation: no target files under {config.root}")
    sources = {}
    for rel in targets:
        with open(os.path.join(config.root, rel), encoding="utf-8") as f:
            sources[rel] = f.read()
    everything = [m for rel in targets for m in generate_mutants(sources[rel], rel)]
    equivalent = [m for m in everything if is_equivalent(m, sources[m.path])]
    everything = [m for m in everything if m not in equivalent]
    work = tempfile.mkdtemp(prefix="surgery-mutation-")
    try:
        _copy_tree(config.root, work)
        runner = _Runner(config, work)
        test_files = sorted({t for g in {id(g): g for g in targets.values()}.values()
                             for t in g.tests})
        trace_out = os.path.join(work, ".mutation-trace.json")
        tracer = _Tracer({os.path.join(work, rel): rel for rel in targets}, trace_out)
        t0 = time.perf_counter()
        args = [*test_files, "-q", "-p", "no:cacheprovider", "-rfE"]
        if config.marker:
            args += ["-m", config.marker]
        rc, output = runner.run(args, 1800, plugins=[tracer])
        baseline_seconds = time.perf_counter() - t0
        if not os.path.exists(trace_out):
            raise SystemExit(f"mutation: the baseline run recorded nothing (exit {rc}); its "
                             f"output ends:\n{output[-3000:]}")
        with open(trace_out) as f:
            tests = json.load(f)
        excluded = sorted(t for t, r in tests.items() if not r["passed"])
        covered_by: dict[tuple[str, int], list[str]] = {}
        traced = {(rel, line) for rec in tests.values() for rel, line in rec["lines"]}
        for nodeid, rec in tests.items():
            if rec["passed"]:
                for rel, line in rec["lines"]:
                    covered_by.setdefault((rel, line), []).append(nodeid)

        def selected(m: Mutant) -> list[str]:
            """The tests of the mutant's group that execute its lines, fastest first (its
            statement's first line where no test reports the expression's own lines)."""
            files = targets[m.path].tests
            lines = m.lines if any((m.path, n) in traced for n in m.lines) else (m.stmt_line,)
            ids = {t for n in lines for t in covered_by.get((m.path, n), ())
                   if t.split("::")[0] in files}
            return sorted(ids, key=lambda t: (tests[t]["seconds"], t))

        covered = [m for m in everything if selected(m)]
        if config.at:
            covered = [m for m in covered
                       if any(m.where == a or m.where.endswith("/" + a) for a in config.at)]
        picked = sample_mutants(covered, config.mutants, config.seed,
                                group_of=lambda m: targets[m.path].name)
        result = Result([], len(everything), len(covered), excluded, baseline_seconds)
        log(f"mutation: {len(everything)} mutants in {len(targets)} files ({len(equivalent)} "
            f"more known to be equivalent), {len(covered)} on lines the tests execute; running "
            f"{len(picked)} (seed {config.seed}); baseline {len(tests)} tests in "
            f"{baseline_seconds:.0f} s")
        for t in excluded:
            log(f"  left out (fails or skips without any mutant): {t}")
        if list_only:
            for m in picked:
                log(f"  {m.where:<40} {m.function:<28} {m.kind:<14} {m.change}")
            result.outcomes = [Outcome(m, "listed", len(selected(m)), 0.0) for m in picked]
            return result
        for k, m in enumerate(picked, 1):
            ids = selected(m)
            budget = sum(tests[t]["seconds"] for t in ids)
            timeout = config.timeout_floor + config.timeout_factor * budget
            path = os.path.join(work, m.path)
            with open(path, "w", encoding="utf-8") as f:
                f.write(apply_mutant(sources[m.path], m))
            _pyc_clear(path)
            t1 = time.perf_counter()
            try:
                rc, output = runner.run([*ids, "-x", "-q", "-p", "no:cacheprovider", "-rfE"],
                                        timeout)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(sources[m.path])
                _pyc_clear(path)
            seconds = time.perf_counter() - t1
            status = ("timeout" if rc is None else "survived" if rc == 0 else
                      "killed" if rc in (1, 2) else "error")
            o = Outcome(m, status, len(ids), seconds, _first_failure(output))
            if config.logs:
                os.makedirs(config.logs, exist_ok=True)
                with open(os.path.join(config.logs, f"{k:02d}-{status}.txt"), "w") as f:
                    f.write(f"{m.where} {m.kind} {m.change}\n{' '.join(ids)}\n\n{output}")
            result.outcomes.append(o)
            log(f"  [{k:>2}/{len(picked)}] {status:<8} {m.where:<40} {m.kind:<14} "
                f"{m.change}  ({len(ids)} tests, {seconds:.1f} s)")
            if status == "error":
                log("    " + output[-1500:].replace("\n", "\n    "))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(result: Result, config: Config) -> str:
    """The summary table, the score and the survivors."""
    rows = []
    by_group: dict[str, list[Outcome]] = {}
    targets = _targets(config)
    for o in result.outcomes:
        by_group.setdefault(targets[o.mutant.path].name if o.mutant.path in targets else "?",
                            []).append(o)
    rows.append(f"{'group':<10} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} "
                f"{'error':>5}")
    for name, outs in sorted(by_group.items()):
        c = lambda s: sum(o.status == s for o in outs)  # noqa: E731
        rows.append(f"{name:<10} {len(outs):>7} {c('killed'):>7} {c('timeout'):>7} "
                    f"{c('survived'):>8} {c('error'):>5}")
    rows.append(f"mutation score {result.score:.2f} (killed + timed out over killed + timed out "
                f"+ survived; threshold {config.min_score:.2f})")
    survivors = [o for o in result.outcomes if o.status == "survived"]
    if survivors:
        rows.append("surviving mutants (the tests that run the line still pass):")
        for o in survivors:
            m = o.mutant
            rows.append(f"  {m.where} in {m.function}: {m.kind}: {m.change}")
    for o in result.outcomes:
        if o.status == "error":
            rows.append(f"  error (not scored): {o.mutant.where}: {o.mutant.change}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mutants", type=int, default=int(env.get("SURGERY_MUTANTS", 30)))
    p.add_argument("--seed", type=int, default=int(env.get("SURGERY_MUTATION_SEED", 0)))
    p.add_argument("--min-score", type=float,
                   default=float(env.get("SURGERY_MUTATION_MIN", MIN_SCORE)))
    p.add_argument("--only", default="", help="only targets whose path contains this")
    p.add_argument("--at", action="append", default=[], metavar="FILE:LINE",
                   help="only mutants on this line (repeatable), e.g. spatial.py:102")
    p.add_argument("--list", action="store_true", help="show the sample; run no mutant")
    p.add_argument("--logs", default="", metavar="DIR",
                   help="keep each mutant's pytest output in DIR")
    p.add_argument("--no-fork", action="store_true",
                   default=env.get("SURGERY_MUTATION_FORK", "1") == "0",
                   help="a fresh interpreter per run instead of a fork")
    a = p.parse_args(argv)
    config = Config(mutants=a.mutants, seed=a.seed, min_score=a.min_score, only=a.only,
                    at=tuple(a.at), fork=Config.fork and not a.no_fork, logs=a.logs)
    t0 = time.perf_counter()
    result = run_mutation(config, list_only=a.list)
    if a.list:
        return 0
    print(render(result, config))
    print(f"mutation check took {time.perf_counter() - t0:.0f} s")
    return exit_status(result, config.min_score)


def exit_status(result: Result, min_score: float) -> int:
    """0: score at or above `min_score`; 1: under it; 2: no mutant could be scored."""
    scored = sum(o.status in ("killed", "timeout", "survived") for o in result.outcomes)
    if not scored:
        print("mutation: no mutant could be scored")
        return 2
    return 0 if result.score >= min_score else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
