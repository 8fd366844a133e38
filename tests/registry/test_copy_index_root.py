"""``kiln copy --to store --index-root ROOT``: a copy from removable media (or a registry
URL) checks the source's signed index as ``kiln mirror sync --root`` does before it
takes anything (``registry/indexstate``, ``registry/indexcheck``). Before, such a copy
ignored the index: expired (frozen) media, older media after newer (rollback), a
narinfo edited or added after ``publish-index`` were all accepted, their signatures
being valid. The store remembers the versions it saw per pinned root under
``<store root>/index-state/``.

Real media: registry directories written by ``kiln push`` and ``kiln registry
publish-index``, read as ``file://`` or served by ``kiln serve``, and the real CLI; the
expired case runs ``kiln copy`` under libfaketime, a day after publishing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from attestkit import signed_provenance
from regkit import Keys, add_built, kiln, make_store

from kiln.registry import layout
from kiln.registry.attest_transfer import rebuild_listing
from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.registry.storage import FileStorage
from kiln.store import attestations
from kiln.store.localstore import LocalStore


class Media:
    """A build store with ``dep`` <- ``app`` (each with a provenance), pushed signed by
    the build key to the registry directory ``reg`` (the media), whose index the index
    key signs (``publish``)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.build, self.idx = Keys(tmp, "build-1"), Keys(tmp, "index-1")
        self.store = make_store(tmp / "build")
        self.dep = add_built(self.store, tmp, "dep", "dependency")
        self.app = add_built(self.store, tmp, "app", "application", (self.dep,))
        for p in (self.dep, self.app):
            attestations.write(self.store, p, "provenance", signed_provenance(self.store, p, self.build.sk))
        self.reg = tmp / "media"
        self.push(self.app)
        self.publish()
        self.root = tmp / "pinned-root.json"  # the offline machine's copy, taken once
        shutil.copy(self.reg / "index/1.root.json", self.root)

    def push(self, path: str) -> None:
        push(
            self.store,
            [path],
            lambda: open_client(f"file://{self.reg}"),
            sign_key=self.build.sk,
            progress=False,
        )

    def publish(self, *extra: str) -> None:
        r = kiln("registry", "publish-index", "--dir", str(self.reg), "--key", str(self.idx.sk_file), *extra)
        assert r.returncode == 0, r.stderr

    def narinfo(self, path: str) -> Path:
        return self.reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])

    def copy(  # noqa: ANN201 - a CompletedProcess
        self, dest: Path, *paths: str, src: str | None = None, pre: tuple[str, ...] = (), index: bool = True
    ):
        """``kiln copy --from SRC --to store --store DEST --index-root ROOT PATHS`` (the
        media by default; ``pre``: a command to run it under, e.g. faketime; ``index``:
        False leaves out ``--index-root``)."""
        cmd = ["copy", "--from", src or f"file://{self.reg}", "--to", "store", "--store", str(dest)]
        cmd += ["--trusted-key", str(self.build.pk_file), *(paths or [self.app])]
        cmd += ["--index-root", str(self.root)] if index else []
        return subprocess.run(
            [*pre, sys.executable, "-m", "kiln", *cmd], capture_output=True, text=True, timeout=120
        )


def _valid(dest: Path, *paths: str) -> list[bool]:
    with LocalStore.open(dest) as st:
        return [st.is_valid(p) for p in paths]


def test_good_media_are_copied_and_the_versions_remembered(tmp_path: Path) -> None:
    m = Media(tmp_path)
    dest = tmp_path / "offline"
    r = m.copy(dest)
    assert r.returncode == 0, r.stderr
    assert _valid(dest, m.app, m.dep) == [True, True]
    with LocalStore.open(dest) as st:  # the attestations the index lists came along
        assert attestations.list(st, m.app) == ["provenance"] == attestations.list(st, m.dep)
    fp = hashlib.sha256(m.root.read_bytes()).hexdigest()  # what sha256sum prints
    state = json.loads((dest / "index-state" / f"{fp}.json").read_bytes())
    assert (state["timestamp"], state["snapshot"]) == (1, 1)
    m.publish()  # a later publish of the same media: timestamp 2
    assert m.copy(dest).returncode == 0
    state = json.loads((dest / "index-state" / f"{fp}.json").read_bytes())
    assert (state["timestamp"], state["snapshot"]) == (2, 1)


@pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime (faketime) not installed")
def test_expired_media_are_refused_as_frozen(tmp_path: Path) -> None:
    """Published for 1 hour, copied a day later: refused before anything is copied
    (without --index-root the same copy is accepted: the check is the option's)."""
    m = Media(tmp_path)
    m.publish("--timestamp-hours", "1")
    dest = tmp_path / "offline"
    r = m.copy(dest, pre=("faketime", "-f", "+1d"))
    assert r.returncode == 1, r.stderr
    assert "the signed index of file://" in r.stderr and "timestamp expired at" in r.stderr, r.stderr
    assert "the source may be frozen" in r.stderr, r.stderr
    assert _valid(dest, m.app, m.dep) == [False, False]
    assert m.copy(dest, pre=("faketime", "-f", "+1d"), index=False).returncode == 0  # (as before)


def test_older_media_after_newer_are_a_rollback(tmp_path: Path) -> None:
    """Media written at index v1, then the same registry at v2 (a new path added):
    after copying from v2, the v1 media are refused (rollback); a store that never saw
    v2 (its own state) takes them."""
    m = Media(tmp_path)
    old = tmp_path / "old-media"
    shutil.copytree(m.reg, old)
    extra = add_built(m.store, tmp_path, "extra", "more")
    m.push(extra)
    m.publish()
    dest = tmp_path / "offline"
    assert m.copy(dest, extra).returncode == 0
    r = m.copy(dest, m.app, src=f"file://{old}")
    assert r.returncode == 1, r.stderr
    assert "timestamp version 1 is older than the last seen 2 (rollback)" in r.stderr, r.stderr
    assert _valid(dest, m.app, m.dep) == [False, False]
    assert m.copy(dest, m.app, src=f"file://{old}", index=False).returncode == 0  # (as before)
    other = tmp_path / "other-store"
    assert m.copy(other, m.app, src=f"file://{old}").returncode == 0
    assert _valid(other, m.app) == [True]


def test_a_narinfo_edited_after_publish_is_refused_naming_it(tmp_path: Path) -> None:
    """A signature line added to ``dep``'s narinfo after publish-index (still validly
    signed by the build key): the copy of ``app`` fails naming ``dep`` and the cause,
    and copies nothing."""
    m = Media(tmp_path)
    with m.narinfo(m.dep).open("a") as f:
        f.write("Sig: someone-1:" + "A" * 86 + "==\n")
    dest = tmp_path / "offline"
    r = m.copy(dest)
    assert r.returncode == 1, r.stderr
    assert "1 path(s) refused by the signed index, e.g. " + m.dep in r.stderr, r.stderr
    assert "does not hash to the sha256 its signed index lists" in r.stderr, r.stderr
    assert _valid(dest, m.app, m.dep) == [False, False]


def test_a_path_pushed_after_publish_is_not_listed(tmp_path: Path) -> None:
    m = Media(tmp_path)
    late = add_built(m.store, tmp_path, "late", "after the index")
    m.push(late)
    r = m.copy(tmp_path / "offline", late)
    assert r.returncode == 1, r.stderr
    assert f"{late}: not listed in the source's signed index (version 1)" in r.stderr, r.stderr


def test_an_attestation_edited_after_publish_is_refused(tmp_path: Path) -> None:
    """``app``'s provenance replaced on the media by another validly signed one (its
    listing rebuilt to match): the registry's listing agrees, the signed index does
    not. The paths are copied and rooted (their signatures vouch for them), the
    provenance is refused naming the index, exit 1."""
    m = Media(tmp_path)
    h = m.app.rsplit("/", 1)[1][:32]
    newer = signed_provenance(m.store, m.app, m.build.sk, parameters={"swapped": "yes"})
    (m.reg / layout.att_key(h, "provenance")).write_bytes(newer.dumps().encode())
    rebuild_listing(FileStorage(m.reg), h)
    dest = tmp_path / "offline"
    r = m.copy(dest)
    assert r.returncode == 1, r.stderr
    assert f"{m.app}: provenance attestation does not match the sha256 in the signed index" in r.stderr, (
        r.stderr
    )
    assert _valid(dest, m.app, m.dep) == [True, True]
    with LocalStore.open(dest) as st:
        assert attestations.list(st, m.app) == [] and attestations.list(st, m.dep) == ["provenance"]


def test_a_served_registry_is_checked_the_same_way(tmp_path: Path, kiln_server) -> None:  # noqa: ANN001
    """From a registry URL (``kiln serve`` of the media): a good copy takes the paths and
    their attestations; an edited narinfo is refused as from a directory."""
    m = Media(tmp_path)
    srv = kiln_server("--dir", str(m.reg))
    dest = tmp_path / "offline"
    r = m.copy(dest, src=srv.url)
    assert r.returncode == 0, r.stderr
    with LocalStore.open(dest) as st:
        assert attestations.list(st, m.app) == ["provenance"]
    late = add_built(m.store, tmp_path, "late", "after the index")
    m.push(late)
    r = m.copy(dest, late, src=srv.url)
    assert r.returncode == 1 and "not listed in the source's signed index" in r.stderr, r.stderr


def test_a_wrong_root_or_destination_is_refused(tmp_path: Path) -> None:
    """Another registry's root does not verify this index (nothing copied, no state
    kept for it); --index-root between registries is a usage error."""
    m = Media(tmp_path)
    other = tmp_path / "other"
    assert kiln("registry", "init", "--dir", str(other)).returncode == 0
    k = Keys(tmp_path, "other-index-1")
    assert kiln("registry", "publish-index", "--dir", str(other), "--key", str(k.sk_file)).returncode == 0
    shutil.copy(other / "index/1.root.json", m.root)
    dest = tmp_path / "offline"
    r = m.copy(dest)
    assert r.returncode == 1 and "valid signature(s) by distinct keys of the timestamp role" in r.stderr, (
        r.stderr
    )
    assert _valid(dest, m.app) == [False] and not list((dest / "index-state").glob("*.json"))
    r = kiln(
        "copy",
        "--from",
        f"file://{m.reg}",
        "--to",
        f"file://{tmp_path}/r2",
        "--index-root",
        str(m.root),
        m.app,
    )
    assert r.returncode == 2 and "--index-root needs --to store" in r.stderr, r.stderr
