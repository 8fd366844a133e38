"""What a path's SLSA provenance records, for people reading a verification report.

``summarize`` reads the facts ``intoto.provenance`` writes (and any producer's statement
of the same shape) out of a parsed statement: the builder id and version, the build
type, the recipe file and attribute, the recipe repository's git commit and whether its
tree was dirty, the start and finish times, the number of resolved dependencies
("materials") and the invocation id, and those dependencies' digests (for comparing
with what rebuilders rebuilt from, ``vsainputs``). Only what is there, of the right type, is kept: a
field that is absent, not a string or not a valid time is left out, never guessed.

Invariants:

- A summary is only made of a statement whose signature and subject were checked
  (``verified``: a trusted key signed it, named in ``signed_by``) or, where the policy
  trusts no provenance key at all, of one whose subject names this path (``verified``
  false: the claims are the file's, nobody vouched for them). The caller decides
  (``policyprov``); nothing here judges trust.
- Every text is cut to ``MAX_TEXT`` characters: a statement is outside input, and a
  report line must stay a line. Showing it safely on a terminal is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import FormatError
from .intoto import Statement, parse_time, rfc3339
from .vsainputs import digests

#: longest text kept from a statement (longer ones end in "...")
MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class ProvenanceSummary:
    """The facts of one provenance statement (module doc); None: not recorded."""

    verified: bool
    signed_by: tuple[str, ...] = ()
    builder_id: str | None = None
    builder_version: str | None = None
    build_type: str | None = None
    recipe_file: str | None = None
    attribute: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    started_on: str | None = None
    finished_on: str | None = None
    materials: int | None = None
    invocation_id: str | None = None
    #: ``resolvedDependencies`` as ``{name: sha256 hex}`` (``vsainputs.digests``): what
    #: rebuilders' recorded inputs are compared with; not in the report's JSON (the
    #: count is, as ``materials``)
    dependencies: dict[str, str] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``verified`` and ``signed_by`` always, the rest when recorded."""
        out: dict[str, Any] = {"verified": self.verified, "signed_by": list(self.signed_by)}
        for f in fields(self)[2:]:
            if f.name == "dependencies":
                continue
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v
        return out


def _dig(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _text(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    return v if len(v) <= MAX_TEXT else v[:MAX_TEXT] + "..."


def _time(v: Any) -> str | None:
    try:
        return rfc3339(parse_time(v)) if isinstance(v, str) else None
    except FormatError:
        return None


def _version(v: Any) -> str | None:
    """``{"kiln": "0.1.0"}`` as ``kiln 0.1.0`` (SLSA's version map), a string as is."""
    if isinstance(v, dict):
        parts = [f"{k} {x}" for k, x in sorted(v.items()) if isinstance(k, str) and isinstance(x, str)]
        return _text(", ".join(parts))
    return _text(v)


def summarize(st: Statement, *, verified: bool, signed_by: tuple[str, ...] = ()) -> ProvenanceSummary:
    """The facts ``st`` (a provenance statement) records (module doc)."""
    pred = st.predicate
    ext = _dig(pred, "buildDefinition", "externalParameters")
    repo = _dig(ext, "recipeRepository")
    deps = _dig(pred, "buildDefinition", "resolvedDependencies")
    commit = _text(_dig(repo, "commit"))
    dirty = _dig(repo, "dirty") if commit is not None else None  # (clean or dirty: of a commit)
    return ProvenanceSummary(
        verified=verified,
        signed_by=signed_by,
        builder_id=_text(_dig(pred, "runDetails", "builder", "id")),
        builder_version=_version(_dig(pred, "runDetails", "builder", "version")),
        build_type=_text(_dig(pred, "buildDefinition", "buildType")),
        recipe_file=_text(_dig(ext, "recipeFile")),
        attribute=_text(_dig(ext, "attribute")),
        git_commit=commit,
        git_dirty=dirty if isinstance(dirty, bool) else None,
        started_on=_time(_dig(pred, "runDetails", "metadata", "startedOn")),
        finished_on=_time(_dig(pred, "runDetails", "metadata", "finishedOn")),
        materials=len(deps) if isinstance(deps, list) else None,
        invocation_id=_text(_dig(pred, "runDetails", "metadata", "invocationId")),
        dependencies=digests(deps),
    )
