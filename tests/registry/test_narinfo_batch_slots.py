"""``POST /narinfo-batch`` answers are bounded in number per worker
(``--max-narinfo-batches``), and a slot is held until the answer is out: a client that
asks for a 32 MiB answer and never reads it pins one slot (not an unbounded number of
answers in memory); past the limit a request gets 503 with ``Retry-After``; the answer
is made off the event loop, so other requests are answered meanwhile; closing the
stuck connection frees its slot."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from regkit import kiln, request

from kiln.store.nixbase32 import encode

N = 12
SIZE = 3 << 20  # each narinfo 3 MiB: the deferring answer is ~32 MiB, far above socket buffers
HEAD = b"StorePath: x\nCompression: zstd\n"  # kiln serve answers only zstd narinfos


def _registry(tmp_path: Path) -> tuple[Path, list[str]]:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    hashes = [encode(bytes([i]) * 20) for i in range(N)]
    for h in hashes:  # served as the bytes on disk (a client checks them); zstd, or not served
        (reg / f"{h}.narinfo").write_bytes(HEAD + b"#" * SIZE)
    return reg, hashes


def _until(what, timeout: float = 20.0):  # noqa: ANN001, ANN202
    end = time.monotonic() + timeout
    while True:
        got = what()
        if got is not None or time.monotonic() > end:
            return got
        time.sleep(0.05)


def test_a_client_that_does_not_read_pins_one_slot_and_others_get_503(tmp_path: Path, kiln_server) -> None:
    reg, hashes = _registry(tmp_path)
    srv = kiln_server("--dir", str(reg), "--max-narinfo-batches", "1")
    u = urlparse(srv.url)
    body = json.dumps({"hashes": hashes, "defer": True}).encode()
    stuck = socket.create_connection((u.hostname, u.port))
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(
            b"POST /narinfo-batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

        def busy() -> tuple[int, dict[str, str], bytes] | None:
            got = request(f"{srv.url}/narinfo-batch", "POST", json.dumps({"hashes": hashes[:1]}).encode())
            return got if got[0] == 503 else None

        got = _until(busy)
        assert got is not None, "the stuck answer never took the only slot"
        status, headers, text = got
        assert headers.get("retry-after") == "1"
        assert b"1 narinfo batches in progress" in text
        # the event loop is free meanwhile
        assert request(f"{srv.url}/nix-cache-info")[0] == 200
        assert request(f"{srv.url}/{hashes[0]}.narinfo")[0] == 200
    finally:
        stuck.close()

    def answered() -> dict | None:
        status, _, raw = request(
            f"{srv.url}/narinfo-batch", "POST", json.dumps({"hashes": hashes[:2]}).encode()
        )
        return json.loads(raw) if status == 200 else None

    ans = _until(answered)
    assert ans is not None, "closing the stuck connection did not free its slot"
    assert sorted(ans["narinfos"]) == sorted(hashes[:2])
    assert len(ans["narinfos"][hashes[0]]) == len(HEAD) + SIZE


def test_a_deferring_answer_arrives_whole_in_pieces(tmp_path: Path, kiln_server) -> None:
    """The answer written in pieces under its slot is the same JSON a client parses:
    ~32 MiB of entries, the rest deferred, with a Content-Length."""
    reg, hashes = _registry(tmp_path)
    srv = kiln_server("--dir", str(reg))
    status, headers, raw = request(
        f"{srv.url}/narinfo-batch", "POST", json.dumps({"hashes": hashes, "defer": True}).encode()
    )
    assert status == 200
    assert int(headers["content-length"]) == len(raw)
    assert headers["content-type"].startswith("application/json")
    ans = json.loads(raw)
    got = list(ans["narinfos"])
    assert got and got == hashes[: len(got)]
    assert ans["deferred"] == {"hashes": hashes[len(got) :]}
    assert 30 << 20 < len(raw) < 36 << 20
