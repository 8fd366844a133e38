"""``kiln store cat|ls|dump`` and ``kiln show-derivation`` take a path the way ``kiln
run``, ``store info``, ``verify`` and ``sbom`` do: a GC root name, a base name or a hash
part as well as a store path (``cat``/``ls``/``dump`` with ``/`` and a path inside);
``show-derivation`` of an output shows its deriver, as ``nix show-derivation`` does.
They took store paths only ("'hello' is not a path in the store")."""

from __future__ import annotations

import json

from clikit import kiln


def test_names_reach_the_same_path(built) -> None:
    st = ["--store", str(built.store.root)]
    assert kiln("store", "add-root", *st, "hello", built.hello).returncode == 0
    base = built.hello.rsplit("/", 1)[1]
    for name in ("hello", base, base[:32]):
        r = kiln("store", "cat", *st, f"{name}/hello")
        assert r.returncode == 0 and r.stdout.endswith("echo hello\n"), (name, r.stderr)
        r = kiln("store", "ls", *st, name)
        assert r.returncode == 0 and " hello " in r.stdout, (name, r.stdout, r.stderr)
        r = kiln("show-derivation", *st, name)
        assert r.returncode == 0 and list(json.loads(r.stdout)) == [built.hello_drv], (name, r.stderr)
    drv_base = built.hello_drv.rsplit("/", 1)[1]
    for name in (drv_base, drv_base[:32]):  # (a .drv named so: itself, not a deriver of it)
        r = kiln("show-derivation", *st, name)
        assert r.returncode == 0 and list(json.loads(r.stdout)) == [built.hello_drv], (name, r.stderr)
    r = kiln("store", "cat", *st, "nosuch/hello")
    assert r.returncode == 1 and "'nosuch/hello' is not a path in the store" in r.stderr, r.stderr
    r = kiln("show-derivation", *st, built.src)  # (a fetched source: its fetch derivation)
    assert r.returncode == 0, r.stderr
