"""Resolving a package closure for ``kiln lock debian`` against an ``AptIndex``.

Rules (documented in docs/toolchain.md; candidates are ``AptIndex``'s, see ``apt``):

- ``Depends`` and ``Pre-Depends`` are followed; ``Recommends``/``Suggests`` are not;
- for an alternative list ``a | b | c`` the dependency is satisfied if any alternative is
  already chosen with a version that meets its constraint (by name, or by a ``Provides``,
  which for a versioned dependency must itself carry a version that meets it, as Debian
  policy 7.5 says); otherwise the first satisfiable alternative is chosen: a real package
  whose candidate meets the constraint, else a virtual name provided by some candidate
  (the provider already chosen, else the first by name);
- excluded names are never chosen; a dependency whose alternatives are all excluded is
  dropped (and reported), one that cannot be satisfied at all is an error.

The result is a sorted tuple of ``LockEntry`` values (the lock records, ``aptlock``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from .apt import AptError, AptIndex, valid_version
from .aptlock import LockEntry
from .errors import FormatError


def _satisfies(version: str, rel: dict) -> bool:
    """Whether ``version`` meets ``rel``'s constraint; ``FormatError`` for a constraint
    that is not a Debian version or an unknown relation (``version`` is one: the index
    checked candidates' and provided versions)."""
    from debian.debian_support import version_compare

    constraint = rel.get("version")
    if not constraint:
        return True
    op, want = constraint
    if not valid_version(want):
        raise FormatError(f"in ({op} {want}): expected a Debian version, found {want!r}")
    try:
        c = version_compare(version, want)
    except ValueError as e:  # python-debian's own checks (a backstop: both are valid)
        raise FormatError(f"cannot compare {version!r} with ({op} {want}): {e}") from None
    # "<" and ">" are the obsolete spellings of "<=" and ">=" (Debian policy 7.1)
    ok = {"<<": c < 0, "<=": c <= 0, "<": c <= 0, "=": c == 0, ">=": c >= 0, ">": c >= 0, ">>": c > 0}.get(op)
    if ok is None:
        raise FormatError(f"unknown version relation {op!r} in ({op} {want})")
    return ok


def _pkg_field(field: str) -> str:
    """``Pre-Depends`` for python-debian's ``pre-depends``."""
    return "-".join(w.capitalize() for w in field.split("-"))


def _rel_text(alts: list[dict]) -> str:
    """``a (>= 1) | b`` as Debian writes it."""
    out = []
    for a in alts:
        v = a.get("version")
        out.append(f"{a['name']} ({v[0]} {v[1]})" if v else a["name"])
    return " | ".join(out)


def resolve(
    index: AptIndex,
    roots: list[str],
    exclude: Iterable[str] = (),
    warn: Callable[[str], None] | None = None,
) -> tuple[LockEntry, ...]:
    """The closure of ``roots`` under Depends + Pre-Depends (rules in the module docstring),
    sorted by name."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    excluded = set(exclude)
    chosen: dict[str, None] = {}
    provided: dict[str, list[str | None]] = {}  # virtual name -> versions chosen packages provide
    queue: list[str] = []

    def choose(name: str) -> None:
        if name in chosen:
            return
        chosen[name] = None
        queue.append(name)
        for virt, ver in index.provides.get(name, []):
            provided.setdefault(virt, []).append(ver)

    def satisfied(alt: dict) -> bool:
        if alt["name"] in chosen and _satisfies(index.version(alt["name"]), alt):
            return True
        vers = provided.get(alt["name"], [])
        if alt.get("version") is None:
            return bool(vers)
        return any(v is not None and _satisfies(v, alt) for v in vers)

    for root in roots:
        if root in excluded:
            raise AptError(f"package {root!r} is both requested and excluded")
        if root not in index:
            via = [p for p, _ in index.providers.get(root, []) if p not in excluded]
            if not via:
                why = (
                    "only excluded packages provide it"
                    if index.providers.get(root)
                    else "no package by that name"
                )
                raise AptError(f"cannot lock {root!r}: {why} in the apt indexes")
            root = via[0]
        choose(root)

    while queue:
        name = queue.pop(0)
        pkg = index.package(name)
        for field in ("pre-depends", "depends"):
            for alts in pkg.relations[field] or ():  # (python-debian: [] for a missing field; typed Optional)
                text = _rel_text(alts)
                try:
                    if any(satisfied(a) for a in alts):
                        continue
                    pick = _first_satisfiable(index, alts, excluded, chosen)
                except FormatError as e:  # a bad version in the relation: name where it is
                    raise FormatError(
                        f"{index.where(name)}package {name} {index.version(name)}: "
                        f"{_pkg_field(field)} '{text}': {e}"
                    ) from None
                if pick is None:
                    # an alternative is excluded if it is, or if it is a virtual name that
                    # only excluded packages provide (awk when gawk and mawk are excluded)
                    if all(
                        a["name"] in excluded
                        or (
                            a["name"] not in index
                            and index.providers.get(a["name"])
                            and all(p in excluded for p, _ in index.providers[a["name"]])
                        )
                        for a in alts
                    ):
                        warn(f"{name}: dependency '{text}' dropped (excluded)")
                        continue
                    have = [f"{a['name']} {index.version(a['name'])}" for a in alts if a["name"] in chosen]
                    extra = f" ({', '.join(have)} already chosen)" if have else ""
                    raise AptError(f"{name} {index.version(name)}: cannot satisfy dependency '{text}'{extra}")
                choose(pick)
    return tuple(index.entry(n) for n in sorted(chosen))


def _first_satisfiable(index: AptIndex, alts: list[dict], excluded: set[str], chosen: dict) -> str | None:
    for alt in alts:
        name = alt["name"]
        if name in excluded:
            continue
        if name in index and _satisfies(index.version(name), alt):
            return name
        # a virtual name: an unversioned dependency takes any provider, a versioned one only
        # a provider whose Provides carries a version that meets it; a chosen one first
        fits = []
        for p, ver in index.providers.get(name, []):
            if p in excluded:
                continue
            index.version(p)  # (a provider whose stanza could not be read says so: ``AptIndex._bad``)
            if alt.get("version") is None or (ver is not None and _satisfies(ver, alt)):
                fits.append(p)
        if fits:
            return next((p for p in fits if p in chosen), fits[0])
    return None
