"""``refscan.scan``: fast (C loops over the bytes) and finding exactly what
the regex scanner it replaced found. That scanner (a ``re.finditer`` of nix32 runs over
every byte: ~13 CPU-s per GiB, 120 for a 10 GiB sparse output) is kept here, as the
reference of the differential test."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

from kiln.store.refscan import scan
from kiln.store.trees import walk

STORE_DIR = "/kiln/store"
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
MIB = 1 << 20


def reference_scan(
    root: Path, candidates, store_dir: str
) -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    """The scanner before (kiln 2cbe357), less its stop checks: (found, stray)."""
    nix32 = b"[0-9a-df-np-sv-z]"
    cand = {c.encode() for c in candidates}
    runs = re.compile(nix32 + b"{32,}")
    prefixed = re.compile(re.escape(store_dir.encode() + b"/") + b"(" + nix32 + b"{32})-")
    extra_seps = re.compile(rb"/(?:\.?/)+")
    found: set[bytes] = set()
    stray: dict[tuple[str, str], None] = {}
    overlap = 32 + len(store_dir) + 1

    def scan_bytes(data: bytes, rel: str) -> None:
        for m in runs.finditer(data):
            run = m.group(0)
            for i in range(len(run) - 31):
                if run[i : i + 32] in cand:
                    found.add(run[i : i + 32])
        if b"//" in data or b"/./" in data:
            data = extra_seps.sub(b"/", data)
        for m in prefixed.finditer(data):
            if m.group(1) not in cand:
                stray[(rel, m.group(1).decode())] = None

    def scan_file(p: Path, rel: str) -> None:
        with open(p, "rb", buffering=0) as f:
            tail = b""
            while chunk := f.read(MIB):
                data = tail + chunk
                scan_bytes(data, rel)
                tail = data[-overlap:]

    def entry(p: Path, rel: str) -> None:
        if p.is_symlink():
            scan_bytes(os.fsencode(os.readlink(p)), rel)
        elif p.is_file():
            scan_file(p, rel)

    if root.is_symlink() or not root.is_dir():
        entry(root, "")
    else:
        for dirpath, dirnames, filenames in walk(str(root)):
            dirnames.sort()
            for name in [*filenames, *dirnames]:
                scan_bytes(os.fsencode(name), os.path.relpath(os.path.join(dirpath, name), root))
            for name in [
                *sorted(filenames),
                *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))),
            ]:
                p = Path(dirpath, name)
                entry(p, str(p.relative_to(root)))
    return frozenset(h.decode() for h in found), tuple(stray)


def _corpus(root: Path, rng: random.Random, cands: list[str], others: list[str]) -> None:
    """Files of 1-3 MiB and more: hashes (candidates, strays in every spelling the old
    scanner knew) at every offset around each 1 MiB chunk boundary, long nix32 runs
    across boundaries, random bytes, text; names and absolute symlink targets; a sparse
    file with data around its holes."""
    root.mkdir()

    def h(pool: list[str]) -> bytes:
        return rng.choice(pool).encode()

    spellings = [
        b"/kiln/store/",
        b"/kiln//store/",
        b"/kiln/./store/",
        b"/kiln/store//",
        b"x=/kiln/store/",
        b"/kiln" + b"/" * 300 + b"store/",
        b"//kiln/././././store/./",
        b"/kiln/stor/",
        b"/nix/store/",
    ]
    # every split of a candidate and of a canonical stray across the first boundary
    for k in range(64):
        for pool, what in ((cands, "c"), (others, "s")):
            piece = b"/kiln/store/" + h(pool) + b"-name-" + str(k).encode()
            at = MIB - k
            (root / f"split-{what}-{k}").write_bytes(b"\n" * at + piece + b"\n" + b"q" * 100)
    # mixed content over several chunks
    for n in range(6):
        parts: list[bytes] = []
        size = 0
        while size < 3 * MIB + 12345:
            r = rng.random()
            if r < 0.3:
                p = rng.choice(spellings) + h(rng.choice([cands, others])) + b"-pkg-1.0/bin"
            elif r < 0.4:
                p = b"abc" + h(cands) + b"xyz"  # glued: a candidate window inside a longer run
            elif r < 0.45:
                p = rng.choice(NIX32).encode() * rng.randrange(31, 5000)  # long runs
            elif r < 0.7:
                p = os.urandom(rng.randrange(1, 3000))
            else:
                p = b"some text with a/path//and/./dots " * rng.randrange(1, 40)
            parts.append(p)
            size += len(p)
        (root / f"mixed-{n}").write_bytes(b"".join(parts))
    # a run of nix32 characters across two boundaries with a candidate inside each
    c1, c2 = h(cands), h(cands)
    (root / "longrun").write_bytes(b"a" * (MIB - 10) + c1 + b"b" * MIB + c2 + b"c" * 50)
    # names and symlinks (absolute targets: relative ones are resolved now, see test_builds)
    (root / "d").mkdir()
    (root / "d" / (cands[0] + "-named")).write_text("")
    (root / "d" / (others[0] + "-named")).write_text("")
    os.symlink("/kiln/store/" + others[1] + "-lib/lib", root / "d" / "abs-stray")
    os.symlink("/kiln//store/" + cands[1] + "-lib", root / "d" / "abs-cand")
    # sparse: data, a hole, data whose hash was split by the hole's start
    with open(root / "sparse", "wb") as f:
        f.write(b"/kiln/store/" + h(others) + b"-a\n")
        f.seek(8 * MIB)
        f.write(b"/kiln/store/" + h(others) + b"-b " + h(cands))
        f.seek(20 * MIB - 5)
        f.write(b"/kiln/store/" + h(cands) + b"-c")


def test_the_fast_scanner_finds_what_the_regex_scanner_found(tmp_path):
    rng = random.Random(22)
    cands = ["".join(rng.choice(NIX32) for _ in range(32)) for _ in range(40)]
    others = ["".join(rng.choice(NIX32) for _ in range(32)) for _ in range(40)]
    _corpus(tmp_path / "c", rng, cands, others)
    root = tmp_path / "c"
    for entry in [root, *sorted(root.iterdir())]:
        found, stray = reference_scan(entry, cands, STORE_DIR)
        new = scan(entry, cands, STORE_DIR)
        assert new.found == found, entry
        assert set(new.stray) == set(stray), (entry, set(new.stray) ^ set(stray))
    new = scan(root, cands, STORE_DIR)
    assert len(new.found) > 30 and len(new.stray) > 100  # (the corpus has both)


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def test_scanning_costs_little_cpu(tmp_path):
    """CPU time (one thread), not wall time. The regex scanner took ~0.75 CPU-s for 64 MiB
    of random bytes or of zeros (a sparse file: holes are read as zeros); now ~0.05."""
    d = tmp_path / "random"
    d.mkdir()
    with open(d / "f", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MIB))
    s = tmp_path / "sparse"
    s.mkdir()
    with open(s / "f", "wb") as f:
        f.seek((64 << 20) - 100)
        f.write(b"/kiln/store/" + b"0" * 32 + b"-x")
    cand = ["1" * 32]
    assert _cpu(lambda: scan(d, cand, STORE_DIR)) < 0.4
    assert _cpu(lambda: scan(s, cand, STORE_DIR)) < 0.4
    assert scan(s, cand, STORE_DIR).stray == (("f", "0" * 32),)
