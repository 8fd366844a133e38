"""in-toto Statement v1 with the predicates kiln emits: SLSA Provenance v1 for builds, SLSA
Verification Summary (VSA) v1 for rebuilders, and SBOMs (CycloneDX / SPDX).

Theory of operation
-------------------
A statement binds a predicate to subjects by digest. kiln's subject for a store path is
``{"name": "<hash>-<name>", "digest": {"sha256": <hex sha256 of the uncompressed NAR>}}``:
the NAR hash survives recompression and mirroring, the zstd file hash does not.

Statements are serialized canonically (sorted keys, compact separators, UTF-8) before
they go into a DSSE envelope. Provenance carries wall-clock times and an invocation id,
so it is *not* reproducible and lives beside the store path, never inside it; rebuilders
compare subject digests, not provenance bytes.

URIs (stable; documented in docs/security.md):

- ``BUILD_TYPE`` ``https://kiln.dev/build-types/recipe/v1``: "a kiln recipe attribute
  evaluated to a derivation and built in kiln's sandbox". externalParameters:
  ``recipeFile``, ``attribute``, ``parameters`` (string map), ``recipeRepository``
  (``{"commit", "dirty"}``); internalParameters: ``sandbox`` (settings map),
  ``toolchain`` (store path).
- ``BUILDER_LOCAL`` ``https://kiln.dev/builders/local/v1``: the local CLI, key held by the
  user (SLSA Build L1). Other modes must use other builder ids.
- ``VERIFIER_REBUILD`` ``https://kiln.dev/verifiers/rebuild/v1``: ``kiln rebuild``'s VSA;
  ``verifiedLevels`` contains ``KILN_REPRODUCED`` when the rebuild matched. Its
  ``kiln_rebuild`` extension: ``derivation``, ``narSha256`` (the rebuilt digest),
  ``varied`` (``--vary``), ``buildError`` (a FAILED whose rebuild did not build: why).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import FormatError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
VSA_TYPE = "https://slsa.dev/verification_summary/v1"
CYCLONEDX_TYPE = "https://cyclonedx.org/bom"
SPDX_TYPE = "https://spdx.dev/Document"
BUILD_TYPE = "https://kiln.dev/build-types/recipe/v1"
BUILDER_LOCAL = "https://kiln.dev/builders/local/v1"
VERIFIER_REBUILD = "https://kiln.dev/verifiers/rebuild/v1"
LEVEL_REPRODUCED = "KILN_REPRODUCED"

_HEX = frozenset("0123456789abcdef")


def canonical_json(obj: Any) -> bytes:
    """The bytes kiln signs: sorted keys, no whitespace, UTF-8. ``FormatError`` if some
    text in ``obj`` has no UTF-8 form: a lone surrogate, which is how Python holds a
    byte of a file name or an argument that is not UTF-8 (an in-toto statement is UTF-8
    JSON; callers refuse such names before any work, ``buildprov.check_recordable``)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        near = text[max(0, e.start - 40) : e.end + 20].encode("utf-8", "backslashreplace").decode("utf-8")
        raise FormatError(f"cannot sign a statement holding text that is not UTF-8 (near {near!r})") from None


def rfc3339(t: datetime | int | float | str) -> str:
    """A UTC timestamp ``YYYY-MM-DDThh:mm:ssZ`` (in-toto Timestamp). ``t`` is a datetime
    (naive = UTC), a Unix time, or an already formatted string (re-validated)."""
    if isinstance(t, str):
        t = parse_time(t)
    if isinstance(t, int | float):
        t = datetime.fromtimestamp(t, UTC)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: RFC 3339 ``date-time`` (section 5.6): full date, ``T``, time with optional fraction,
#: ``Z`` or a numeric offset; ``fromisoformat`` alone also takes week dates, basic
#: format and a space instead of ``T``
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime; ``FormatError`` for
    anything else, including a time that UTC cannot hold (year 0 or 10000 there)."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise FormatError(
            f"invalid timestamp {str(text)[:60]!r} (expected RFC 3339, e.g. 2024-01-01T00:00:00Z)"
        )
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:  # fromisoformat takes at most microseconds
        text = text.replace(frac.group(0), frac.group(0)[:7], 1)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00").replace("t", "T"))
        return t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise FormatError(f"invalid timestamp {text[:60]!r} (out of range)") from None


def statement_time(st: Statement) -> datetime | None:
    """When a statement says its claim was made: a provenance's ``finishedOn``, a VSA's
    ``timeVerified``; None for other predicates or when the field is absent. A present
    but malformed time raises ``FormatError``."""
    if st.predicate_type == PROVENANCE_TYPE:
        meta = st.predicate.get("runDetails")
        meta = meta.get("metadata") if isinstance(meta, dict) else None
        v = meta.get("finishedOn") if isinstance(meta, dict) else None
    elif st.predicate_type == VSA_TYPE:
        v = st.predicate.get("timeVerified")
    else:
        return None
    if v is None:
        return None
    if not isinstance(v, str):
        raise FormatError(f"the statement's time must be an RFC 3339 string, found {type(v).__name__}")
    return parse_time(v)


def _check_hex(h: str, what: str) -> str:
    if len(h) != 64 or not set(h) <= _HEX:
        raise FormatError(f"{what} must be 64 lowercase hex digits (sha256), got {h!r}")
    return h


def subject(name: str, nar_sha256_hex: str) -> dict[str, Any]:
    return {"name": name, "digest": {"sha256": _check_hex(nar_sha256_hex, "subject digest")}}


def statement(subjects: Iterable[dict[str, Any]], predicate_type: str, predicate: Mapping[str, Any]) -> dict:
    """An in-toto Statement v1."""
    subs = list(subjects)
    if not subs or any("digest" not in s or not s["digest"] for s in subs):
        raise FormatError("an in-toto statement needs at least one subject, each with a digest")
    return {
        "_type": STATEMENT_TYPE,
        "subject": subs,
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def _descriptor(dep: Mapping[str, Any]) -> dict[str, Any]:
    """Normalize one resolved dependency to a ResourceDescriptor.

    Accepts ``name``/``uri``/``url``/``digest``; ``digest`` is a DigestSet dict or a
    ``sha256:<hex>``/bare hex string. ``url`` becomes ``uri`` (or ``downloadLocation``
    when ``uri`` is also given)."""
    out: dict[str, Any] = {}
    if dep.get("name"):
        out["name"] = str(dep["name"])
    if dep.get("uri"):
        out["uri"] = str(dep["uri"])
    if dep.get("url"):
        out["downloadLocation" if "uri" in out else "uri"] = str(dep["url"])
    d = dep.get("digest")
    if isinstance(d, str):
        algo, _, hexd = d.rpartition(":")
        out["digest"] = {algo or "sha256": hexd.lower()}
    elif isinstance(d, Mapping) and d:
        out["digest"] = {str(k): str(v).lower() for k, v in d.items()}
    if dep.get("annotations"):
        out["annotations"] = dict(dep["annotations"])
    if not ({"uri", "digest"} & out.keys()):
        raise FormatError(f"resolved dependency {dict(dep)!r} needs a uri/url or a digest")
    return out


def provenance(
    subject_name: str,
    nar_sha256_hex: str,
    *,
    recipe_file: str,
    attribute: str,
    parameters: Mapping[str, str],
    git_commit: str | None,
    git_dirty: bool,
    sandbox_settings: Mapping[str, Any],
    toolchain_path: str | None,
    resolved_dependencies: Iterable[Mapping[str, Any]],
    builder_id: str = BUILDER_LOCAL,
    builder_version: str,
    invocation_id: str,
    started_on: datetime | int | float | str,
    finished_on: datetime | int | float | str,
    byproducts: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An in-toto Statement with a SLSA Provenance v1 predicate for one store path.

    ``subject_name`` is the path's base name ``<hash>-<name>``; ``nar_sha256_hex`` the hex
    sha256 of its NAR. The recipe repository commit (if any) is also listed in
    ``resolvedDependencies`` as a ``gitCommit`` digest, per SLSA's advice that digests of
    what parameters point at go there. Dependencies are sorted for stable output."""
    repo: dict[str, Any] = {"commit": git_commit, "dirty": bool(git_dirty)}
    deps = [_descriptor(d) for d in resolved_dependencies]
    if git_commit:
        deps.append({"uri": f"git+file:{recipe_file}", "digest": {"gitCommit": git_commit}})
    deps.sort(key=lambda d: (d.get("name", ""), d.get("uri", ""), json.dumps(d, sort_keys=True)))
    internal: dict[str, Any] = {"sandbox": dict(sandbox_settings)}
    if toolchain_path:
        internal["toolchain"] = toolchain_path
    run: dict[str, Any] = {
        "builder": {"id": builder_id, "version": {"kiln": builder_version}},
        "metadata": {
            "invocationId": invocation_id,
            "startedOn": rfc3339(started_on),
            "finishedOn": rfc3339(finished_on),
        },
    }
    bp = [_descriptor(b) for b in byproducts]
    if bp:
        run["byproducts"] = bp
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "recipeFile": recipe_file,
                "attribute": attribute,
                "parameters": {str(k): str(v) for k, v in sorted(parameters.items())},
                "recipeRepository": repo,
            },
            "internalParameters": internal,
            "resolvedDependencies": deps,
        },
        "runDetails": run,
    }
    return statement([subject(subject_name, nar_sha256_hex)], PROVENANCE_TYPE, predicate)


def vsa(
    subject_name: str,
    nar_sha256_hex: str,
    *,
    verifier_id: str = VERIFIER_REBUILD,
    verifier_version: str,
    time_verified: datetime | int | float | str,
    passed: bool,
    resource_uri: str,
    policy_uri: str = "https://kiln.dev/policies/rebuild/v1",
    policy_digest: Mapping[str, str] | None = None,
    input_attestations: Iterable[Mapping[str, Any]] = (),
    derivation: str | None = None,
    rebuilt_nar_sha256_hex: str | None = None,
    varied: Iterable[str] | None = None,
    build_error: str | None = None,
    inputs: Iterable[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A SLSA VSA v1 from a rebuilder: "this subject's NAR was (or was not) reproduced".

    ``verifiedLevels`` is ``["KILN_REPRODUCED"]`` when ``passed`` (an org-specific level, as
    the VSA spec allows), else ``["FAILED"]``. ``kiln_rebuild`` (an extension field) names
    the derivation, the digest the rebuild produced and, for a rebuild under varied
    conditions (``--vary``), what was varied (``varied``, from ``Variation.varied``).
    ``build_error``: the rebuild did not build (so there is no rebuilt digest), and why,
    in one line (``kiln_rebuild.buildError``); only for a verdict that is not ``passed``.
    ``inputs``: what the rebuild's sandbox saw, as provenance's ``resolvedDependencies``
    records it for a build (``attestations.build_dependencies``): the ``.drv`` and every
    input path with its NAR sha256 (``kiln_rebuild.inputs``, name and digest of each;
    ``vsainputs`` compares them with the provenance's)."""
    if build_error is not None and passed:
        raise ValueError("a rebuild that did not build cannot have reproduced")
    policy: dict[str, Any] = {"uri": policy_uri}
    if policy_digest:
        policy["digest"] = dict(policy_digest)
    predicate: dict[str, Any] = {
        "verifier": {"id": verifier_id, "version": {"kiln": verifier_version}},
        "timeVerified": rfc3339(time_verified),
        "resourceUri": resource_uri,
        "policy": policy,
        "inputAttestations": [_descriptor(a) for a in input_attestations],
        "verificationResult": "PASSED" if passed else "FAILED",
        "verifiedLevels": [LEVEL_REPRODUCED] if passed else ["FAILED"],
        "slsaVersion": "1.0",
    }
    ext: dict[str, Any] = {}
    if derivation:
        ext["derivation"] = derivation
    if rebuilt_nar_sha256_hex:
        ext["narSha256"] = _check_hex(rebuilt_nar_sha256_hex, "rebuilt NAR digest")
    if varied is not None:
        ext["varied"] = list(varied)
    if build_error is not None:
        ext["buildError"] = build_error
    if inputs is not None:
        ext["inputs"] = [{k: v for k, v in _descriptor(a).items() if k in ("name", "digest")} for a in inputs]
    if ext:
        predicate["kiln_rebuild"] = ext
    return statement([subject(subject_name, nar_sha256_hex)], VSA_TYPE, predicate)


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Statement:
    """A parsed statement. ``subjects`` are ``(name, digest set)`` pairs."""

    subjects: tuple[tuple[str, dict[str, str]], ...]
    predicate_type: str
    predicate: dict[str, Any]

    def matches(self, name: str, nar_sha256_hex: str) -> bool:
        """True iff some subject has this sha256 digest *and* this name. in-toto leaves
        what a name means to producer and consumer (a subject may omit it, or say "_");
        kiln's statements always name the store path's base name, and a statement that
        does not is not about this path: otherwise one made for identical content under
        another name (a different package, or one signed for another purpose) would vouch
        for this one too."""
        return any(d.get("sha256") == nar_sha256_hex and n == name for n, d in self.subjects)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return d


def parse_statement(payload: bytes) -> Statement:
    """Parse and shape-check a Statement v1 payload; unknown fields are ignored. The
    payload must be UTF-8 JSON without duplicate keys: the signed bytes must mean one
    thing to every verifier (``json`` would take the last of two ``subject`` keys, other
    parsers the first; it would also guess UTF-16)."""
    try:
        d = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # (nesting beyond the C parser's depth)
        raise FormatError(f"attestation payload is not UTF-8 JSON without duplicate keys: {e}") from None
    if not isinstance(d, dict) or d.get("_type") != STATEMENT_TYPE:
        found = d.get("_type") if isinstance(d, dict) else type(d).__name__
        raise FormatError(f"attestation payload is not an in-toto Statement v1 (_type {found!r})")
    subs = d.get("subject")
    if not isinstance(subs, list) or not subs:
        raise FormatError("in-toto statement has no subject")
    parsed = []
    for s in subs:
        if not isinstance(s, dict) or not isinstance(s.get("digest"), dict) or not s["digest"]:
            raise FormatError("in-toto statement subject without a digest")
        parsed.append((str(s.get("name", "")), {str(k): str(v).lower() for k, v in s["digest"].items()}))
    pt = d.get("predicateType")
    if not isinstance(pt, str) or not pt:
        raise FormatError("in-toto statement has no predicateType")
    pred = d.get("predicate") or {}
    if not isinstance(pred, dict):
        raise FormatError("in-toto statement predicate must be an object")
    return Statement(tuple(parsed), pt, pred)
