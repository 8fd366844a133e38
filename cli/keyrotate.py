"""``kiln key rotate`` and ``kiln key revoke``.

Rotation follows Nix's naming convention (``name-1`` → ``name-2``): the new key is
generated next to the old one, becomes the default build key of the store (``--store
DIR``, else ``$KILN_HOME``) if the old one was (which then stays as ``keys/<old
name>.sec``: rotating never destroys a key). Everything is checked before the first
write, so a refused rotation writes nothing: the old key must be a regular file (its
successor goes beside it: never under ``/dev`` for a pipe), the successor's name one
``kiln key generate`` accepts, and every key file to write or replace absent or a regular
file (a symbolic link ``default.sec`` is refused, not half rotated).

``--resign`` signs with the new key every valid path of that store that carries a valid
signature by the old key *and was made in this store* (built or added here:
``store.madehere``, Nix's ``ultimate``). A path that was imported (copied, substituted)
while the old key was trusted is left alone, as is one of unknown origin (registered
before kiln recorded it): if the old key leaked, whoever holds it may have made and
signed it, and re-signing would launder it under the new key. They are listed, with how
to sign those the operator trusts (``kiln store sign --key NEW.sec PATH...``). Old
signatures stay until removed (``kiln store unsign --key OLD.pub``) or the key is revoked,
so verifiers can move over gradually. ``--resign`` with no store there (or one that
cannot be written) is an error before anything is written.

Revocation is a statement in a verification policy (``store/policy.py``): ``kiln key
revoke`` appends a ``[[revoked]]`` entry with the time of revocation. A *compromised*
key (the default) then fails everything it ever signed, whatever time it claims; a
*retired* key still counts for attestations signed before the revocation. The policy is
re-read after the change, so a malformed result is never left behind. Whoever reads the
policy next sees the revocation: ``kiln verify --policy`` at its next run, and a running
``kiln serve --policy FILE`` at its next ``POST /verify`` (it re-reads the file for every
review; no restart or signal needed), which ``revoke`` says on stderr.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore
    from kiln.store.pathinfo import PathInfo
    from kiln.store.signing import PublicKey, SecretKey


def next_name(name: str) -> str:
    """``cache-1`` → ``cache-2``; a name without a numeric suffix gets ``-2``."""
    m = re.fullmatch(r"(.*)-(\d+)", name)
    return f"{m.group(1)}-{int(m.group(2)) + 1}" if m else f"{name}-2"


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``rotate`` did: the new key and its file; with ``--resign``, how many paths made
    in this store it signed, and the paths the old key signed that it left alone, as
    imported or of unknown origin (``store.madehere``)."""

    new_file: Path
    key: SecretKey
    old_name: str
    resigned: int = 0
    imported: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()


def rotate(home: Path, old_file: Path, resign: bool) -> Rotation:
    """Make the successor of the key in ``old_file`` beside it (and the default key of the
    store at ``home`` if the old one was); with ``resign``, sign that store's paths as the
    module docstring says. Everything is checked before the first write."""
    from kiln.store.keyfiles import load_secret_key, write_public_key, write_secret_key
    from kiln.store.signing import SecretKey
    from kiln.store.sigshield import shielded

    from .cmd_key import check_key_name

    _check_key_input(old_file)
    old = load_secret_key(old_file)
    name = check_key_name(next_name(old.name), f"the successor of key {old.name!r}")
    new_file = old_file.with_name(f"{name}.sec")
    if os.path.lexists(new_file):
        raise KilnError(f"{new_file} exists already: rotate from the newest key")
    writes = [new_file.with_suffix(".pub")]
    default = home / "keys" / "default.sec"
    was_default = default.exists() and load_secret_key(default).key == old.key
    # where the old key stays when it was the default, decided before any write
    kept = _keep_as(default.parent, old) if was_default else None
    if was_default:
        writes += [default, default.with_suffix(".pub")]
    if kept is not None:
        writes += [kept, kept.with_suffix(".pub")]
    for target in writes:
        _check_replaceable(target, default)
    store = _store_to_resign(home) if resign else None
    try:
        new = SecretKey.generate(name)
        # a ^C or SIGTERM meanwhile waits for every key file (milliseconds): one landing
        # between two left a default.sec beside the old default.pub, and a rerun rotated
        # again
        with shielded:
            if kept is not None:  # rotating "default" itself: its old key stays, under its name
                write_secret_key(kept, old)
                write_public_key(kept.with_suffix(".pub"), old.public(), overwrite=True)
            write_secret_key(new_file, new)
            write_public_key(new_file.with_suffix(".pub"), new.public(), overwrite=True)
            if was_default:
                write_secret_key(default, new, overwrite=True)
                write_public_key(default.with_suffix(".pub"), new.public(), overwrite=True)
        if store is None:
            return Rotation(new_file, new, old.name)
        return _resign(store, old, new, new_file)
    finally:
        if store is not None:
            store.close()


def _check_key_input(path: Path) -> None:
    """Refuse to rotate a key that is not a regular file of its own: its successor is
    written beside it, which for a pipe (``<(cat k.sec)``, ``/dev/stdin``) would be under
    ``/dev``; for a symbolic link, beside the link, not the key."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KilnError(f"no key file {path}") from None
    where = (os.path.abspath(path), os.path.realpath(path))
    if not stat.S_ISREG(st.st_mode) or any(w.startswith(("/dev/", "/proc/")) for w in where):
        raise KilnError(
            f"{path} is not a regular key file (a pipe, a device, or under /dev or /proc): rotation "
            "writes the new key beside the key it rotates, so give the key's own file "
            "(e.g. $KILN_HOME/keys/NAME.sec); nothing was written"
        )
    if os.path.islink(path):
        raise KilnError(
            f"{path} is a symbolic link (to {os.readlink(path)}): give the key file itself (rotation "
            "writes the new key beside the key it rotates); nothing was written"
        )


def _check_replaceable(path: Path, default: Path) -> None:
    """Refuse, before anything is written, a key file that rotation would write or replace
    and ``keyfiles`` would refuse to (a symbolic link, a directory, a device): found
    only when it came to it, the new key was already written and the old default left."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        return
    what = f"a symbolic link (to {os.readlink(path)})" if stat.S_ISLNK(st.st_mode) else "not a regular file"
    hint = (
        f': make it a regular file holding the key (cp --remove-destination "$(readlink -f {path})" {path})'
        if stat.S_ISLNK(st.st_mode)
        else ": remove it"
    )
    mine = path in (default, default.with_suffix(".pub"))
    why = "rotating the store's default key replaces it" if mine else "rotation writes it"
    raise KilnError(
        f"{path} is {what}; {why}, and kiln replaces only regular key files{hint}, then rotate "
        "again; nothing was written"
    )


def _store_to_resign(home: Path) -> LocalStore:
    """The store at ``home``, open for ``--resign``; an error (before any key is written)
    if there is none or it cannot be written."""
    from kiln.store.localstore import LocalStore

    if not (home / "config.json").exists():
        raise KilnError(
            f"--resign: no kiln store at {home} (name the store with --store DIR); nothing was written"
        )
    store = LocalStore.open(home, create=False)
    if store.read_only is not None:
        store.close()
        raise KilnError(f"--resign: {store.read_only}; nothing was written")
    return store


def _resign(store: LocalStore, old: SecretKey, new: SecretKey, new_file: Path) -> Rotation:
    """Sign with ``new`` every path made in ``store`` that carries a valid signature by
    ``old`` (under its name); count the others so signed that were not made here."""
    from kiln.store.madehere import made_here, made_here_all
    from kiln.store.signing import sign_info

    oldpub = old.public()

    def signed_by_old(info: PathInfo | None) -> bool:
        # (``verify`` checks the key name as well as the signature)
        return info is not None and any(oldpub.verify(info.fingerprint(), s) for s in info.sigs)

    mine: list[str] = []
    imported: list[str] = []
    unknown: list[str] = []
    for p, made in made_here_all(store.conn).items():
        if signed_by_old(store.query(p)):
            (mine if made else imported if made is False else unknown).append(p)
    store.keep(mine)  # (a path a GC deleted before this is skipped below)
    count = 0
    for p in mine:
        # judged again now it is kept: a path GC took in between and that came back
        # imported (maybe other bytes the old key signed) must not get the new key
        info = store.query(p)
        if info is not None and made_here(store.conn, p) is True and signed_by_old(info):
            store.add_signatures(p, [sign_info(info, new)])
            count += 1
    return Rotation(new_file, new, old.name, count, tuple(imported), tuple(unknown))


def _keep_as(keys: Path, old: SecretKey) -> Path | None:
    """Where the old default key is kept: ``<name>.sec``, unless that is ``default.sec``
    itself or holds another key; then ``<name>.retired-N.sec``. None if ``<name>.sec``
    already holds it."""
    first = keys / f"{old.name}.sec"
    if first.name != "default.sec":
        if not first.exists():
            return first
        from kiln.store.keyfiles import load_secret_key

        if load_secret_key(first).key == old.key:
            return None
    n = 1
    while (keys / f"{old.name}.retired-{n}.sec").exists():
        n += 1
    return keys / f"{old.name}.retired-{n}.sec"


def revoke(policy_file: Path, public_key: str, compromised: bool, reason: str, at: datetime | None) -> str:
    """Append a ``[[revoked]]`` entry to ``policy_file`` (created if missing); return it.
    Once the file is replaced, says on stderr who picks the change up, and when."""
    from kiln.store import policy
    from kiln.store.errors import FormatError
    from kiln.store.signing import PublicKey, key_text_hint

    try:  # written from the parsed key: raw text could inject TOML (or be a secret key)
        key_text = PublicKey.parse(public_key.strip()).to_text()
    except FormatError as e:
        raise policy.PolicyError(
            f"not a public key 'name:base64': {key_text_hint(public_key)} ({e})"
        ) from None
    when = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = (
        "\n[[revoked]]\n"
        f'key = "{key_text}"\n'
        f"revoked_at = {when}\n"
        f"compromised = {'true' if compromised else 'false'}\n"
        + (f'reason = "{_toml_escape(reason)}"\n' if reason else "")
    )
    try:
        old = policy_file.read_text() if policy_file.exists() else ""
    except UnicodeDecodeError as e:
        raise policy.PolicyError(f"{policy_file}: not a policy file (not UTF-8 at byte {e.start})") from None
    text = old + ("" if old.endswith("\n") or not old else "\n") + entry
    # never write a policy that does not load; key files are relative to the policy's
    # directory, as when it is loaded
    parsed = policy.parse(text, base_dir=policy_file.resolve().parent, source=str(policy_file))
    from .outfile import write_output

    # readable as before by whoever serves or verifies with it
    write_output(policy_file, text, mode=None)
    # (stdout is the entry itself, which scripts may append elsewhere)
    print(
        f"revoked in {policy_file} (sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}...): "
        "`kiln verify --policy` applies it from its next run, and a running `kiln serve --policy` "
        "from its next POST /verify (it re-reads the file for every review: no restart needed)",
        file=sys.stderr,
    )
    listed = [p for p in ("signing", "provenance", "rebuilders") if _lists(getattr(parsed, p), key_text)]
    if listed:  # harmless (the revocation wins) but confusing to whoever reads the policy next
        counts = (
            "the key counts for nothing at all"
            if compromised
            else f"its path signatures count for nothing, its attestations only if signed before {when}"
        )
        print(
            f"note: {policy_file} still lists this key under [keys] {', '.join(listed)}; the revocation "
            f"overrides that ({counts}): remove it there when convenient",
            file=sys.stderr,
        )
    return entry


def _lists(keys: tuple[PublicKey, ...], key_text: str) -> bool:
    """Whether ``keys`` holds the key of ``key_text``, under any name."""
    from kiln.store.signing import PublicKey

    raw = PublicKey.parse(key_text).key
    return any(k.key == raw for k in keys)


def _toml_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
