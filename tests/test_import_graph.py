"""No import cycle among the modules of any ff_jax package, function-local imports included.

`lint-imports` (`make test`) enforces the same rule through pyproject.toml's "acyclic_siblings"
contract; this test keeps it when pytest runs alone, and says which edges close each cycle.
"""

import ast
from pathlib import Path

import grimp
import pytest

import ff_jax


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("ff_jax", cache_dir=None)


def packages(graph) -> list[str]:
    return sorted(m for m in graph.modules if graph.find_children(m))


def function_local_imports() -> list[tuple[str, str, list[str]]]:
    """(importer, module, names) of every `from ff_jax... import names` written inside a function."""
    root = Path(ff_jax.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        importer = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [(importer, node.module, [a.name for a in node.names]) for node in ast.walk(function)
                          if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ff_jax")]
    return found


def test_the_graph_holds_function_local_imports(graph):
    # A graph without them would miss exactly the cycles that hide there.
    local = function_local_imports()
    assert local, "no function-local import left to check"
    missing = []
    for importer, module, names in local:
        # `from package import module` imports the module; `from module import name`, the module.
        imported = [f"{module}.{n}" for n in names if f"{module}.{n}" in graph.modules] or [module]
        missing += [(importer, m) for m in imported if not graph.direct_import_exists(importer=importer, imported=m)]
    assert not missing


def test_no_package_has_an_import_cycle(graph):
    cycles = {package: sorted(breakers) for package in packages(graph)
              if (breakers := graph.nominate_cycle_breakers(package))}
    assert not cycles, ("import cycles (removing these imports would break them; move the shared piece "
                        f"into its own module instead): {cycles}")


def test_a_new_cycle_is_caught(graph):
    edge = {"importer": "ff_jax.data.tables_checks", "imported": "ff_jax.data.tables"}  # tables imports checks
    graph.add_import(**edge)
    try:
        assert graph.nominate_cycle_breakers("ff_jax.data")
    finally:
        graph.remove_import(**edge)
    assert not graph.nominate_cycle_breakers("ff_jax.data")
