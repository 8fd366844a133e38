"""Hostile input to the attestation batch endpoints of a real ``kiln serve``, and hostile
answers to the client: each entry of an upload batch is admitted exactly as a single
``PUT`` would be (a bad signature among good ones: only it is refused), a framing error
refuses the whole batch and writes nothing, and malformed, oversized or cut requests and
answers are 4xx / ``RegistryError``, never a crash or a half-written file."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path

import pytest
from attkit import Registry, attested_store, hp, kiln, provenance
from regkit import request

from kiln.registry.httpclient import HttpClient

UPLOAD, FETCH = "/attestation-upload-batch", "/attestation-batch"
CT = {"Content-Type": "application/json"}


@pytest.fixture
def pub(tmp_path, keys, kiln_server):  # noqa: ANN001, ANN201
    """7 paths published (narinfos) without their attestations; (store, paths, registry)."""
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 7)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    atts = store.root / "attestations"
    atts.rename(tmp_path / "aside")
    r = kiln("push", *paths, "--to", reg.url, "--token", reg.token, "--sign-key", str(keys.sk_file), "--store", str(store.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    (tmp_path / "aside").rename(atts)
    return store, paths, reg


def frame(*entries: tuple[str, str, bytes]) -> bytes:
    return b"".join(b"%d %s %s\n%s" % (len(d), h.encode(), k.encode(), d) for h, k, d in entries)


def upload(reg: Registry, body: bytes, token: str | None = "", **headers: str) -> tuple[int, bytes]:
    h = {"Authorization": f"Bearer {reg.token if token == '' else token}"} if token is not None else {}
    st, _, out = request(reg.url + UPLOAD, "POST", body, {**h, **headers})
    return st, out


def att_files(reg: Registry) -> list[Path]:
    return sorted(reg.dir.glob("*.att/*.dsse.json"))


def nothing_written(reg: Registry) -> None:
    assert att_files(reg) == [] and list(reg.dir.glob("*.att/index.json")) == []
    assert list((reg.dir / ".kiln" / "tmp").iterdir()) == []


def test_each_entry_is_judged_as_a_single_put(pub, keys, other_keys) -> None:
    store, p, reg = pub
    env = [provenance(store, x, keys.sk).dumps().encode() for x in p]
    d = json.loads(env[2])
    sig = bytearray(base64.b64decode(d["signatures"][0]["sig"]))
    sig[0] ^= 1
    d["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    forged = json.dumps(d).encode()  # a trusted key's signature, broken
    unpublished = "0" * 32
    entries = [
        (hp(p[0]), "provenance", env[0]),  # good
        (hp(p[1]), "provenance", provenance(store, p[1], other_keys.sk).dumps().encode()),  # untrusted
        (hp(p[2]), "provenance", forged),  # bad signature
        (hp(p[4]), "provenance", env[3]),  # names another path
        (unpublished, "provenance", env[5]),  # no narinfo
        (hp(p[5]), "provenance", env[5]),  # good
        (hp(p[0]), "provenance", env[0]),  # given twice
        (hp(p[3]), "Bad", env[3]),  # not a kind
        (hp(p[3]), "sbom", b"x" * ((4 << 20) + 1)),  # over 4 MiB: skipped
        ("not-a-hash", "provenance", env[6]),
        (hp(p[6]), "provenance", env[6]),  # good, after all that
    ]
    st, out = upload(reg, frame(*entries))
    assert st == 200, out
    res = json.loads(out)["results"]
    assert [(r["hash"], r["kind"]) for r in res] == [(h, k) for h, k, _ in entries]
    assert [r["status"] for r in res] == [201, 403, 403, 400, 409, 201, 400, 400, 413, 400, 201]
    assert "twice" in res[6]["message"] and "trusted" in res[1]["message"]
    good = {0: p[0], 5: p[5], 10: p[6]}
    assert att_files(reg) == sorted(reg.dir / f"{hp(x)}.att" / "provenance.dsse.json" for x in good.values())
    for n, x in good.items():
        h = hp(x)
        st, _, body = request(f"{reg.url}/{h}.att/provenance.dsse.json")
        assert st == 200 and body == entries[n][2]
        listing = json.loads((reg.dir / f"{h}.att" / "index.json").read_bytes())["kinds"]
        assert list(listing) == ["provenance"]
    assert list((reg.dir / ".kiln" / "tmp").iterdir()) == []
    # the single PUT answers the refused ones alike (and writes nothing either; a bad
    # kind or hash part makes no attestation URL at all: 404 there)
    for n in (1, 2, 3, 4):
        h, k, data = entries[n]
        st, _, _ = request(
            f"{reg.url}/{h}.att/{k}.dsse.json", "PUT", data, {"Authorization": f"Bearer {reg.token}"}
        )
        assert st == res[n]["status"], n
    assert len(att_files(reg)) == 3
    # again: identical ones are 200
    st, out = upload(reg, frame(entries[0], entries[5]))
    assert [r["status"] for r in json.loads(out)["results"]] == [200, 200]


def test_framing_errors_refuse_the_whole_batch(pub, keys) -> None:
    store, p, reg = pub
    good = (hp(p[0]), "provenance", provenance(store, p[0], keys.sk).dumps().encode())
    body = frame(good)
    assert upload(reg, body, token=None)[0] == 401
    assert upload(reg, body, token="kiln_nope_nope")[0] == 401
    assert upload(reg, body, **{"Content-Length": str((64 << 20) + 1)})[0] == 413
    assert upload(reg, body + b"abc def\n")[0] == 400  # a malformed header after a good entry
    assert upload(reg, body + b"12 x\n")[0] == 400
    assert upload(reg, body + b"1000 " + good[0].encode() + b" provenance\n{}")[0] == 400  # cut
    assert upload(reg, body + b"x" * 300_000)[0] == 400  # a header line without end
    assert upload(reg, body + b"%d %s sbom\n" % ((64 << 20), good[0].encode()))[0] == 413
    assert upload(reg, body + (b"0 " + good[0].encode() + b" k\n") * 2000)[0] == 413
    nothing_written(reg)
    st, out = upload(reg, b"")  # (an empty batch is fine)
    assert st == 200 and json.loads(out) == {"results": []}


def test_fetch_requests_are_checked(pub, keys) -> None:
    store, p, reg = pub
    data = provenance(store, p[0], keys.sk).dumps().encode()
    st, _, out = request(f"{reg.url}/{hp(p[0])}.att/provenance.dsse.json", "PUT", data, {"Authorization": f"Bearer {reg.token}"})  # fmt: skip
    assert st == 201, out

    def fetch(body: bytes) -> tuple[int, bytes]:
        st, _, out = request(reg.url + FETCH, "POST", body, CT)
        return st, out

    ask = {"attestations": [[hp(p[0]), "provenance"], [hp(p[1]), "provenance"], [hp(p[0]), "sbom"]]}
    st, out = fetch(json.dumps(ask).encode())
    h0, h1 = hp(p[0]), hp(p[1])
    assert st == 200
    assert out == b"%s provenance %d\n%s%s provenance -\n%s sbom -\n" % (h0.encode(), len(data), data, h1.encode(), h0.encode())  # fmt: skip
    assert fetch(b"x" * ((1 << 20) + 1))[0] == 413
    for bad in (b"{nope", b"[]", b'{"attestations": {}}', b'{"attestations": [["a", "b", "c"]]}',
                b'{"attestations": [[1, 2]]}', b'{"attestations": [["%s", "../../x"]]}' % h0.encode(),
                b'{"attestations": [["%s", "A"]]}' % h0.encode(), b'{"attestations": [["../x", "provenance"]]}',
                b"[" * 100_000):  # fmt: skip
        st, out = fetch(bad)
        assert st == 400 and out.startswith(b"error: malformed attestation batch request"), (bad[:40], out)
    assert fetch(json.dumps({"attestations": [[h0, "provenance"]] * 4097}).encode())[0] == 413
    assert request(reg.url + FETCH, "GET")[0] == 404


class _Fake:
    """A server answering ``POST /attestation-batch`` with ``answer`` (a thread)."""

    def __init__(self, answer: bytes) -> None:
        import socketserver
        from http.server import BaseHTTPRequestHandler

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a: object) -> None:
                pass

        self.srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize(
    ("answer", "good"),
    [
        (b"a" * 32 + b" provenance 2\n{}" + b"c" * 32 + b" provenance 2\n{}", 1),  # not asked for
        (b"a" * 32 + b" provenance 2\n{}" + b"b" * 32 + b" provenance 99999999999\n", 1),  # too big
        (b"a" * 32 + b" provenance 2\n{}" + b"b" * 32 + b" provenance 10\n{}", 1),  # cut
        (b"a" * 32 + b" provenance x\n{}", 0),
        (b"a" * 32 + b" " * 200_000, 0),  # a line without end
        (b"", 0),
    ],
)
def test_the_client_refuses_a_hostile_answer(answer: bytes, good: int) -> None:
    from kiln.registry.attest_wire import fetch_many

    fake = _Fake(answer)
    got: dict = {}
    try:

        async def run() -> None:
            async with HttpClient(fake.url) as c:
                await fetch_many(c, [("a" * 32, "provenance"), ("b" * 32, "provenance")], lambda h, k, r: got.__setitem__(h, r))  # fmt: skip

        asyncio.run(run())
    finally:
        fake.close()
    assert set(got) == {"a" * 32, "b" * 32}
    assert (got["a" * 32] == b"{}") == bool(good)
    assert isinstance(got["b" * 32], Exception)
