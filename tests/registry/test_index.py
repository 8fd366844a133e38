"""Signed index: publication, verification, rollback, freeze, mix-and-match, rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from kiln.registry import index as ix
from kiln.registry import indexbuild
from kiln.registry.publish import publish_index, rotate_root
from kiln.registry.storage import open_storage
from kiln.store.signing import SecretKey


def _fetcher(storage):
    async def fetch(key: str) -> bytes | None:
        return storage.read(key)

    return fetch


def _update(storage, state, now=None):
    return asyncio.run(ix.update(_fetcher(storage), state, now))


def _narinfo(storage, h: str) -> None:
    storage.put_bytes(
        f"{h}.narinfo",
        f"StorePath: /kiln/store/{h}-x\nURL: nar/a.nar.zst\nCompression: zstd\nFileHash: sha256:00\nFileSize: 1\nNarHash: sha256:00\nNarSize: 1\nReferences: \n".encode(),
    )


H1, H2 = "0" * 32, "1" * 32


@pytest.fixture
def reg(tmp_path: Path):
    s = open_storage(tmp_path / "reg")
    s.put_bytes("nix-cache-info", b"StoreDir: /kiln/store\n")
    return s


def test_publish_and_verify(reg) -> None:
    key = SecretKey.generate("idx-1")
    _narinfo(reg, H1)
    pub = publish_index(reg, key)
    assert pub.index_version == 1
    state = ix.TrustState.pin(reg.read("index/root.json"))
    vi = _update(reg, state)
    assert set(vi.index["paths"]) == {H1} and vi.index["store_dir"] == "/kiln/store"
    # no change: timestamp moves, index does not
    pub2 = publish_index(reg, key)
    assert (pub2.index_version, pub2.timestamp_version) == (1, 2)
    _narinfo(reg, H2)
    assert publish_index(reg, key).index_version == 2
    vi = _update(reg, state)
    assert set(vi.index["paths"]) == {H1, H2} and state.timestamp_version == 3


def test_rollback_rejected(reg) -> None:
    key = SecretKey.generate("idx-1")
    _narinfo(reg, H1)
    publish_index(reg, key)
    old_ts = reg.read("index/timestamp.json")
    state = ix.TrustState.pin(reg.read("index/root.json"))
    _narinfo(reg, H2)
    publish_index(reg, key)
    _update(reg, state)
    reg.put_bytes("index/timestamp.json", old_ts)  # attacker replays the old timestamp
    with pytest.raises(ix.RollbackError):
        _update(reg, state)


def test_freeze_rejected(reg) -> None:
    key = SecretKey.generate("idx-1")
    publish_index(reg, key)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    later = ix.utcnow() + dt.timedelta(days=2)  # the 24 h timestamp has expired
    with pytest.raises(ix.FreezeError):
        _update(reg, state, later)


def test_mix_and_match_rejected(reg) -> None:
    key = SecretKey.generate("idx-1")
    _narinfo(reg, H1)
    publish_index(reg, key)
    v1_index = reg.read("index/1.index.json")
    _narinfo(reg, H2)
    publish_index(reg, key)
    reg.put_bytes("index/2.index.json", v1_index)  # serve an old index under the new name
    state = ix.TrustState.pin(reg.read("index/root.json"))
    with pytest.raises(ix.MixAndMatchError):
        _update(reg, state)


def test_bad_signature_rejected(reg) -> None:
    key, evil = SecretKey.generate("idx-1"), SecretKey.generate("idx-1")  # same name, other key
    publish_index(reg, key)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    signed = json.loads(reg.read("index/timestamp.json"))["signed"]
    signed["version"] += 5
    reg.put_bytes("index/timestamp.json", ix.sign_envelope(signed, [evil]))
    with pytest.raises(ix.SignatureError):
        _update(reg, state)


def test_root_rotation_chain(reg) -> None:
    old, new = SecretKey.generate("idx-1"), SecretKey.generate("idx-2")
    publish_index(reg, old)
    state = ix.TrustState.pin(reg.read("index/root.json"))  # client pins root v1
    _update(reg, state)
    assert rotate_root(reg, old, new) == 2
    publish_index(reg, new)
    vi = _update(reg, state)
    assert state.root["version"] == 2 and vi.files[0][0] == "index/2.root.json"
    # a root v3 signed only by a stranger is refused
    stranger = SecretKey.generate("idx-3")
    root3 = indexbuild.make_root(3, {r: [stranger.public()] for r in ix.ROLES}, ix.utcnow())
    reg.put_bytes("index/3.root.json", ix.sign_envelope(root3, [stranger]))
    with pytest.raises(ix.SignatureError):
        _update(reg, state)


def test_an_expired_root_in_the_middle_of_the_chain_is_walked(reg) -> None:
    """As in TUF, only the last root of the chain must be fresh: a client that was
    offline while root v2 came and expired still walks v1 -> v2 -> v3."""
    k1, k2, k3 = (SecretKey.generate(f"idx-{i}") for i in (1, 2, 3))
    publish_index(reg, k1)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    _update(reg, state)
    long_ago = ix.utcnow() - dt.timedelta(days=4000)
    root2 = ix.sign_envelope(
        indexbuild.make_root(2, {r: [k2.public()] for r in ix.ROLES}, long_ago), [k1, k2]
    )
    reg.put_bytes("index/2.root.json", root2)
    reg.put_bytes("index/root.json", root2)
    assert rotate_root(reg, k2, k3) == 3
    publish_index(reg, k3)
    _update(reg, state)
    assert state.root["version"] == 3
    # but an expired last root is a freeze
    root4 = ix.sign_envelope(indexbuild.make_root(4, {r: [k3.public()] for r in ix.ROLES}, long_ago), [k3])
    reg.put_bytes("index/4.root.json", root4)
    with pytest.raises(ix.FreezeError, match="root expired"):
        _update(reg, state)


_SLOW_PUBLISHER = """
import sys, time
from kiln.registry.publish import publish_index
from kiln.registry.storage import open_storage
from kiln.store.keyfiles import load_secret_key
storage = open_storage(sys.argv[1])
delay = float(sys.argv[3])
put = storage.put_bytes
def slow(key, data, **kw):  # a slow disk: every file takes a while to write
    if key.startswith("index/"):
        print("writing", key, file=sys.stderr, flush=True)
        time.sleep(delay)
    return put(key, data, **kw)
storage.put_bytes = slow
print(publish_index(storage, load_secret_key(sys.argv[2])).timestamp_version)
"""


def test_concurrent_publishers_in_two_processes_are_serialised(reg, tmp_path: Path) -> None:
    """Two processes publishing at once (two server workers, or the CLI beside a server)
    must not both write version v+1: the second waits for the first, and the index
    verifies (before the directory lock, 8 in 10 such races broke it)."""
    import subprocess
    import sys

    from clikit import line_within

    key = SecretKey.generate("idx-1")
    key_file = tmp_path / "idx.sec"
    key_file.write_text(key.to_text())
    key_file.chmod(0o600)
    _narinfo(reg, H1)
    publish_index(reg, key)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    _update(reg, state)
    _narinfo(reg, H2)
    root = str(tmp_path / "reg")
    cmd = [sys.executable, "-c", _SLOW_PUBLISHER, root, str(key_file)]
    first = subprocess.Popen([*cmd, "0.15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert line_within(first.stderr, 30).startswith("writing index/")  # it holds the lock now
    second = subprocess.Popen([*cmd, "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    versions = sorted(int(p.communicate(timeout=60)[0]) for p in (first, second))
    assert versions == [2, 3]
    vi = _update(reg, state)
    assert set(vi.index["paths"]) == {H1, H2} and state.timestamp_version == 3


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"narinfo_sha256": "0" * 64}, "'path' must be"),
        ({"path": "/kiln/store/" + "1" * 32 + "-x", "narinfo_sha256": "0" * 64}, "'path' must be"),
        ({"path": f"/kiln/store/{H1}-x", "narinfo_sha256": "zz"}, "narinfo_sha256"),
        (
            {
                "path": f"/kiln/store/{H1}-x",
                "narinfo_sha256": "0" * 64,
                "attestations": {"BAD KIND": "0" * 64},
            },
            "kind",
        ),
        ({"path": f"/kiln/store/{H1}-x", "narinfo_sha256": "0" * 64, "attestations": []}, "'attestations'"),
    ],
)
def test_a_signed_but_malformed_path_table_is_an_index_error(reg, entry, says) -> None:
    """Mirrors read the table's fields without further checks: a table its signer got
    wrong must fail verification with a clear error, not a KeyError in the mirror."""
    from kiln.registry.publish import init_root

    key = SecretKey.generate("idx-1")
    init_root(reg, key)
    pub = indexbuild.build_metadata(
        {H1: entry}, "/kiln/store", key, prev_timestamp=None, prev_index_paths=None
    )
    for k, data in pub.files:
        reg.put_bytes(k, data)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    with pytest.raises(ix.IndexError_, match=says):
        _update(reg, state)


def _mangled(data: bytes, change) -> bytes:  # noqa: ANN001 - change(envelope) edits in place
    env = json.loads(data)
    change(env)
    return ix.canonical(env)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.__setitem__("signatures", ["x"]),  # a signature that is not an object
        lambda e: e["signatures"].__setitem__(0, {"keyid": ["a"], "sig": "x"}),  # unhashable key id
        lambda e: e["signed"]["roles"].pop("root"),
        lambda e: e["signed"]["roles"]["root"].__setitem__("threshold", "1"),
        lambda e: e["signed"].__setitem__("keys", []),
        lambda e: e["signed"]["keys"].__setitem__(next(iter(e["signed"]["keys"])), {"public": "garbage"}),
        # a threshold of 0 and no signature: it must not pin as "self-signed"
        lambda e: (e["signed"]["roles"]["root"].__setitem__("threshold", 0), e.__setitem__("signatures", [])),
    ],
)
def test_a_malformed_root_is_an_index_error(reg, change) -> None:
    """The root comes from the source (pinned from it, or the next one in the chain): a
    wrong shape is a verification failure naming it, not an internal error."""
    key = SecretKey.generate("idx-1")
    publish_index(reg, key)
    with pytest.raises(ix.IndexError_, match="^root: "):
        ix.TrustState.pin(_mangled(reg.read("index/root.json"), change))


@pytest.mark.parametrize(
    "meta, says",
    [
        ({}, "KeyError"),
        ({"snapshot.json": {"version": "../../x", "length": 1, "sha256": "0"}}, "needs an integer version"),
        ({"snapshot.json": {"version": 1.0, "length": 1, "sha256": "0"}}, "needs an integer version"),
        ({"snapshot.json": {"version": 1, "sha256": "0"}}, "KeyError: 'length'"),
        ({"snapshot.json": []}, "TypeError"),
    ],
)
def test_a_signed_but_malformed_timestamp_is_an_index_error(reg, meta, says) -> None:
    """A timestamp signed by the right key with a wrong ``meta`` (whose version names
    the files fetched next) fails as an index error."""
    key = SecretKey.generate("idx-1")
    publish_index(reg, key)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    signed = json.loads(reg.read("index/timestamp.json"))["signed"]
    signed["meta"] = meta
    reg.put_bytes("index/timestamp.json", ix.sign_envelope(signed, [key]))
    with pytest.raises(ix.IndexError_, match=f"^timestamp: .*{says}"):
        _update(reg, state)
