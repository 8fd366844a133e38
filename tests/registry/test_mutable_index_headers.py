"""The index files published again under their names (``index/timestamp.json``,
``snapshot.json``, ``root.json``) are revalidated by a tag of their content only
(``registry/mutablefile.py``): no ``Last-Modified``, ``If-Modified-Since`` ignored. A
re-publish whose files got an older mtime (a clock stepped back, ``touch -d``) was
answered 304 to a client revalidating by date, freezing it on the old timestamp."""

from __future__ import annotations

import hashlib
import os

from regkit import kiln, request

MUTABLE = ("index/timestamp.json", "index/snapshot.json", "index/root.json")


def test_a_republish_with_an_older_mtime_is_not_a_304(pushed, keys) -> None:
    _store, _chain, _leaf, reg, _tok, srv = pushed
    first = {}
    for key in MUTABLE:
        for method in ("GET", "HEAD"):
            st, h, body = request(f"{srv.url}/{key}", method)
            assert st == 200 and h["cache-control"] == "no-cache", (key, method, h)
            assert "last-modified" not in h, (key, method, h)
            if method == "GET":
                assert body == (reg / key).read_bytes()
                assert h["etag"] == f'"sha256:{hashlib.sha256(body).hexdigest()}"'
                first[key] = (h["etag"], h["date"], body)
            else:
                assert h["etag"] == first[key][0] and body == b""
        etag, date, _body = first[key]
        st, h, body = request(f"{srv.url}/{key}", headers={"If-None-Match": etag})
        assert st == 304 and h["etag"] == etag and body == b""
    old_ts = (reg / "index/timestamp.json").stat()
    r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file))
    assert r.returncode == 0, r.stderr
    ts = reg / "index/timestamp.json"
    assert ts.read_bytes() != first["index/timestamp.json"][2]
    back = old_ts.st_mtime - 3600  # the publisher's clock an hour behind
    os.utime(ts, (back, back))
    etag, date, old = first["index/timestamp.json"]
    for headers in ({"If-Modified-Since": date}, {"If-None-Match": etag, "If-Modified-Since": date}):
        st, h, body = request(f"{srv.url}/index/timestamp.json", headers=headers)
        assert st == 200 and body == ts.read_bytes() != old, (headers, st)
        assert h["etag"] == f'"sha256:{hashlib.sha256(body).hexdigest()}"' != etag
    st, _h, _b = request(
        f"{srv.url}/index/timestamp.json", headers={"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert st == 200  # (no date precondition either)
