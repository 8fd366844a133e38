"""Fast finalization of derivations: output paths, ``.drv`` path and hash modulo in one go.

``kiln.store.derivation`` defines the semantics (``finalize``, ``hash_modulo``,
``drv_path``); this module computes exactly the same values (tests compare them on
every derivation of the test recipes and the benchmark sets) but serializes each
derivation's ATerm text once: the three texts that get hashed differ only in the output
paths, the ``out`` env entry and how input derivations are named (by ``.drv`` path, or
by their hash modulo), so the shared middle is built once and reused. Evaluating
10,000 packages spends most of its time here, hence the care.

``finalize_fast(drv, memo)`` needs the hash modulo of every input derivation in
``memo`` (drv path → ``Hash``), which holds because inputs are always finalized first;
it returns the finalized derivation, its ``.drv`` path and its own hash modulo (which the
caller stores in ``memo``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from kiln.store.derivation import Derivation, Output
from kiln.store.hashes import Hash
from kiln.store.paths import make_fixed_output_path

_ESC = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
_KEYS: dict[str, str] = {}  # quoted env names (the same few names recur in every derivation)


def _q(s: str) -> str:
    # five C-level substring tests beat a regex search on these short strings
    if '"' in s or "\\" in s or "\n" in s or "\r" in s or "\t" in s:
        s = s.translate(_ESC)
    return f'"{s}"'


def _store_path(type_: str, inner_hex: str, name: str, store_dir: str) -> str:
    """``paths.make_store_path`` without the validation (names were checked already):
    sha256 of the fingerprint, XOR-folded to 20 bytes, in Nix base32."""
    d = hashlib.sha256(f"{type_}:sha256:{inner_hex}:{store_dir}:{name}".encode()).digest()
    folded = int.from_bytes(d[:20], "little") ^ int.from_bytes(d[20:], "little")
    digest = "".join(_NIX32[(folded >> (5 * n)) & 31] for n in range(31, -1, -1))
    return f"{store_dir}/{digest}-{name}"


def _list(items: Iterable[str]) -> str:
    return "[" + ",".join(map(_q, items)) + "]"


def finalize_fast(drv: Derivation, memo: dict[str, Hash]) -> tuple[Derivation, str, Hash]:
    """``(finalize(drv), str(drv_path(...)), hash_modulo(...))`` for a derivation built
    with blank output paths and an ``out`` output only (plus whatever env it has)."""
    ((out_name, out),) = drv.outputs
    # the env text around the output's own entry, which is the only part that varies
    before: list[str] = []
    after: list[str] = []
    slot = False
    for k, v in drv.env:
        if k == out_name:
            slot = True
            continue
        qk = _KEYS.get(k)
        if qk is None:
            qk = _KEYS[k] = _q(k)
        (after if slot else before).append(f"({qk},{_q(v)})")
    env_pre = ",".join(before) + ("," if before and slot else "")
    env_post = ("," if after and slot else "") + ",".join(after)
    head = f"],{_list(drv.input_srcs)},{_q(drv.platform)},{_q(drv.builder)},{_list(drv.args)},[{env_pre}"
    q_name = _q(out_name)
    tail = f",{_q(out.hash_algo)},{_q(out.hash)})],["

    def text(out_path: str, inputs: str) -> bytes:
        q = _q(out_path)
        own = f"({q_name},{q})" if slot else ""
        return f"Derive([({q_name},{q}{tail}{inputs}{head}{own}{env_post}])".encode()

    by_path = ",".join(f"({_q(p)},{_list(o)})" for p, o in drv.input_drvs)
    if out.hash:
        recursive = out.hash_algo.startswith("r:")
        algo = out.hash_algo.removeprefix("r:")
        path = str(
            make_fixed_output_path(drv.name, Hash(algo, bytes.fromhex(out.hash)), recursive, drv.store_dir)
        )
        modulo = Hash.sha256_of(f"fixed:out:{out.hash_algo}:{out.hash}:{path}".encode())
    else:
        replaced: dict[str, tuple[str, ...]] = {}
        for p, outs in drv.input_drvs:
            key = memo[p].hex
            replaced[key] = tuple(sorted(set(replaced.get(key, ())) | set(outs)))
        by_hash = ",".join(f"({_q(h)},{_list(o)})" for h, o in sorted(replaced.items()))
        masked = hashlib.sha256(text("", by_hash)).hexdigest()
        path = _store_path(f"output:{out_name}", masked, drv.name, drv.store_dir)
        modulo = Hash("sha256", hashlib.sha256(text(path, by_hash)).digest())
    final_text = text(path, by_path)
    refs = sorted([*drv.input_srcs, *(p for p, _ in drv.input_drvs)])
    drv_path = _store_path(
        ":".join(["text", *refs]), hashlib.sha256(final_text).hexdigest(), f"{drv.name}.drv", drv.store_dir
    )
    env = tuple((k, path if k == out_name else v) for k, v in drv.env)
    final = Derivation(
        drv.name,
        ((out_name, Output(path, out.hash_algo, out.hash)),),
        drv.input_drvs,
        drv.input_srcs,
        drv.platform,
        drv.builder,
        drv.args,
        env,
        drv.store_dir,
    )
    return final, drv_path, modulo
