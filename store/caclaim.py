"""When a path's content address stands in for signatures, as in Nix: a path whose
``ca`` claim, of a method kiln recomputes, gives exactly its store path is its content's
address, so its content proves it (Nix's ``ValidPathInfo::checkSignatures`` counts such a
path as signed enough). ``nix copy --derivation`` publishes ``.drv`` files so, unsigned
(``text:``); a fixed-output source may come so too.

Invariant: ``claim_gives_path`` judges the *claim* only, before any content is seen (a
narinfo's ``CA:`` is unsigned). A caller that lets a path through on it must then check
the content against the claim before the path is used (``pathadmit.check_ca``, which
every import into a store runs) — so a false claim costs a download, never a path.
Only the methods verify and import recompute count (``CA_METHODS``); anything else
proves nothing.
"""

from __future__ import annotations

from .errors import FormatError
from .hashes import Hash
from .pathadmit import ca_problem
from .pathinfo import PathInfo

#: content-address methods kiln recomputes a path from (anything else proves nothing)
CA_METHODS = ("fixed:r:sha256:", "fixed:sha256:", "text:sha256:")


def claim_gives_path(info: PathInfo) -> bool:
    """Whether ``info.ca`` is of a method in ``CA_METHODS`` and gives ``info.path`` (for
    ``fixed:r:sha256:X``: with X the NarHash too, which a download checks). The
    content's own hash is taken to be the claimed one here: ``pathadmit.check_ca`` must
    still see the content (module docstring)."""
    ca = info.ca
    if not ca or not ca.startswith(CA_METHODS):
        return False
    try:
        claimed = Hash.parse(ca.split(":", 1)[1].removeprefix("r:"))
    except FormatError:
        return False

    def content(algo: str, recursive: bool) -> Hash | None:
        if recursive:  # (the NAR's sha256 is the NarHash, which the download is held to)
            return info.nar_hash if info.nar_hash.algo == algo else None
        return claimed

    return ca_problem(info, content) == ""  # (a malformed claim is a problem too)
