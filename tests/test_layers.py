"""The architecture's one-way data flow, checked on the source: each top-level package
imports only what docs/architecture.md allows it to.

    sandbox/   (kiln.sandbox)   nothing of ours
    store/     (kiln.store)     kiln.sandbox, for the executor interface
    registry/  (kiln.registry)  kiln.store
    lang/      (kiln.lang)      kiln.store's value and pure format modules (below)
    cli/       (kiln)           everything

Every ``import`` and ``from ... import`` anywhere in a module counts, including those
inside functions (kiln imports lazily for start-up time), and relative imports are
resolved against the module's own package, so ``from ..store import x`` cannot slip by.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "sandbox": "kiln.sandbox",
    "store": "kiln.store",
    "registry": "kiln.registry",
    "lang": "kiln.lang",
}
ALLOWED: dict[str, set[str]] = {
    "kiln.sandbox": set(),
    "kiln.store": {"kiln.sandbox"},
    "kiln.registry": {"kiln.store"},
    # the evaluator makes Derivation values, checks names and hashes, and computes the
    # path a source would get (NAR hash, no store write); it never opens a store
    "kiln.lang": {
        "kiln.store.aptlock",
        "kiln.store.derivation",
        "kiln.store.errors",
        "kiln.store.hashes",
        "kiln.store.nar",
        "kiln.store.paths",
        "kiln.__version__",  # the evaluation cache's key; the parent package is loaded anyway
    },
}


def _own_package(path: Path, folder: Path, package: str) -> str:
    """kiln.store for store/x.py, kiln.store.sub for store/sub/x.py."""
    return ".".join([package, *path.relative_to(folder).parent.parts])


def _imports(path: Path, own: str) -> list[tuple[int, str]]:
    """(line, absolute module or ``module.name``) for every import in ``path``, a module
    of package ``own``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from kiln.store import derivation" imports a module; name it fully
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return [(n, m) for n, m in found if m == "kiln" or m.startswith("kiln.")]


def _allowed(package: str, module: str) -> bool:
    if module == package or module.startswith(package + "."):
        return True
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[package])


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_each_package_imports_only_what_the_architecture_allows(folder: str) -> None:
    package = PACKAGES[folder]
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, folder
    bad = [
        f"{f.relative_to(REPO)}:{line}: {mod}"
        for f in files
        for line, mod in _imports(f, _own_package(f, REPO / folder, package))
        if not _allowed(package, mod)
    ]
    assert bad == [], f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    """The check itself: a relative import out of the package and an import inside a
    function are both found and resolved."""
    probe = tmp_path / "sub" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("def f():\n    from ...registry import client\n    import kiln.lang\n")
    own = _own_package(probe, tmp_path, "kiln.store")
    assert own == "kiln.store.sub"
    mods = [m for _, m in _imports(probe, own)]
    assert mods == ["kiln.registry.client", "kiln.lang"]
    assert not any(_allowed("kiln.store", m) for m in mods)
