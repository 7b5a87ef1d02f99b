"""The shape of the code: no import cycle, every module importable on its own, small modules,
a short ``compress``, typed rule verbs."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fxprune
import fxprune.api
from fxprune.ops import table
from fxprune.ops.base import Rule

ROOT = Path(fxprune.__file__).parent
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _runtime_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """fxprune modules ``name`` imports when it runs (anywhere in it, functions included;
    ``if TYPE_CHECKING:`` blocks left out), each with its parent packages."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", "")) == \
                "TYPE_CHECKING":
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules and "." in t:
                t = t.rpartition(".")[0]
            if t in modules and t != name:
                parts = t.split(".")
                found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {m for m in found if m in modules and not name.startswith(m + ".") and m != name}


def test_no_import_cycle():
    modules = _modules()
    edges = {m: _runtime_imports(m, p, modules) for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    assert _runtime_imports("pkg.a", pkg / "a.py", modules) == {"pkg.b"}
    assert _runtime_imports("pkg.b", pkg / "b.py", modules) == {"pkg.a"}


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """One interpreter loads the third-party libraries once, then forks a child per module
    (two at a time): each child starts with no fxprune module loaded and imports just that
    one."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    script = textwrap.dedent("""
        import importlib, os, sys, traceback
        import numpy, torch, torchvision  # noqa: F401 - shared, not under test
        failed, running = [], {}

        def reap():
            pid, status = os.wait()
            if status != 0:
                failed.append(running[pid])
            del running[pid]

        for name in sys.argv[1:]:
            if len(running) == 2:
                reap()
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            running[pid] = name
        while running:
            reap()
        print("FAILED", failed)
        sys.exit(1 if failed else 0)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script, *names], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "FAILED []" in out.stdout


def test_modules_are_small():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_compress_body_is_short():
    """Signature and docstring aside, compress only builds the options and runs them."""
    source = textwrap.dedent(inspect.getsource(fxprune.api.compress))
    fn = ast.parse(source).body[0]
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) else fn.body
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 40, lines
    signature = fn.body[0].lineno - fn.lineno  # def line to the docstring
    assert signature + lines <= 80


def test_every_rule_declares_typed_verbs():
    rules = {type(r) for r in list(table.MODULE_RULES.values()) + list(
        table.FUNCTION_RULES.values()) + list(table.METHOD_RULES.values())}
    for cls in rules | {Rule}:
        for verb in ("analyze", "rewrite"):
            fn = getattr(cls, verb)
            hints = fn.__annotations__
            assert set(hints) >= {"node", "return"}, (cls, verb)
            assert ("ctx" if verb == "analyze" else "rctx") in hints, (cls, verb)
        assert isinstance(cls.channelwise, bool) and isinstance(cls.fallback, bool)
