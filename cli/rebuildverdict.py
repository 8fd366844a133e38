"""A rebuild's verdicts: one ``OutputVerdict`` per output, signed and stored as VSAs.

Theory of operation
-------------------
``rebuilders.rebuild_drv`` rebuilds a derivation and hands the outcome here:

- the rebuild built: each compared output gets PASSED (same NAR hash) or FAILED
  (``compared``);
- the rebuild did not build (``BuildError``: the builder failed, timed out, made no
  output...): each valid output gets FAILED, with ``kiln_rebuild.buildError`` saying what
  failed in one line and no rebuilt digest (``failed_build``). A derivation that builds
  once and not again, e.g. a time bomb under ``--vary``'s clock shift, is not
  reproducible, and the key must say so: without a new verdict its older PASSED would
  stay its latest.

With a signer each verdict is signed (``attestations.record_vsa``) and stored beside
its output, dated by ``verdicttime``. ``record_vsa`` may refuse a PASSED that would
replace the key's FAILED made under more variations (``store/vsareplace.py``): the
verdict then carries no VSA file and a ``not_recorded`` reason, and the reason is said
as a warning. Without a signer nothing is signed (``kiln challenge --rebuild``, a report
without a key); a rebuild that does not build is then the caller's error
(``rebuild_drv`` lets the ``BuildError`` through).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Say = Callable[[str], None]

#: the longest build failure reason a VSA carries (the first line of the error)
REASON_MAX = 300


@dataclass(frozen=True, slots=True)
class OutputVerdict:
    """One output of one rebuild. Hashes are ``sha256:<nix32>``, as Nix prints a NAR hash
    and every ``--json`` of kiln does (``jsonout.hash_text``); ``vsa`` is the file the
    signed verdict was stored in (``None`` when nothing was signed). ``build_error``: the
    rebuild did not build (why; ``rebuilt`` is then empty); ``not_recorded``: why no
    verdict was stored although a signer was given (the key's FAILED stands)."""

    path: str
    output: str
    drv_path: str
    registered: str
    rebuilt: str
    identical: bool
    differences: str
    vsa: str | None
    build_error: str = ""
    not_recorded: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "output": self.output,
            "derivation": self.drv_path,
            "registered": self.registered,
            "rebuilt": self.rebuilt or None,
            "reproduced": self.identical,
            "differences": self.differences,
            "build_error": self.build_error or None,
            "vsa": self.vsa,
            "not_recorded": self.not_recorded or None,
        }


def build_failure_reason(error: BaseException | str) -> str:
    """What a FAILED VSA says of a rebuild that did not build: the error's first line
    (not the log tail: the whole log is ``kiln log --check``'s), printable, at most
    ``REASON_MAX`` characters. Control characters and undecodable bytes are escaped, so
    the statement is one clean line of UTF-8."""
    first = (str(error).splitlines() or [type(error).__name__])[0]
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in first)
    text = f"the rebuild failed to build: {text}"
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


def _record(
    store: Any,
    path: str,
    signer: Any,
    say: Say,
    now: float,
    *,
    passed: bool,
    derivation: str,
    varied: Sequence[str] | None,
    rebuilt_hex: str | None = None,
    build_error: str | None = None,
    inputs: list[dict[str, Any]] | None = None,
) -> tuple[str | None, str]:
    """Sign and store one verdict: ``(file, "")``, or ``(None, why)`` when ``record_vsa``
    kept the key's stored FAILED (said as a warning)."""
    from kiln.store import attestations
    from kiln.store.vsareplace import VerdictKept

    from .verdicttime import verdict_time
    from .version import full_version

    try:
        return (
            str(
                attestations.record_vsa(
                    store,
                    path,
                    signer,
                    passed=passed,
                    verifier_version=full_version(),
                    # not before this key's stored verdict (a clock gone back: ``verdicttime``)
                    time_verified=verdict_time(store, path, signer.public_key, now, say),
                    rebuilt_nar_sha256_hex=rebuilt_hex,
                    derivation=derivation,
                    varied=list(varied) if varied is not None else None,
                    build_error=build_error,
                    say=say,
                    inputs=inputs,
                )
            ),
            "",
        )
    except VerdictKept as e:
        say(f"warning: {e}")
        return None, f"this key's FAILED verdict stays ({e.file})"


def compared(
    store: Any,
    drv_path: str,
    comparisons: Sequence[Any],
    signer: Any | None,
    varied: Sequence[str] | None,
    say: Say,
    inputs: list[dict[str, Any]] | None = None,
) -> list[OutputVerdict]:
    """The verdicts of a rebuild that built (``buildcheck.OutputComparison`` each),
    signed with ``signer`` if given; ``inputs``: what the rebuild's sandbox saw, recorded
    in each (``attestations.record_vsa``)."""
    from .jsonout import hash_text

    now = time.time()
    out = []
    for c in comparisons:
        vsa, why = None, ""
        if signer is not None:
            vsa, why = _record(
                store, c.path, signer, say, now,
                passed=c.identical, derivation=drv_path, varied=varied, rebuilt_hex=c.rebuilt.hex,
                inputs=inputs,
            )  # fmt: skip
        out.append(
            OutputVerdict(
                c.path,
                c.output,
                drv_path,
                hash_text(c.registered),
                hash_text(c.rebuilt),
                c.identical,
                c.differences,
                vsa,
                not_recorded=why,
            )
        )
    return out


def failed_build(
    store: Any,
    drv: Any,
    drv_path: str,
    error: BaseException,
    signer: Any,
    varied: Sequence[str] | None,
    say: Say,
    inputs: list[dict[str, Any]] | None = None,
) -> list[OutputVerdict]:
    """FAILED verdicts, signed, for every valid output of ``drv`` (the ``Derivation`` at
    ``drv_path``), whose rebuild raised ``error`` (a ``BuildError``); ``inputs`` as for
    ``compared``."""
    from .jsonout import hash_text

    now = time.time()
    reason = build_failure_reason(error)
    out = []
    for name, o in drv.outputs:
        info = store.query(o.path)
        if info is None:  # (the rebuild compared only valid outputs, and said so)
            continue
        vsa, why = _record(
            store,
            o.path,
            signer,
            say,
            now,
            passed=False,
            derivation=drv_path,
            varied=varied,
            build_error=reason,
            inputs=inputs,
        )
        out.append(
            OutputVerdict(
                o.path, name, drv_path, hash_text(info.nar_hash), "", False, "", vsa, str(error), why
            )
        )
    return out


def render_verdicts(verdicts: list[OutputVerdict]) -> list[str]:
    """Human-readable lines for ``kiln rebuild``: per output the verdict, and for a
    mismatch both hashes and the differing files (with diffoscope's explanation); for a
    rebuild that did not build, the build's error."""
    lines = []
    for v in verdicts:
        if v.build_error:
            lines.append(f"{v.path}: NOT reproduced: the rebuild failed to build")
            lines += ["  " + line for line in v.build_error.splitlines()]
        elif v.identical:
            lines.append(f"{v.path}: reproduced (NAR {v.registered})")
        else:
            lines.append(f"{v.path}: NOT reproduced")
            lines.append(f"  registered NAR hash: {v.registered}")
            lines.append(f"  rebuilt NAR hash:    {v.rebuilt}")
            lines += ["  " + line for line in v.differences.splitlines()]
        if v.vsa:
            lines.append(f"  signed {'PASSED' if v.identical else 'FAILED'} verification summary: {v.vsa}")
        if v.not_recorded:
            lines.append(f"  no verification summary signed: {v.not_recorded}")
    return lines
