"""The Python API as a user meets it: the README's example runs as it is written, `load` says
what it needs, importing the package starts no TensorFlow, and the package's parts keep their
places (no import loops, tasks never import export/ nor branch on the data format)."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mobilevision as mv

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mobilevision"


def _readme_example() -> str:
    """The README's Python block that trains, loads, predicts, evaluates and exports."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "mv.train(" in b and "mv.load(" in b]
    return block


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path):
    """Verbatim, in an empty folder (the data is generated there), as a new user pastes it."""
    code = _readme_example()
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    last = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert last["file"].endswith("000001.jpg") and "detections" in last
    assert (tmp_path / "runs" / "demo" / "eval.json").is_file()
    assert (tmp_path / "runs" / "demo" / "export" / "shapes_ssdlite_int8.tflite").is_file()


def test_importing_the_package_starts_no_tensorflow():
    done = subprocess.run([sys.executable, "-c", "import sys, mobilevision as mv; "
                           "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_load_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        mv.load(tmp_path / "nothing.h5")
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(b"")
    with pytest.raises(mv.ConfigError, match="a weights file needs its config"):
        mv.load(weights)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        mv.load(tmp_path)
    with pytest.raises(mv.ConfigError, match="needs a path or a config"):
        mv.load()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        mv.load(config="shapes_classifier.yaml", overrides=[f"output={tmp_path / 'run'}"])


def _imports(path: Path) -> set[str]:
    """The mobilevision modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("mobilevision")}


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "schema" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        # A module's own package is not an import of it (Python runs __init__ first anyway).
        graph[name] = {m for m in _imports(path) if m in modules and m != name
                       and not name.startswith(m + ".")}
    return graph


def test_the_package_has_no_import_loops():
    """Counting imports inside functions too: a loop there is a loop in the design."""
    graph = _module_graph()
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_tasks_import_nothing_from_export_and_never_branch_on_the_format():
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        assert not [m for m in _imports(path) if m.startswith("mobilevision.export")], path
        text = path.read_text()
        assert "data.format" not in text and ".format ==" not in text, path
