"""``kiln rebuild --deep``: rebuild a path's derivation and every derivation below it.

Theory of operation
-------------------
A plain rebuild checks one derivation against the copies of its inputs that this store
holds. Those copies may not be what the original builder used (an input-addressed path
names a recipe, not bytes), and an input that does not reproduce, or a tampered copy,
goes unnoticed as long as the top output comes out the same. ``--deep`` rebuilds the
whole derivation closure instead: every derivation reachable through ``input_drvs``,
inputs before what uses them (``order``), each with its own verdict (and VSA, with a
signer) exactly as ``rebuilders.rebuild_drv`` gives one.

Left out: fixed-output derivations (fetches; their output is pinned by hash, a rebuild
would download the same bytes), and derivations none of whose outputs is valid here
(nothing to compare with; said on stderr). Each rebuild's inputs are this store's
copies, which the rebuilds before it have just checked. A rebuild that does not build
is a FAILED verdict and the others still run; without a signer it is an error, as for a
plain rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .rebuildverdict import OutputVerdict

Say = Callable[[str], None]


def order(drv_path: str, get_drv: Callable[[str], Any]) -> list[str]:
    """Every derivation in ``drv_path``'s closure (through ``input_drvs``), each after
    all of its inputs, ``drv_path`` last; iterative (closures can be deep)."""
    done: set[str] = set()
    out: list[str] = []
    stack: list[tuple[str, bool]] = [(drv_path, False)]
    while stack:
        p, expanded = stack.pop()
        if expanded:
            if p not in done:
                done.add(p)
                out.append(p)
            continue
        if p in done:
            continue
        stack.append((p, True))
        stack += [(q, False) for q, _ in sorted(get_drv(p).input_drvs, reverse=True) if q not in done]
    return out


def rebuild_deep(
    store: Any,
    builder: Any,
    drv_path: str,
    signer: Any | None,
    say: Say,
    vary: bool | frozenset[str] = False,
) -> list[OutputVerdict]:
    """Verdicts for every rebuilt derivation of ``drv_path``'s closure (module doc), in
    ``order``; ``vary`` as for ``rebuilders.rebuild_drv``."""
    from .rebuilders import rebuild_drv

    builder.load([drv_path])  # (parses the whole closure once)
    get_drv = builder.get_drv
    verdicts: list[OutputVerdict] = []
    todo = []
    for p in order(drv_path, get_drv):
        d = get_drv(p)
        if d.is_fixed_output:
            continue
        if not any(store.is_valid(o.path) for _, o in d.outputs):
            say(f"not rebuilding {p}: none of its outputs is valid here (nothing to compare with)")
            continue
        todo.append(p)
    # what is compared stays valid for the whole run, not just each one's own rebuild: a
    # GC meanwhile would otherwise take an input checked earlier, to be built again unchecked
    keep = [q for p in todo for q in (p, *(o.path for _, o in get_drv(p).outputs))]
    with store.temp_root(keep):
        for i, p in enumerate(todo, 1):
            say(f"[{i}/{len(todo)}] {p}")
            verdicts += rebuild_drv(store, builder, p, signer, say=say, vary=vary)
    return verdicts
