"""The layout's one rule: a package of ``cam`` imports only the packages below it (at the top of a module or inside
a function alike), so that the core never depends on serving and reading a report never needs training."""

import ast
from pathlib import Path

import pytest

CAM = Path(__file__).resolve().parent.parent / "cam"
# From the bottom up; each may import itself and those before it. ``cli`` (and ``__main__``) sit on top.
LAYERS = ("core", "data", "models", "explain", "evaluate", "train", "serve", "cli", "__main__")


def layer_of(module: str) -> str:
    """``cam.explain.methods`` -> ``explain``; ``cam.cli`` -> ``cli``."""
    return module.split(".")[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``cam`` module a file imports (line, dotted name), wherever the import statement is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("cam.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cam":  # from cam import cli
                found += [(node.lineno, f"cam.{alias.name}") for alias in node.names]
            elif node.module.startswith("cam."):
                found.append((node.lineno, node.module))
    return found


def modules() -> list[Path]:
    return sorted(path for path in CAM.rglob("*.py") if path.relative_to(CAM).parts[0] != "__init__.py")


def test_every_module_is_in_a_known_layer() -> None:
    strays = [str(p.relative_to(CAM)) for p in modules()
              if p.relative_to(CAM).parts[0].removesuffix(".py") not in LAYERS]
    assert not strays, f"modules outside the layout's packages: {strays}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(CAM)))
def test_a_module_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    own = LAYERS.index(path.relative_to(CAM).parts[0].removesuffix(".py"))
    upward = [f"line {line}: {name}" for line, name in imported_modules(path) if LAYERS.index(layer_of(name)) > own]
    assert not upward, f"{path.relative_to(CAM)} imports from above its layer: {upward}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a core module importing a serving one, inside a function, is found."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from cam.serve.gallery import collections\n    import cam.explain.render\n")
    names = [name for _, name in imported_modules(module)]
    assert names == ["cam.serve.gallery", "cam.explain.render"]
    assert all(LAYERS.index(layer_of(name)) > LAYERS.index("core") for name in names)
