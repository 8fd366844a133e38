"""``kiln serve --access-log``: the bytes of a file answer sent with ``sendfile`` (NARs,
blobs, index files) are counted — they were logged as the header's few hundred bytes."""

from __future__ import annotations

import hashlib
import os

from regkit import request

from kiln.registry.layout import nar_key
from kiln.store.hashes import Hash


def test_file_answers_log_the_body_bytes_sent(tmp_path, kiln_server) -> None:
    reg = tmp_path / "reg"
    (reg / "blobs").mkdir(parents=True)
    (reg / "nar").mkdir()
    (reg / "index").mkdir()
    (reg / "nix-cache-info").write_text("StoreDir: /kiln/store\n")
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    (reg / "blobs" / f"sha256:{digest}").write_bytes(data)
    os.link(reg / "blobs" / f"sha256:{digest}", reg / nar_key(Hash.parse(f"sha256:{digest}")))
    (reg / "index" / "7.index.json").write_bytes(b"{}" * 100_000)
    log = tmp_path / "access.log"
    srv = kiln_server("--dir", str(reg), "--access-log", str(log))
    assert request(f"{srv.url}/blobs/sha256:{digest}")[0] == 200
    assert request(f"{srv.url}/index/7.index.json")[0] == 200
    st, _, part = request(
        f"{srv.url}/{nar_key(Hash.parse(f'sha256:{digest}'))}", headers={"Range": "bytes=10-1009"}
    )
    assert st == 206 and len(part) == 1000
    assert request(f"{srv.url}/nix-cache-info")[0] == 200
    srv.stop()
    sizes = {
        ln.split(" ")[3].strip('"').split("/")[1]: int(ln.split(" ")[5])
        for ln in log.read_text().splitlines()
    }
    assert len(data) < sizes["blobs"] < len(data) + 1000, sizes  # the body and a header
    assert 200_000 < sizes["index"] < 201_000, sizes
    assert 1000 < sizes["nar"] < 2000, sizes
    assert sizes["nix-cache-info"] < 1000, sizes
