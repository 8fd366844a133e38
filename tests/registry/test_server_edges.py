"""Small HTTP edges of ``kiln serve``: ``HEAD /nix-cache-info`` is public like ``GET`` in
private mode, a multi-range request is answered with the whole file (RFC 9110 lets a
server ignore ``Range``), and a 404 shows the decoded path escaped (no raw NUL)."""

from __future__ import annotations

from regkit import add_tree, kiln, make_store, request

from kiln.registry import layout


def test_head_of_nix_cache_info_is_public_in_private_mode(tmp_path, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    srv = kiln_server("--dir", str(reg), "--private")
    st_get, h_get, body = request(f"{srv.url}/nix-cache-info")
    st_head, h_head, _ = request(f"{srv.url}/nix-cache-info", "HEAD")
    assert (st_get, st_head) == (200, 200) and h_head["content-length"] == str(len(body))
    assert request(f"{srv.url}/nix-cache-info", "PUT", b"x")[0] == 401  # other methods still need a token
    assert request(f"{srv.url}/{'a' * 32}.narinfo", "HEAD")[0] == 401


def test_a_multi_range_request_gets_the_whole_file(tmp_path, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "a", "x" * 1000)
    srv = kiln_server("--store", str(store.root))
    key = layout.nar_key(store.query(p).file_hash)
    whole = store.object_path(p).read_bytes()
    st, _, body = request(f"{srv.url}/{key}", headers={"Range": "bytes=0-1,5-6"})
    assert st == 200 and body == whole
    st, headers, body = request(f"{srv.url}/{key}", headers={"Range": "bytes=0-1"})
    assert st == 206 and body == whole[:2] and headers["content-range"].startswith("bytes 0-1/")


def test_a_404_shows_the_path_escaped(tmp_path, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    srv = kiln_server("--dir", str(reg))
    st, _, body = request(f"{srv.url}/x%00y%0Az")
    assert st == 404 and b"\0" not in body and b"x\\x00y\\nz" in body, body
    assert body.count(b"\n") <= 1
