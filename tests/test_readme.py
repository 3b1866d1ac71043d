"""The README's links and commands: every relative link resolves in the repository (the docs site's
strict build checks the pages under docs/, not the README), and the "Your own data" command on
tests/data/tables_books uses the options the end-to-end test trains with."""

import ast
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links to no page"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def e2e_options(dataset: str) -> list[str]:
    """DATASETS[dataset] of the end-to-end test, read from its source (importing it would import jax)."""
    tree = ast.parse((ROOT / "tests" / "data" / "test_tables_end_to_end.py").read_text())
    (node,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "DATASETS"]
    return ast.literal_eval(node)[dataset]


def test_own_data_command_matches_the_e2e_options():
    (line,) = [l for l in README.read_text().splitlines() if l.startswith("ff-jax train") and "tables_books" in l]
    options = [a for a in shlex.split(line) if a.startswith("--gin.TablesOptions.")]
    assert options == e2e_options("tables_books")
