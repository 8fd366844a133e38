"""Policy verification of registry paths: ``POST /verify`` and ``kiln verify URL#PATH``.

Both answer "does this artifact, as this registry serves it, pass the policy?" with the
same checks as ``kiln verify`` on a local path (``policy.verify_path``). A registry
directory is not a store, so the path's closure is first materialised in a fresh
temporary store: narinfos are fetched (no signature required at this stage — the
``signatures`` check judges them against the policy), every NAR is verified against its
narinfo while it streams in and imported, and the path's attestations are copied with
``attest_transfer.fetch_attestations``. A store-backed server checks its own store
directly. What fails to fetch (a NAR unlike its narinfo, a misfiled attestation: a check
beside the closure's) fails a check, never raises: a tampered artifact is *denied with
the reason*; a failure to *ask* is no verdict: its check is ``unchecked`` (``_cause``).

Webhook shape (a Kubernetes ``AdmissionReview``, ``admission.k8s.io/v1``)::

    request : {"apiVersion": ..., "kind": "AdmissionReview",
               "request": {"uid": "...", "artifact": "/kiln/store/<h>-name" | "<h>" | "sha256:<hex>"}}
    response: {"apiVersion": ..., "kind": "AdmissionReview",
               "response": {"uid": "...", "allowed": bool,
                            "status": {"code": 200|403, "reason": "...", "message": "...",
                                       "details": {"name": <path>, "causes": [
                                           {"field": <check>, "reason": "pass|fail|skip",
                                            "message": <detail>}, ...]}}}}

``request.object.metadata.annotations["kiln.dev/artifact"]`` is accepted in place of
``request.artifact`` (so a webhook configured on a real resource can carry it). Every
answer names the policy that judged it in ``response.auditAnnotations``
(``kiln.dev/policy``, ``kiln.dev/policy-sha256``: the sha256 of the file's text).

**The closure is judged, not just the path.** Deploying a path deploys its runtime
closure, and a tampered or untrusted library under a verified binary is still a tampered
system; so both ways (``_verify_store``, ``_verify_remote``) verify every closure member
against the policy (``judge_closure``, always on): the target's own checks first, then
one more check, ``dependencies``, that fails naming each dependency that fails the
policy (with its failing checks) or is missing (a reference the store's closure walk
left out, quarantined say: a closure with a hole never passes). ``kiln verify --closure``
makes the same judgement of a local path (one report per member there).

**Fail closed.** A server re-reads its policy file for every review
(``policywatch.PolicyWatch``); when it does not load, the review is denied with that
reason (``unjudged``: ``allowed`` false, status 500), never judged by an older policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.policy import TRANSIENT, UNAVAILABLE, Check, Policy, PolicyError, Report, verify_path

from .backends import DirSource, Source
from .client import RegistryError
from .downloadsink import Sink
from .looprun import run as run_async
from .policywatch import PolicyWatch
from .storesource import StoreSource
from .verify import NarVerifier, check_narinfo

MAX_REVIEW = 64 << 10
API_VERSION = "admission.k8s.io/v1"


@dataclass(frozen=True, slots=True)
class Review:
    uid: str
    artifact: str
    api_version: str = API_VERSION


def parse_review(raw: bytes) -> Review:
    """Parse an AdmissionReview request; raise ``KilnError`` naming what is wrong."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # (UnicodeDecodeError is a ValueError)
        raise KilnError(f"review is not JSON: {e or 'nested too deep'}") from None
    req = doc.get("request") if isinstance(doc, dict) else None
    if not isinstance(req, dict):
        raise KilnError('expected an AdmissionReview: {"kind": "AdmissionReview", "request": {...}}')
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise KilnError("request.uid must be a non-empty string")
    art = req.get("artifact")
    if art is None:
        obj = req.get("object")
        ann = obj.get("metadata", {}).get("annotations", {}) if isinstance(obj, dict) else {}
        art = ann.get("kiln.dev/artifact") if isinstance(ann, dict) else None
    if not isinstance(art, str) or not art.strip():
        raise KilnError("request.artifact must name a store path, a hash part or a sha256: NAR digest")
    api = doc.get("apiVersion") if isinstance(doc.get("apiVersion"), str) else API_VERSION
    return Review(uid, art.strip(), api)


def _policy_notes(policy: Policy) -> dict[str, str]:
    """``auditAnnotations`` naming the policy that judged a review (and its text's sha256)."""
    notes = {"kiln.dev/policy": policy.source}
    if policy.digest:
        notes["kiln.dev/policy-sha256"] = policy.digest
    return notes


def response(review: Review, report: Report, policy: Policy | None = None) -> dict[str, Any]:
    """The AdmissionReview answer for ``report`` (judged by ``policy``, named in the
    answer when given)."""
    fails = report.failures()
    shown = report.policy + (
        f" (sha256:{policy.digest[:16]}...)" if policy is not None and policy.digest else ""
    )
    if report.ok:
        msg = f"{report.path} passes {shown} ({len(report.checks)} checks)"
    else:
        msg = f"{report.path} denied by {shown}: " + "; ".join(f"{c.name}: {c.detail}" for c in fails)
    out: dict[str, Any] = {
        "uid": review.uid,
        "allowed": report.ok,
        "status": {
            "code": 200 if report.ok else 403,
            "reason": "" if report.ok else "Forbidden",
            "message": msg,
            "details": {
                "name": report.path,
                "causes": [
                    {"field": c.name, "reason": c.status.lower(), "message": c.detail} for c in report.checks
                ],
            },
        },
    }
    if policy is not None:
        out["auditAnnotations"] = _policy_notes(policy)
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": out}


def unjudged(review: Review, why: str) -> dict[str, Any]:
    """The answer when no policy could judge the review (its file does not load): a
    denial with the reason, so a gate fails closed whatever its failure policy is for
    HTTP errors (Kubernetes' ``failurePolicy: Ignore`` would let a 5xx through)."""
    return {
        "apiVersion": review.api_version,
        "kind": "AdmissionReview",
        "response": {
            "uid": review.uid,
            "allowed": False,
            "status": {
                "code": 500,
                "reason": "InternalError",
                "message": f"{review.artifact} not judged: the policy does not load ({why})",
            },
        },
    }


def _failed(target: str, policy: Policy, name: str, why: str, unchecked: str = "") -> Report:
    """A report of one failed check (``unchecked``: it could not be run, and why)."""
    return Report(target, policy.source, (Check(name, False, why, unchecked=unchecked),))


def _cause(e: BaseException) -> str:
    """``Check.unchecked`` for ``e`` (raised fetching from a registry): ``TRANSIENT`` if a
    later attempt may answer (``retryable``), ``UNAVAILABLE`` for another failure to ask,
    "" for a verdict (what the registry sent failed a check)."""
    from .retryable import retryable

    if retryable(e):
        return TRANSIENT
    return UNAVAILABLE if isinstance(e, (RegistryError, OSError)) else ""


def answer(source: Source, review: Review, policy: Policy | PolicyWatch) -> dict[str, Any]:
    """Run the policy for ``review.artifact`` and its closure against ``source``'s copy;
    never raises for a bad artifact (it is denied with the reason). A ``PolicyWatch`` is
    read now, and a policy file that does not load denies the review (``unjudged``)."""
    if isinstance(policy, PolicyWatch):
        try:
            policy = policy.current()
        except PolicyError as e:
            return unjudged(review, str(e))
    try:
        if isinstance(source, StoreSource):
            report = _verify_store(source, review.artifact, policy)
        else:
            assert isinstance(source, DirSource)
            report = verify_remote(str(source.storage.url), review.artifact, policy)
    except (KilnError, OSError) as e:  # e.g. no space for the temporary store: deny, say why
        why = f"verification could not run: {e}"
        report = _failed(review.artifact, policy, "verify", why, _cause(e) or UNAVAILABLE)
    return response(review, report, policy)


#: failing dependencies named with their failing checks in a ``dependencies`` check; more are
#: counted (a closure of thousands must not make a megabyte answer)
MAX_NAMED = 50


def judge_closure(store: Any, top: str, closure: Iterable[str], policy: Policy) -> Report:
    """``top``'s report (``verify_path``) followed by one more check, ``dependencies``:
    every other member of ``closure`` (paths valid in ``store``) verified against ``policy``
    too, and every reference of a member is a member (``LocalStore.closure`` leaves out
    a reference that is not valid, a quarantined one say: a closure with a hole never
    passes). It fails naming each failing or missing dependency (up to ``MAX_NAMED``,
    with their failing checks); skipped when ``top`` has no dependencies."""
    report = verify_path(store, top, policy)
    members = set(closure) | {top}
    deps = sorted(members - {top})
    missing = sorted(
        {
            r
            for p in members
            if (info := store.query(p)) is not None
            for r in info.references
            if r not in members
        }
    )
    failing = [
        *(f"{r}: not valid here (a reference of the closure)" for r in missing),
        *(
            f"{r.path} ({'; '.join(f'{c.name}: {c.detail}' for c in r.failures())})"
            for r in (verify_path(store, p, policy) for p in deps)
            if not r.ok
        ),
    ]
    if not deps and not missing:
        check = Check("dependencies", True, "none: the closure is the path alone", skipped=True)
    elif not failing:
        check = Check("dependencies", True, f"all {len(deps)} in the closure pass the policy")
    else:
        more = f"; and {len(failing) - MAX_NAMED} more" if len(failing) > MAX_NAMED else ""
        check = Check(
            "dependencies",
            False,
            f"{len(failing)} of {len(deps) + len(missing)} in the closure fail the policy: "
            + "; ".join(failing[:MAX_NAMED])
            + more,
        )
    return replace(report, checks=(*report.checks, check))


def _verify_store(source: StoreSource, target: str, policy: Policy) -> Report:
    from kiln.store.localstore import LocalStore

    store = LocalStore.open(source.store.root, create=False)  # this thread's own connection
    try:
        body = _lookup_sync(source, target)
        if body is None:
            why = f"{target} is not served by this registry"
            return _failed(target, policy, "valid", why, UNAVAILABLE)
        path = _admit_top(body.decode(), source.store_dir, target).path
        return judge_closure(store, path, store.closure([path]), policy)
    except KilnError as e:
        return _failed(target, policy, "valid", str(e))
    finally:
        store.close()


def _hash_part(target: str) -> str | None:
    base = target.rstrip("/").rsplit("/", 1)[-1]
    return base[:32] if len(base) >= 32 else None


def _admit_top(text: str, store_dir: str, target: str) -> ni.NarInfo:
    """Admit the narinfo a registry answered for ``target`` (no signature needed here: the
    policy's ``signatures`` check judges them), and make sure it is the artifact that was
    asked about: a registry answering with some other path's narinfo (a signed, approved
    one, say) must not get that path's verdict reported for ``target``."""
    if target.startswith(("sha256:", "sha256-")):
        want = Hash.parse(target)
        info = check_narinfo(text, store_dir, [], 0)
        if info.nar_hash != want:
            raise KilnError(
                f"asked for the path with NAR hash {want}, the registry answered with {info.path} "
                f"(NAR hash {info.nar_hash})"
            )
        return info
    want_path = target.rstrip("/")
    base = want_path.rsplit("/", 1)[-1]
    info = check_narinfo(text, store_dir, [], 0, _hash_part(target))
    if (want_path.startswith("/") and info.path != want_path) or (
        len(base) > 32 and info.path.rsplit("/", 1)[1] != base
    ):
        raise KilnError(f"asked for {want_path}, the registry answered with {info.path}")
    return info


def _lookup_sync(source: Source, target: str) -> bytes | None:
    if target.startswith(("sha256:", "sha256-")):
        return source.narinfo_by_nar_hash(Hash.parse(target).hex)
    h = _hash_part(target)
    return source.narinfo(h) if h else None


def verify_remote(
    url: str, target: str, policy: Policy, *, token: str | None = None, tmp_dir: str | Path | None = None
) -> Report:
    """Verify ``target`` (store path, hash part or ``sha256:`` NAR digest) and its closure
    as served by the registry at ``url`` against ``policy`` (``judge_closure``: the
    target's checks, then ``dependencies``), through a temporary store that is deleted
    afterwards. Fetch failures are failed checks in the report."""
    from kiln.store.systemp import owned_tmpdir

    # (owned: a server worker killed mid-review must not leave the closure's copy behind)
    with owned_tmpdir("verify", Path(tmp_dir) if tmp_dir is not None else None) as d:
        return run_async(_verify_remote(url, target, policy, token, d))


async def _verify_remote(url: str, target: str, policy: Policy, token: str | None, tmp: Path) -> Report:
    from kiln.store.errors import redact_urls
    from kiln.store.localstore import LocalStore

    from .attest_fetch import fetch_attestations
    from .client import open_client
    from .push import levels

    shown = redact_urls(url)  # (reports go to stdout, which the CLI does not filter)
    async with open_client(url, token, create=False) as client:
        try:
            info = await client.cache_info()
            store_dir = info.get("StoreDir", "")
            if target.startswith(("sha256:", "sha256-")):
                text = await client.narinfo_by_nar_hash(Hash.parse(target).hex)
            else:
                h = _hash_part(target)
                text = (await client.narinfos([h])).get(h) if h else None
        except KilnError as e:  # (whatever it is, the registry did not answer)
            why = f"cannot fetch {target} from {shown}: {e}"
            return _failed(target, policy, "valid", why, _cause(e) or UNAVAILABLE)
        if text is None:
            return _failed(target, policy, "valid", f"{shown} serves no path for {target}", UNAVAILABLE)
        try:
            top = _admit_top(text, store_dir, target)
        except KilnError as e:
            return _failed(target, policy, "valid", f"cannot fetch {target} from {shown}: {e}")
        # closure by narinfo references, then import dependencies first
        infos = {top.path: top}
        frontier = [r for r in top.references if r != top.path]
        try:
            while frontier:
                want = {r.rsplit("/", 1)[1][:32]: r for r in frontier if r not in infos}
                got = await client.narinfos(list(want))
                frontier = []
                for h, p in want.items():
                    if h not in got:
                        raise KilnError(f"{shown} serves {top.path} but not its reference {p}")
                    i = check_narinfo(got[h], store_dir, [], 0, h)
                    if i.path != p:
                        raise KilnError(f"{shown} answered for reference {p} with the narinfo of {i.path}")
                    infos[i.path] = i
                    frontier += [r for r in i.references if r not in infos]
        except KilnError as e:
            return _failed(top.path, policy, "valid", str(e), _cause(e))
        store = LocalStore.open(tmp / "store", store_dir=store_dir)
        try:
            for level in levels({p: i.to_pathinfo() for p, i in infos.items()}):
                for p in level:
                    try:
                        await _import(client, store, infos[p], tmp)
                    except KilnError as e:
                        why = f"{p} as served does not verify: {e}"
                        return _failed(top.path, policy, "content", why, _cause(e))
            refused: tuple[Check, ...] = ()
            try:
                # a fresh temporary store: the policy judges the signers, not the fetch;
                # every member's, since every member is judged
                await fetch_attestations(client, store, list(infos), any_signer=True)
            except KilnError as e:  # a check of its own: the closure is judged all the same
                refused = (Check("attestations", False, str(e), unchecked=_cause(e)),)
            judged = judge_closure(store, top.path, infos, policy)
            return replace(judged, checks=(*refused, *judged.checks))
        finally:
            store.close()


async def _import(client: Any, store: Any, info: Any, tmp: Path) -> None:
    """Download one NAR, check it against its narinfo while it streams, import it."""
    from .verify import expect_info, object_of

    f = tmp / "nar.zst"
    ver = NarVerifier(what=object_of(info))  # (errors name the path and the object's URL)
    with open(f, "wb") as out:

        def write(chunk: bytes) -> None:
            if ver.size + len(chunk) > (info.file_size or 0):
                raise KilnError(f"{info.path}: more than FileSize {info.file_size} bytes served")
            out.write(chunk)
            ver.update(chunk)

        def restart() -> None:  # (a cut download starting over: what came is discarded)
            nonlocal ver
            out.seek(0)
            out.truncate()
            ver = NarVerifier(what=object_of(info))

        if not await client.download(info.url, Sink(write, restart)):
            raise RegistryError(f"{info.url} is missing", 404)
    expect_info(info, ver.finish())
    with open(f, "rb") as src:
        store.import_object(info.to_pathinfo(), src)
