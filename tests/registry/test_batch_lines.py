"""An overlong line in a batch stream (aiohttp's ``LineTooLong``, which is not a
``ClientError``) is a broken answer on the client (``RegistryError``) and bad input on
the server (a 400 with a one-line reason), never an internal error."""

from __future__ import annotations

import pytest
from regkit import kiln, request
from test_hostile_server import _head, run

from kiln.registry.client import RegistryError
from kiln.store.hashes import Hash


def test_an_overlong_blob_batch_line_is_a_registry_error() -> None:
    h = Hash.sha256_of(b"small object")

    async def long_line(r, w) -> None:  # noqa: ANN001
        _head(w, "Transfer-Encoding: chunked\r\n")
        chunk = b"a" * 65536
        for _ in range(64):  # 4 MiB without a newline
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await w.drain()

    got: list = []
    with pytest.raises(RegistryError, match="blob-batch"):
        run(long_line, lambda c: c.blob_batch([h], lambda d, b: got.append(b), {h.hex: 12}))
    assert got == []


def test_an_overlong_upload_batch_header_is_a_400(tmp_path, keys, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    body = b"1" * (4 << 20) + b"\n"
    st, _, data = request(f"{srv.url}/upload-batch", "POST", body, {"Authorization": f"Bearer {tok}"})
    assert st == 400 and b"line too long" in data and b"Traceback" not in data, (st, data)
    assert data.count(b"\n") <= 1
    st, _, _ = request(f"{srv.url}/nix-cache-info")
    assert st == 200  # the server is still serving
