"""The package's shape: imports only go down its floors and never round in a circle, every public function says
what it does, and the light stages import neither torch nor fastai."""

import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "retinopathy"

#: lowest first; a module may import from its own floor or any floor below, never above
FLOORS = [
    ["errors", "files", "paths", "progress", "grades", "heads", "competitions", "metrics", "screening", "device",
     "plots"],
    ["config", "experiment"],
    ["data"],
    ["preprocessing"],
    ["training"],
    ["inference"],
    ["reports"],
    ["kernel"],
    ["pipeline", "launcher", "cli"],
    ["commands", "__main__"],
]


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    best = None
    for level, names in enumerate(FLOORS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (level, len(name))
    assert best is not None, f"retinopathy.{module} is on no floor: add it to FLOORS"
    return best[0]


def internal_imports() -> dict[str, set[str]]:
    """module → the package's modules it imports, at the top or inside functions."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{target}.{a.name}" if target else a.name for a in node.names] + [target]
                edges |= {c for c in candidates if c in modules and c != name}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                edges |= {n.removeprefix("retinopathy.") for n in names
                          if n.startswith("retinopathy.") and n.removeprefix("retinopathy.") in modules}
        graph[name] = edges - {""}
    return graph


def test_no_import_climbs_a_floor():
    upward = [f"{src} (floor {floor_of(src)}) imports {dst} (floor {floor_of(dst)})"
              for src, dsts in internal_imports().items() if src for dst in dsts if floor_of(dst) > floor_of(src)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = internal_imports()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_the_floor_check_catches_an_upward_import(tmp_path):
    assert floor_of("metrics") < floor_of("training.train") < floor_of("inference.predict")
    assert floor_of("competitions") < floor_of("data.folds") < floor_of("preprocessing.stage")
    with pytest.raises(AssertionError, match="on no floor"):
        floor_of("somewhere_new")


def test_every_public_function_and_class_has_a_docstring():
    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    # a method overriding one that its base class (in the package) documents says what it does there
    documented = {node.name: {m.name for m in node.body if isinstance(m, ast.FunctionDef) and ast.get_docstring(m)}
                  for tree in trees.values() for node in tree.body if isinstance(node, ast.ClassDef)}
    missing = []
    for path, tree in trees.items():
        if not ast.get_docstring(tree):
            missing.append(f"{module_name(path) or '__init__'} (module)")
        scopes = [tree] + [n for n in tree.body if isinstance(n, ast.ClassDef)]
        for scope in scopes:
            inherited = set().union(*(documented.get(getattr(b, "id", ""), set()) for b in getattr(scope, "bases", [])))
            for node in scope.body:
                if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and not node.name.startswith("_") and not ast.get_docstring(node)
                        and node.name not in inherited
                        and not (scope is not tree and node.name in {
                            "forward", "encodes", "before_batch", "after_pred", "after_loss", "after_epoch",
                            "before_epoch", "get_next"})):
                    missing.append(f"{module_name(path)}.{node.name}")
    assert not missing, "no docstring: " + ", ".join(missing)


def imported_by(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_help_imports_neither_torch_nor_fastai(script):
    code = (f"import contextlib, io, runpy, sys\nsys.argv = ['{script}', '--help']\n"
            f"try:\n    with contextlib.redirect_stdout(io.StringIO()):\n"
            f"        runpy.run_path('scripts/{script}', run_name='__main__')\nexcept SystemExit:\n    pass")
    loaded = imported_by(code)
    assert not loaded & {"torch", "fastai", "sklearn", "onnxruntime"}, f"{script} --help loaded " + \
        ", ".join(sorted(loaded & {"torch", "fastai", "sklearn", "onnxruntime"}))


def test_light_stages_import_neither_torch_nor_fastai(tiny_aptos, tmp_path):
    code = f"""
from pathlib import Path
from retinopathy.data.verify import verify_dataset
from retinopathy.data.folds import make_folds
from retinopathy.experiment import Experiment
from retinopathy.config import load_config
from retinopathy.paths import Paths
from retinopathy.preprocessing.stage import preprocess
experiment = Experiment(load_config('configs/debug.yaml', ['raw_dir={tiny_aptos}', 'synthetic_images=0']),
                        Paths(data=Path('{tmp_path}'), output=Path('{tmp_path}')))
assert verify_dataset(experiment.raw_dir, workers=1, progress=False).clean
preprocess(experiment, workers=1)
make_folds(experiment, verbose=False)
"""
    loaded = imported_by(code)
    assert "pandas" in loaded and not loaded & {"torch", "fastai", "timm"}, sorted(loaded & {"torch", "fastai"})


def test_no_function_is_longer_than_eighty_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "split by concern: " + "; ".join(long)


def test_an_experiments_and_a_folds_file_names_are_written_in_one_module():
    import re

    names = re.compile(r"[\"'](export\.pkl|weights\.pth|fingerprint\.json|oof\.csv|history\.csv|config\.yaml|"
                       r"tuning\.json|test_outputs\.csv|model\.onnx|model-int8\.onnx|onnx\.json|loss\.png|"
                       r"lr_find\.(png|csv|json)|resume\.json|folds\.csv)[\"']")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) == "paths":
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # string constants outside docstrings
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and names.search(repr(node.value)):
                found.append(f"{module_name(path)}: {node.value!r}")
    assert not found, "ask paths.FoldFiles / ExperimentFiles: " + "; ".join(found)


def test_heads_are_looked_up_by_name_in_few_places():
    """A head travels as an object (``experiment.head``, ``GradeRule.head``, the served model's): its name is looked
    up where a name comes in, not on every use."""
    calls = [f"{module_name(path)}:{node.lineno}" for path in PACKAGE.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "get_head"]
    assert len(calls) <= 6, "; ".join(calls)
