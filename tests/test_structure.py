"""The package's structure, read from its import statements (top-level and inside functions alike):
no import circle, and every module imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import mgd_rt
from mgd_rt.artifacts import atomic_write, write_atomic

PACKAGE = Path(mgd_rt.__file__).resolve().parent

# bottom to top; a module may import from its own layer and those below it, never above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("mgd_rt.contract", "mgd_rt.artifacts", "mgd_rt.numerics", "mgd_rt.errors", "mgd_rt.machine",
                    "mgd_rt.version")),
    ("model", ("mgd_rt.model", "mgd_rt.checkpoint", "mgd_rt.smoke")),
    ("runtime", ("mgd_rt.runtime",)),
    ("export", ("mgd_rt.export",)),
    ("calibration", ("mgd_rt.calibration",)),
    ("engine", ("mgd_rt.engine",)),
    ("applications", ("mgd_rt.bench", "mgd_rt.evaluate", "mgd_rt.demo", "mgd_rt.serve", "mgd_rt.ray",
                      "mgd_rt.app")),
    ("cli", ("mgd_rt.cli",)),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The mgd_rt modules ``path`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mgd_rt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mgd_rt") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_every_module_has_a_layer():
    # mgd_rt/__init__.py is the public face above every layer (lazy load_model, Segmenter, evaluate)
    assert [m for m in _graph() if m != "mgd_rt" and _layer(m) is None] == []


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_layers_import_only_downwards():
    upward = [f"{m} -> {d}" for m, deps in _graph().items() if m != "mgd_rt"
              for d in deps if d != "mgd_rt" and _layer(d) > _layer(m)]
    assert upward == []


def test_runtime_needs_no_producing_stage():
    graph = _graph()
    producers = ("mgd_rt.export", "mgd_rt.calibration", "mgd_rt.engine")
    found = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith("mgd_rt.runtime")
                   for d in deps if d.startswith(producers))
    assert found == []
    assert any(m.startswith("mgd_rt.runtime.backends") for m in graph)  # the walk did see the runtime


def test_the_rules_catch_an_upward_import(tmp_path, monkeypatch):
    # the checks above must be able to fail: a runtime module importing the engine builder is caught
    modules = _modules()
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mgd_rt.engine.cache import cached_engine\n")
    assert _imports(bad, modules) == {"mgd_rt.engine.cache"}
    assert _layer("mgd_rt.engine.cache") > _layer("mgd_rt.runtime.segmenter")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_gives_the_umask_permissions(tmp_path, umask_022):
    path = write_atomic(tmp_path / "out.json", "{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    assert stat.S_IMODE(write_atomic(tmp_path / "private.bin", b"x").stat().st_mode) == 0o600


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.txt") as tmp:
        raise RuntimeError("before writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_infer_outputs_and_exports_are_readable_by_others(tmp_path, tiny_onnx_copy, umask_022):
    """Every file mgd-rt infer writes (and the exported graph) gets the umask's mode, not mkstemp's 0600."""
    from onnx import TensorProto, helper
    from PIL import Image

    from mgd_rt.cli import main
    from mgd_rt.export import save_graph

    identity = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert save_graph(helper.make_model(identity), tmp_path / "g.onnx") > 0
    assert stat.S_IMODE((tmp_path / "g.onnx").stat().st_mode) == 0o644
    graph = tiny_onnx_copy(256)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(photos / "a.png")
    for fmt in ("matte", "rgba", "overlay"):
        assert main(["-q", "infer", str(graph), str(photos), "-o", str(tmp_path / fmt), "--format", fmt]) == 0
        (written,) = (tmp_path / fmt).iterdir()
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written


@pytest.mark.parametrize("flags, shown", [((), ["ours", "a warning"]), (("verbose",), ["third", "ours", "a warning"]),
                                          (("quiet",), ["a warning"])])
def test_other_libraries_info_only_under_verbose(flags, shown):
    """onnxslim / onnxscript log each merged initializer at INFO (1,038 lines for one B+ export): the CLI
    shows mgd-rt's own INFO lines, and other libraries' only with -v; warnings always."""
    import subprocess
    import sys

    kwargs = ", ".join(f"{f}=True" for f in flags)
    code = ("import logging; from mgd_rt.cli import configure_logging; "
            f"configure_logging({kwargs}); "
            "logging.getLogger('onnx_ir').info('third'); logging.getLogger('mgd_rt').info('ours'); "
            "logging.getLogger('modelopt').warning('a warning')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert [line.removeprefix("mgd-rt: ") for line in err.splitlines()] == shown
