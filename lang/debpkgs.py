"""The ``debian_packages`` field of a package: which packages of its toolchain's lock it
holds files of, for the SBOM.

A package that copies files out of its ``debian_rootfs`` toolchain (``glibc-runtime``
in recipes/toolchain.recipe copies libc6's and gcc's run-time libraries) ships Debian
packages without any trace of them in its own closure: the runtime SBOM would list it
as one component, and a vulnerability scanner matching ``pkg:deb`` purls would miss
libc6. The recipe names those packages::

    debian_packages = ["libc6", "libstdc++6"]

Contract:

- The field must be a list of plain strings, each the ``name`` of an entry in the lock
  of the one ``debian_rootfs`` in the package's ``deps``; anything else is an error at the
  field (or its item), with the closest lock names offered.
- The derivation's environment holds, instead of the names, the matching entries'
  package URLs, ``pkg:deb/debian/<name>@<version>?arch=<arch>`` (name and version
  percent-encoded: ``+`` as ``%2B``, an epoch's ``:`` as ``%3A``), space-separated in the
  order given (duplicates once): the exact version, epoch included (which the pool file
  name leaves out), and architecture are then part of the derivation, so of the output
  path, and the SBOM (``kiln.store.sbom``) reads them from a checked derivation alone.
"""

from __future__ import annotations

from kiln.store.aptlock import package_url

from . import nodes as ast
from .errors import BadValue, RecipeTypeError, did_you_mean
from .values import CStr, DrvValue, type_name

FIELD = "debian_packages"


def resolve(value: object, expr: ast.Node, toolchain: DrvValue | None) -> str:
    """The environment text of ``debian_packages`` = ``value`` (from ``expr``), whose
    names are looked up in ``toolchain``'s lock (``None``: the package has none)."""
    if not isinstance(value, tuple):
        raise RecipeTypeError(
            f"field '{FIELD}' must be a list of Debian package names, found {type_name(value)}",
            expr.src,
            expr.pos,
        )
    if toolchain is None:
        raise BadValue(
            f"field '{FIELD}' names packages of the toolchain's lock, but 'deps' holds no "
            "toolchain (debian_rootfs)",
            expr.src,
            expr.pos,
        )
    lock = {d.fields["name"]: d.fields for d in toolchain.fields["debs"]}
    items = expr.items if isinstance(expr, ast.ListExpr) and len(expr.items) == len(value) else None
    purls: list[str] = []
    for i, name in enumerate(value):
        node = items[i] if items is not None else expr
        if not isinstance(name, str):
            found = "a string that refers to store paths" if isinstance(name, CStr) else type_name(name)
            raise RecipeTypeError(
                f"'{FIELD}' entries must be plain strings (Debian package names), found {found}",
                node.src,
                node.pos,
            )
        if name not in lock:
            raise BadValue(
                f"'{FIELD}': no package {name!r} in the lock of toolchain "
                f"'{toolchain.drv.name}'{did_you_mean(name, lock)}",
                node.src,
                node.pos,
            )
        e = lock[name]
        purl = package_url(name, e["version"], e["arch"])
        if purl not in purls:
            purls.append(purl)
    return " ".join(purls)
