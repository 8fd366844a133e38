"""How ``kiln verify`` shows its reports: the lines it prints (``render``), the JSON it
prints with ``--json`` (``document``: one object with ``ok`` and ``paths``, as every
``--json`` of kiln, ``jsonout``), and its exit status (``exit_status``).

Report lines, per path::

    verifying PATH against POLICY
      pass NAME: DETAIL          one line per check: pass, skip, FAIL (the check failed),
      ERR  NAME: DETAIL          or ERR (it could not be run: ``Check.unchecked``)
      info provenance: ...       what its provenance records (``provenance_lines``): one
      info provenance: ...       or two lines, one per fact with ``--verbose``

then one ``result:`` line, last: ``PASS``, ``FAIL (...)``, ``UNCHECKED (...)`` or
``UNCHECKED, try again later (...)``, as ``Report.verdict`` (combined over the paths)
says, a failure winning over a check that could not be run.

Exit status: ``EXIT`` of the combined verdict: 0 passed, 1 rejected, 3 could not check,
75 could not check for now (sysexits.h's EX_TEMPFAIL, as ``kiln mirror sync``).

Invariant: every text that may come from outside (a path, a registry's answer, an
attestation's subject or provenance fields) goes through ``shown``, which escapes as
``buildlogs.shown_output`` and shows newlines as ``\\n``: one check is one line, and no
finding can drive the terminal or print a fake check, info or result line.
"""

from __future__ import annotations

from typing import Any

from kiln.store.buildlogs import shown_output
from kiln.store.policy import DEFAULT_SOURCE, PASSED, REJECTED, TEMPFAIL, UNCHECKED, Check, Report, combined
from kiln.store.provsummary import ProvenanceSummary

#: ``kiln verify``'s exit status for each verdict
EXIT = {PASSED: 0, REJECTED: 1, UNCHECKED: 3, TEMPFAIL: 75}


def shown(text: str) -> str:
    """``text`` on one terminal line: escapes as ``shown_output``, and newlines too."""
    return shown_output(text).replace("\n", "\\n")


def verdict(reports: list[Report]) -> str:
    return combined([r.verdict for r in reports])


def exit_status(reports: list[Report]) -> int:
    return EXIT[verdict(reports)]


def _status(c: Check) -> str:
    return "ERR" if not c.ok and c.unchecked else c.status


def render(reports: list[Report], closure: bool, verbose: bool = False) -> list[str]:
    """The lines ``kiln verify`` prints (module doc)."""
    lines: list[str] = []
    for report in reports:
        lines.append(f"verifying {shown(report.path)} against {shown(report.policy)}")
        lines += [f"  {_status(c):<4} {shown(c.name)}: {shown(c.detail)}" for c in report.checks]
        if report.provenance is not None:
            lines += [f"  info provenance: {x}" for x in provenance_lines(report.provenance, verbose)]
    lines.append(_result(reports, closure))
    return lines


def _n(k: int, what: str) -> str:
    return f"{k} {what}{'s' if k != 1 else ''}"


def _result(reports: list[Report], closure: bool) -> str:
    line = _verdict_line(reports, closure)
    if verdict(reports) == PASSED and all(r.policy == DEFAULT_SOURCE for r in reports):
        # (a bare PASS read as "trusted": content signed by anyone, or no one, passes)
        line += " (content only: no --policy, so no signature or attestation was required)"
    return line


def _verdict_line(reports: list[Report], closure: bool) -> str:
    v = verdict(reports)
    if closure:
        total = len(reports)
        bad = sum(r.verdict == REJECTED for r in reports)
        unchecked = sum(r.verdict in (UNCHECKED, TEMPFAIL) for r in reports)
        if v == PASSED:
            return f"result: PASS ({total} paths)"
        also = f", {unchecked} could not be checked" if unchecked else ""
        if v == REJECTED:
            return f"result: FAIL ({bad} of {total} paths failed{also})"
        what = f"{unchecked} of {total} paths could not be checked"
    else:
        failed = reports[0].failures()
        bad = sum(not c.unchecked for c in failed)
        unchecked = len(failed) - bad
        if v == PASSED:
            return "result: PASS"
        also = f", {unchecked} could not be run" if unchecked else ""
        if v == REJECTED:
            return f"result: FAIL ({_n(bad, 'check')} failed{also})"
        what = f"{_n(unchecked, 'check')} could not be run"
    return f"result: UNCHECKED{', try again later' if v == TEMPFAIL else ''} ({what})"


def provenance_lines(p: ProvenanceSummary, verbose: bool) -> list[str]:
    """What ``p`` records, shown (module doc): by default two lines, who built it and
    signed it, then from what and when; with ``verbose`` one fact a line. Only what the
    statement records appears."""
    signed = (
        f"signed by {', '.join(shown(n) for n in p.signed_by)}"
        if p.verified
        else "NOT verified (the policy trusts no provenance key)"
    )
    builder = shown(p.builder_id) if p.builder_id else "no builder id"
    version = f" ({shown(p.builder_version)})" if p.builder_version else ""
    btype = f", build type {shown(p.build_type)}" if p.build_type else ""
    recipe = shown(p.recipe_file) if p.recipe_file else None
    attr = f" attribute {shown(p.attribute)}" if p.attribute else ""
    commit = None
    if p.git_commit:
        state = (
            "clean" if p.git_dirty is False else "dirty" if p.git_dirty else "clean or dirty: not recorded"
        )
        commit = f"git commit {shown(p.git_commit)} ({state})"
    times = f"{p.started_on or '?'} to {p.finished_on or '?'}" if p.started_on or p.finished_on else None
    materials = _n(p.materials, "material") if p.materials is not None else None
    if verbose:
        rows = [
            ("signature", signed),
            ("builder", builder + version),
            ("build type", shown(p.build_type) if p.build_type else None),
            ("recipe", f"{recipe or '(no recipe file)'}{attr}" if recipe or attr else None),
            ("source", commit or ("no git commit recorded" if recipe else None)),
            ("started", p.started_on),
            ("finished", p.finished_on),
            ("materials", str(p.materials) if p.materials is not None else None),
            ("invocation", shown(p.invocation_id) if p.invocation_id else None),
        ]
        return [f"{k}: {v}" for k, v in rows if v is not None]
    first = f"built by {builder}{version}{btype}; {signed}"
    source = ", ".join(
        x
        for x in (
            (f"from {recipe}{attr}" if recipe else attr.strip() or None),
            commit or ("no git commit recorded" if recipe else None),
            f"built {times}" if times else None,
            materials,
        )
        if x
    )
    return [first, source] if source else [first]


def document(reports: list[Report], closure: bool) -> dict[str, Any]:
    """The ``--json`` document, one shape with or without ``--closure``: ``ok`` (the
    exit status is 0), ``verdict`` (``passed``, ``rejected``, ``unchecked``,
    ``tempfail``), the ``exit_status`` it gives, and ``paths``: a report per path (the
    target first). Without ``--closure`` the target's report's keys are also at the top,
    as before ``paths`` was added (``ok`` and ``verdict`` are then the same)."""
    v = verdict(reports)
    top = reports[0].to_dict() if not closure else {}
    return {
        **top,
        "ok": v == PASSED,
        "verdict": v,
        "exit_status": EXIT[v],
        "paths": [r.to_dict() for r in reports],
    }
