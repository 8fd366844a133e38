"""Throwaway OpenPGP keys and signed apt lists for the Release verification tests.

Real ``gpg`` makes the keys and signatures (``scripts/setup-debian.sh`` installs it), so
the verifier is tested against what an archive's signing does, with a home directory of
its own per key (short paths: gpg-agent's socket path has a length limit).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    home: Path
    fingerprint: str
    keyring: Path  # binary export
    armored: Path  # ASCII-armored export

    def gpg(self, *args: str, data: bytes | None = None) -> bytes:
        proc = subprocess.run(
            ["gpg", "--batch", "--yes", "--quiet", "--homedir", str(self.home), *args],
            input=data,
            capture_output=True,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    def clearsign(self, text: bytes) -> bytes:
        return self.gpg("--clearsign", "--digest-algo", "SHA256", data=text)

    def detach_sign(self, text: bytes) -> bytes:
        return self.gpg("--detach-sign", "--digest-algo", "SHA256", data=text)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def make_key(name: str, out: Path, expire: str = "never") -> Key:
    home = Path(tempfile.mkdtemp(prefix="kg", dir="/tmp"))
    os.chmod(home, 0o700)
    key = Key(home, "", out / f"{name}.gpg", out / f"{name}.asc")
    key.gpg(
        "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519", "sign", expire
    )
    colons = key.gpg("--with-colons", "--list-keys").decode()
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    key.keyring.write_bytes(key.gpg("--export"))
    key.armored.write_bytes(key.gpg("--export", "--armor"))
    return Key(home, fpr, key.keyring, key.armored)


#: the name prefix apt gives the lists of suite "s" of archive http://h/debian
PREFIX = "h_debian_dists_s_"
INDEX = PREFIX + "main_binary-amd64_Packages"


def release_text(packages: bytes, *extra: str, path: str = "main/binary-amd64/Packages") -> bytes:
    """A Release listing ``packages`` at ``path`` (plus ``extra`` header lines)."""
    digest = hashlib.sha256(packages).hexdigest()
    lines = ["Origin: Test", "Codename: s", *extra, "SHA256:", f" {digest} {len(packages)} {path}"]
    return ("\n".join(lines) + "\n").encode()


def stanza(name: str, version: str = "1.0") -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Filename: pool/main/{name}_{version}_amd64.deb\nSize: 1\nSHA256: {'ab' * 32}\n"
    )
