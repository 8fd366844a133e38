"""Attestations stored beside store paths in a local store.

Layout: ``<root>/attestations/<hashpart>/<kind>.dsse.json``, one DSSE envelope per file
(canonical JSON). ``kind`` names the attestation's role, not its predicate:

- ``provenance``: the build's SLSA provenance (written by the build loop);
- ``sbom``: a signed SBOM statement (``kiln sbom --attest``);
- ``vsa-<keyid[:16]>``: one rebuilder's verification summary (``vsa_kind``), so several
  independent rebuilders' verdicts coexist.

Invariants
----------
- Writes are atomic (temp file in the same directory, fsync, rename, fsync dir): a
  reader sees the old envelope or the new one, never a torn file. Only durable bytes are
  ever renamed into place; ``attestgroup.GroupWriter`` keeps this for many files with
  one file-system barrier before the renames and one after, instead of two fsyncs each.
- ``write`` refuses an envelope whose payload is not an in-toto statement naming this
  path (by base name) as a subject, so a misfiled attestation cannot be stored.
- Nothing here decides trust: envelopes are stored and returned as-is; verification is
  ``policy.verify_path``'s job.
- A rebuilder's verdict replaces its stored one, except that ``record_vsa`` never lets
  a PASSED made under fewer variations replace the same key's FAILED (``vsareplace``):
  the latest verdict a verifier counts does not hide a failure the key found.
- The directory is keyed by hash part only, so it survives nothing but the path itself:
  ``remove`` is for the garbage collector when the path goes.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dsse import Envelope, Signer, keyid
from .dsse import sign as dsse_sign
from .errors import FormatError, StoreError
from .intoto import canonical_json, parse_statement
from .locks import left_by_dead_writer
from .nar_restore import fsync_dir
from .paths import StorePath

if TYPE_CHECKING:
    from .depscache import DependencyCache
    from .derivation import Derivation

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
SUFFIX = ".dsse.json"


def check_kind(kind: str) -> str:
    if not _KIND_RE.match(kind):
        raise FormatError(f"attestation kind {kind!r} must match [a-z0-9][a-z0-9_-]* (at most 64 characters)")
    return kind


def vsa_kind(public_key: bytes) -> str:
    """The kind under which a rebuilder holding ``public_key`` stores its VSA."""
    return f"vsa-{keyid(public_key)[:16]}"


def sign(statement: dict[str, Any], signers: builtins.list[Signer]) -> Envelope:
    """Wrap an in-toto statement (a dict from ``intoto``) in a DSSE envelope signed by
    every signer (``dsse.Ed25519Signer(secret_key.key)`` or ``signcmd.CommandSigner``)."""
    return dsse_sign(canonical_json(statement), signers)


def record_provenance(
    store: Any, path: str, signers: builtins.list[Signer], *, info: Any = None, **provenance_kw: Any
) -> Path:
    """Build loop entry point: make the SLSA provenance for valid ``path`` (subject = its
    base name and recorded NAR sha256; ``provenance_kw`` are ``intoto.provenance``'s
    keyword arguments), sign it with ``signers`` and store it as ``provenance``.
    ``info``: ``path``'s ``PathInfo`` if the caller has just queried it (else queried here)."""
    from .intoto import provenance

    info = info or store.query(str(path))
    if info is None:
        raise StoreError(f"cannot attest {path}: not a valid path in the store at {store.root}")
    st = provenance(_parse(path).base, info.nar_hash.hex, **provenance_kw)
    return write(store, path, "provenance", sign(st, signers))


def record_vsa(
    store: Any,
    path: str,
    signer: Signer,
    *,
    passed: bool,
    verifier_version: str,
    time_verified: Any,
    rebuilt_nar_sha256_hex: str | None = None,
    derivation: str | None = None,
    varied: builtins.list[str] | None = None,
    build_error: str | None = None,
    say: Callable[[str], None] | None = None,
    inputs: builtins.list[dict[str, Any]] | None = None,
) -> Path:
    """Rebuilder entry point: sign a VSA saying whether rebuilding valid ``path`` gave its
    recorded NAR hash, and store it under this rebuilder's kind (``vsa_kind``), replacing
    the key's stored verdict. A PASSED never silently replaces the key's FAILED: one made
    under fewer variations is refused (``vsareplace.VerdictKept``, before anything is
    signed) and one under as many is reported to ``say`` (``vsareplace.check``).
    ``build_error``: the rebuild did not build, and why (a FAILED, ``intoto.vsa``).
    ``inputs``: what the rebuild's sandbox saw (``build_dependencies`` of ``derivation``
    in the rebuilder's store), recorded as ``kiln_rebuild.inputs``."""
    from .intoto import vsa
    from .vsareplace import check, stored_verdict

    info = store.query(str(path))
    if info is None:
        raise StoreError(f"cannot attest {path}: not a valid path in the store at {store.root}")
    stored = stored_verdict(store, str(path), signer.public_key, info.nar_hash.hex)
    notice = check(str(path), stored, passed=passed, varied=varied)
    st = vsa(
        _parse(path).base,
        info.nar_hash.hex,
        verifier_version=verifier_version,
        time_verified=time_verified,
        passed=passed,
        resource_uri=f"kiln:{path}",
        derivation=derivation,
        rebuilt_nar_sha256_hex=rebuilt_nar_sha256_hex,
        varied=varied,
        build_error=build_error,
        inputs=inputs,
    )
    written = write(store, path, vsa_kind(signer.public_key), sign(st, [signer]))
    if notice is not None and say is not None:
        say(notice)
    return written


def build_dependencies(
    store: Any, drv_path: str, get_drv: Any = None, cache: DependencyCache | None = None
) -> builtins.list[dict[str, Any]]:
    """``resolvedDependencies`` for a build of ``drv_path``: the ``.drv`` itself (sha256 of
    its text) and every store path the sandbox saw (the reference closure of the input
    derivations' outputs and input sources) with its NAR sha256; fixed-output paths also
    carry the URL they were fetched from (from their deriver's ``urls``/``url``), but
    only when that deriver genuinely defines the path (``derivers.Derivers.of``): a
    path's recorded deriver is unsigned, and an import naming another package's
    ``.drv`` must not lend the path that package's source URL.
    ``get_drv(path) -> Derivation`` may supply already-parsed derivations (the build
    loop has them); by default each ``.drv`` is read and parsed here. ``cache``: a
    ``depscache.DependencyCache`` of ``store`` that the caller keeps across the builds
    of one command (the build loop's hook does: each dependency is then looked up and
    its deriver checked once, not once per build that uses it); by default a new one."""
    from .depscache import DependencyCache
    from .drvparse import parse as parse_drv
    from .hashes import Hash

    def read(p: str) -> bytes:
        return Path(store.real_path(p)).read_bytes()

    def parse_file(p: str, raw: bytes) -> Derivation:
        sp = _parse(p)
        return parse_drv(raw.decode("utf-8"), sp.name.removesuffix(".drv"), sp.store_dir)

    def load(p: str) -> Derivation:
        return get_drv(p) if get_drv is not None else parse_file(p, read(p))

    raw = read(drv_path)  # its digest is recorded; the build loop's parsed copy is reused
    drv = get_drv(drv_path) if get_drv is not None else parse_file(drv_path, raw)
    inputs = set(drv.input_srcs)
    for p, outs in drv.input_drvs:
        inputs |= {load(p).output_path(o) for o in outs}
    deps: builtins.list[dict[str, Any]] = [
        {"name": _parse(drv_path).base, "digest": {"sha256": Hash.sha256_of(raw).hex}}
    ]
    # (one call alone: one walk of the whole closure, not one per start path)
    closure = store.closure if cache is None else cache.closure
    if cache is None:
        cache = DependencyCache(store, get_drv)
    for p in closure(sorted(inputs)):
        info = cache.query(p)
        d: dict[str, Any] = {"name": _parse(p).base, "digest": {"sha256": info.nar_hash.hex}}
        env = cache.derivers.of(p, info.deriver)
        if env is not None and env.is_fixed_output:
            urls = env.env_map.get("urls", "").split() or [env.env_map.get("url", "")]
            if urls[0]:
                d["url"] = urls[0]
        deps.append(d)
    return deps


def load_signer(
    key_file: str | os.PathLike | None = None,
    *,
    signer_cmd: str | None = None,
    signer_public: str | os.PathLike | None = None,
) -> Signer:
    """The signer for attestations: a secret key file (Nix format ``name:base64``, which
    must not be readable by group or others), or an external command (``signer_cmd``,
    for KMS/HSM) together with its public key (``name:base64`` text or a ``.pub`` file)."""
    return load_named_signer(key_file, signer_cmd=signer_cmd, signer_public=signer_public)[1]


def load_named_signer(
    key_file: str | os.PathLike | None = None,
    *,
    signer_cmd: str | None = None,
    signer_public: str | os.PathLike | None = None,
) -> tuple[str, Signer]:
    """``load_signer`` plus the key's name (needed for Nix-style path signatures)."""
    from .dsse import Ed25519Signer
    from .errors import KilnError
    from .keyfiles import load_public_key, load_secret_key
    from .signcmd import CommandSigner
    from .signing import PublicKey, key_text_hint

    if signer_cmd:
        if key_file:
            raise KilnError("give either a secret key file or a signer command, not both")
        if not signer_public:
            raise KilnError("a signer command needs its public key (name:base64 or a .pub file)")
        text = os.fspath(signer_public)
        try:
            pub = PublicKey.parse(text)
        except FormatError:
            if not os.path.isfile(text):  # (a file first: a path is never taken for a key)
                raise KilnError(
                    f"signer public key {key_text_hint(text)}: expected a public key (name:base64) "
                    "or the path of a .pub file"
                ) from None
            pub = load_public_key(text)
        return pub.name, CommandSigner(signer_cmd, pub.key)
    if not key_file:
        raise KilnError("no signing key: give a secret key file or a signer command")
    sk = load_secret_key(key_file)  # (checks the mode, and never echoes key text given as a file)
    return sk.name, Ed25519Signer(sk.key)


def sign_path(store: Any, path: str, key_name: str, signer: Signer, info: Any = None) -> str:
    """Add a Nix-style signature ``<key_name>:<base64>`` over valid ``path``'s fingerprint,
    made by ``signer`` (so path signing works with an external signer command too).
    ``info``: ``path``'s ``PathInfo`` if the caller has just queried it (else queried here)."""
    import base64

    info = info or store.query(str(path))
    if info is None:
        raise StoreError(f"cannot sign {path}: not a valid path in the store at {store.root}")
    sig = f"{key_name}:{base64.b64encode(signer.sign(info.fingerprint())).decode()}"
    store.add_signatures(str(path), [sig])
    return sig


def _parse(path: str | StorePath) -> StorePath:
    return path if isinstance(path, StorePath) else StorePath.parse(str(path))


def _dir(store: Any, path: str | StorePath) -> Path:
    return Path(store.root) / "attestations" / _parse(path).hash_part


def file_of(store: Any, path: str | StorePath, kind: str) -> Path:
    """The file that holds (or would hold) ``path``'s attestation of ``kind``."""
    return _dir(store, path) / f"{check_kind(kind)}{SUFFIX}"


def check_writable(sp: StorePath, kind: str, envelope: Envelope) -> None:
    """What every write requires (``write``, ``attestgroup.GroupWriter``): a valid kind,
    an in-toto statement naming ``sp`` as a subject, and at least one signature."""
    check_kind(kind)
    st = parse_statement(envelope.payload)
    if not any(name == sp.base for name, _ in st.subjects):
        names = ", ".join(repr(n) for n, _ in st.subjects)
        raise StoreError(
            f"attestation for {names} cannot be stored as {kind!r} of {sp}: subject does not name it"
        )
    if not envelope.signatures:
        raise StoreError(f"refusing to store an unsigned {kind!r} attestation for {sp}")


def write(store: Any, path: str | StorePath, kind: str, envelope: Envelope) -> Path:
    """Store ``envelope`` as ``path``'s attestation of ``kind`` (replacing an older one);
    return the file written. ``store`` is anything with a ``root`` (a ``LocalStore``)."""
    sp = _parse(path)
    check_writable(sp, kind, envelope)
    d = _dir(store, sp)
    d.mkdir(parents=True, exist_ok=True)
    target = file_of(store, sp, kind)
    # named by the writer's pid: GC removes the ones a killed writer left (``stale_temp``)
    fd, tmp = tempfile.mkstemp(prefix=f".{kind}-{os.getpid()}-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(envelope.dumps().encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(d)
    return target


def read(store: Any, path: str | StorePath, kind: str) -> Envelope | None:
    """The stored envelope of ``kind`` for ``path``, or ``None`` when there is none.
    A file that exists but does not parse raises ``FormatError`` naming it."""
    f = file_of(store, path, kind)
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Envelope.loads(data)
    except FormatError as e:
        raise FormatError(f"{f}: {e}") from None


def list(store: Any, path: str | StorePath) -> builtins.list[str]:  # noqa: A001 - the documented API name
    """Kinds of the attestations stored for ``path``, sorted."""
    d = _dir(store, path)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    kinds = [n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX) and not n.startswith(".")]
    return sorted(k for k in kinds if _KIND_RE.match(k))


def read_all(store: Any, path: str | StorePath) -> dict[str, Envelope]:
    """Every stored attestation of ``path`` by kind (for push/copy/mirror)."""
    out = {}
    for k in list(store, path):
        env = read(store, path, k)
        if env is not None:
            out[k] = env
    return out


def remove(store: Any, path: str | StorePath) -> None:
    """Delete all attestations of ``path`` (the GC calls this when the path goes)."""
    shutil.rmtree(_dir(store, path), ignore_errors=True)


#: ``.<kind>-<pid>-<mkstemp's 8 characters>.tmp`` (a kind may hold digits and ``-``)
_TEMP = re.compile(r"^\..+-(\d+)-[a-z0-9_]{8}\.tmp\Z")


def stale_temp(store: Any, hash_parts: Iterable[str]) -> builtins.list[Path]:
    """Temp files in the attestation dirs of ``hash_parts`` that a killed ``write`` left
    (``locks.left_by_dead_writer``; a name without a pid, from before they carried one,
    goes on age alone)."""
    out: builtins.list[Path] = []
    now = time.time()
    for h in hash_parts:
        try:
            entries = builtins.list(os.scandir(Path(store.root) / "attestations" / h))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.name.startswith(".") and e.name.endswith(".tmp"):
                m = _TEMP.match(e.name)
                if left_by_dead_writer(e, int(m.group(1)) if m else None, now):
                    out.append(Path(e.path))
    return out
