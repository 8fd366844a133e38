"""``kiln key rotate`` and ``kiln key revoke``.

Rotation follows Nix's naming convention (``name-1`` → ``name-2``): the new key is
generated next to the old one, becomes the store's default build key if the old one
was (which then stays as ``keys/<old name>.sec``: rotating never destroys a key), and with ``--resign`` every valid path that carries a signature by the old key is
signed by the new one as well (old signatures stay until the key is revoked, so
verifiers can move over gradually).

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
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError

if TYPE_CHECKING:
    from kiln.store.signing import SecretKey


def next_name(name: str) -> str:
    """``cache-1`` → ``cache-2``; a name without a numeric suffix gets ``-2``."""
    m = re.fullmatch(r"(.*)-(\d+)", name)
    return f"{m.group(1)}-{int(m.group(2)) + 1}" if m else f"{name}-2"


def rotate(home: Path, old_file: Path, resign: bool) -> tuple[Path, object, int]:
    """Make the successor of the key in ``old_file``; return (new file, key, paths re-signed)."""
    from kiln.store.keyfiles import load_secret_key, write_public_key, write_secret_key
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import SecretKey, sign_info

    old = load_secret_key(old_file)
    new = SecretKey.generate(next_name(old.name))
    new_file = old_file.with_name(f"{new.name}.sec")
    if new_file.exists():
        raise KilnError(f"{new_file} exists already: rotate from the newest key")
    default = home / "keys" / "default.sec"
    was_default = default.exists() and load_secret_key(default).key == old.key
    # where the old key stays when it was the default, decided before any write
    kept = _keep_as(default.parent, old) if was_default else None
    if kept is not None:  # rotating "default" itself: its old key stays, under its name
        write_secret_key(kept, old)
        write_public_key(kept.with_suffix(".pub"), old.public(), overwrite=True)
    write_secret_key(new_file, new)
    write_public_key(new_file.with_suffix(".pub"), new.public(), overwrite=True)
    if was_default:
        write_secret_key(default, new, overwrite=True)
        write_public_key(default.with_suffix(".pub"), new.public(), overwrite=True)
    count = 0
    if resign and (home / "config.json").exists():
        store = LocalStore.open(home, create=False)
        try:
            prefix = old.name + ":"
            oldpub = old.public()
            for p in store.all_paths():
                info = store.query(p)
                if info and any(
                    s.startswith(prefix) and oldpub.verify(info.fingerprint(), s) for s in info.sigs
                ):
                    store.add_signatures(p, [sign_info(info, new)])
                    count += 1
        finally:
            store.close()
    return new_file, new, count


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
    policy.parse(text, base_dir=policy_file.resolve().parent, source=str(policy_file))
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
    return entry


def _toml_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
