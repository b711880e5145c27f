"""The package's shape: public API, no import cycles, one CLI wrapper, the README's example."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import smids_eval
from smids_eval.cli import COMMANDS, main, module_main

PACKAGE = Path(smids_eval.__file__).parent
README = Path(__file__).resolve().parents[1] / "README.md"
TINY = str(Path(__file__).parent / "profiles" / "tiny.toml")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _skipped(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` blocks never run (``__main__`` guards count: entry points live in
    ``__main__.py`` files, which nothing imports)."""
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """Every smids_eval module imported anywhere in ``path`` (function-level imports too)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _skipped(node):
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("smids_eval"):
                found.add(base)
                for alias in node.names:  # "from . import figures" imports a module
                    if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(
                            ".py").is_file():
                        found.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("smids_eval"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    return found


def test_no_import_cycles():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    # importing a submodule runs its parent packages' __init__ first: a package's __init__ is
    # exempt as a target because smids_eval/__init__ imports nothing eagerly
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                walk(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a planted a -> b -> a cycle is reported."""
    pkg = tmp_path / "smids_eval"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def test_public_api_is_exported():
    for name in smids_eval.__all__:
        assert getattr(smids_eval, name) is not None, name
    with pytest.raises(AttributeError):
        smids_eval.not_a_thing  # noqa: B018


def test_one_command_with_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in ["study", "predict", "report", "data", "benchmark"]:
        assert name in text and name in COMMANDS
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "--" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert module_main("study", ["--profile", TINY, "--trials", "0", "--out", str(tmp_path)]) == 2
    assert "--trials must be ≥ 1" in capsys.readouterr().err


def test_python_m_entry_points_share_the_wrapper(tmp_path):
    for module in ["smids_eval.study", "smids_eval.predict", "smids_eval.report",
                   "smids_eval.data", "smids_eval.benchmark", "smids_eval.cli"]:
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, module
    done = subprocess.run([sys.executable, "-m", "smids_eval.report", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def readme_python_example() -> str:
    text = README.read_text()
    section = text.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example, run as written but on the tiny profile in a temp folder."""
    code = readme_python_example()
    assert "run_study(" in code and "StudyConfig(" in code
    monkeypatch.chdir(tmp_path)
    code = code.replace('profile="quick"', f'profile={TINY!r}')
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert len(result.folds) == 2 and (tmp_path / "results").is_dir()
