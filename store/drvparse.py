"""Reading a ``.drv`` file's text back into a ``Derivation`` (Nix's ATerm ``Derive(...)``).

Pure format code, no I/O. Strict: only the canonical form ``Derivation.serialize``
writes is accepted (sorted, unique keys; no trailing data), so ``parse(serialize(d)) ==
d`` (up to the name, which lives in the store path) and a text that parses serializes
back to the same bytes. Anything else is a ``FormatError`` naming where. Beyond syntax
it checks what Nix checks of the fields (``_check_meaning``): outputs, store paths, hash
algorithms.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from .derivation import Derivation, Output
from .errors import FormatError
from .hashes import DIGEST_SIZES
from .paths import DEFAULT_STORE_DIR, StorePath, check_store_dir

# A quoted ATerm string (escapes kept): one regex match instead of a loop per character.
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESC = {"n": "\n", "r": "\r", "t": "\t"}
_HEX = re.compile(r"[0-9a-f]+")


class _Reader:
    __slots__ = ("s", "i")

    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def expect(self, lit: str) -> None:
        if not self.s.startswith(lit, self.i):
            found = self.s[self.i : self.i + 10] or "end of input"
            raise FormatError(f"derivation: expected {lit!r} at offset {self.i}, found {found!r}")
        self.i += len(lit)

    def peek(self, lit: str) -> bool:
        return self.s.startswith(lit, self.i)

    def string(self) -> str:
        m = _STRING.match(self.s, self.i)
        if m is None:
            if not self.s.startswith('"', self.i):
                self.expect('"')  # raises, naming what is there instead
            raise FormatError(f"derivation: unterminated string at offset {self.i}")
        self.i = m.end()
        body = m.group(1)
        if "\\" in body:
            body = _UNESCAPE.sub(lambda e: _UNESC.get(e.group(1), e.group(1)), body)
        return body

    def seq(self, item: Callable[[], object], open_: str = "[", close: str = "]") -> list:
        self.expect(open_)
        items = []
        if not self.peek(close):
            items.append(item())
            while self.peek(","):
                self.i += 1
                items.append(item())
        self.expect(close)
        return items


def decode(data: bytes, what: str) -> str:
    """The text of a ``.drv`` file's bytes; ``FormatError`` naming ``what`` if they are
    not UTF-8 (Nix writes derivations as UTF-8; such a file is not one)."""
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise FormatError(f"{what}: not a derivation (not UTF-8 at byte {e.start})") from None


def parse(text: str, name: str, store_dir: str | None = DEFAULT_STORE_DIR) -> Derivation:
    """Parse ATerm ``text``. ``name`` is the derivation name (from its ``.drv`` path).
    ``store_dir`` None: the store dir of its first output path (a loose ``.drv`` file, made
    for any store dir), which every other path must then share."""
    r = _Reader(text)
    r.expect("Derive(")

    def output() -> tuple[str, Output]:
        r.expect("(")
        k = r.string()
        r.expect(",")
        p = r.string()
        r.expect(",")
        a = r.string()
        r.expect(",")
        h = r.string()
        r.expect(")")
        return k, Output(p, a, h)

    def strings() -> tuple[str, ...]:
        return tuple(r.seq(r.string))

    def input_drv() -> tuple[str, tuple[str, ...]]:
        r.expect("(")
        p = r.string()
        r.expect(",")
        outs = strings()
        r.expect(")")
        return p, outs

    def pair() -> tuple[str, str]:
        r.expect("(")
        k = r.string()
        r.expect(",")
        v = r.string()
        r.expect(")")
        return k, v

    outputs = r.seq(output)
    r.expect(",")
    drvs = r.seq(input_drv)
    r.expect(",")
    srcs = strings()
    r.expect(",")
    platform = r.string()
    r.expect(",")
    builder = r.string()
    r.expect(",")
    args = strings()
    r.expect(",")
    env = r.seq(pair)
    r.expect(")")
    if r.i != len(text):
        raise FormatError(f"derivation: trailing data at offset {r.i}")
    _sorted_unique([k for k, _ in outputs], "outputs")
    _sorted_unique([p for p, _ in drvs], "input derivations")
    for p, outs in drvs:
        _sorted_unique(list(outs), f"outputs of input {p}")
    _sorted_unique(list(srcs), "input sources")
    _sorted_unique([k for k, _ in env], "environment variables")
    if store_dir is None:
        store_dir = _store_dir_of(outputs)
    _check_meaning(outputs, drvs, srcs, store_dir)
    drv = Derivation(
        name=name,
        outputs=tuple(outputs),
        input_drvs=tuple(drvs),
        input_srcs=srcs,
        platform=platform,
        builder=builder,
        args=args,
        env=tuple(env),
        store_dir=store_dir,
    )
    # What is hashed is the canonical text; one written otherwise (an escape Nix never
    # writes, say) would hash as something other than what it says.
    if drv.serialize() != text:
        raise FormatError("derivation: not in canonical form (it would not serialize back to the same text)")
    return drv


def _sorted_unique(keys: list[str], what: str) -> None:
    """Nix keeps these in ordered sets and maps: a ``.drv`` that lists them out of order,
    or twice, hashes as something other than what the builder would see."""
    for a, b in itertools.pairwise(keys):
        if a >= b:
            how = "twice" if a == b else f"before {b!r}"
            raise FormatError(f"derivation: {what} are not sorted and unique ({a!r} {how})")


def _store_dir_of(outputs: list[tuple[str, Output]]) -> str:
    """The store dir of a derivation's first output path (``parse``'s ``store_dir=None``)."""
    first = outputs[0][1].path if outputs else ""
    if not first:  # no outputs, or a floating one: ``_check_meaning`` says which
        return DEFAULT_STORE_DIR
    d = first.rpartition("/")[0]
    try:
        return check_store_dir(d)
    except FormatError:
        raise FormatError(
            f"derivation: cannot tell its store dir from its first output path {first[:200]!r}"
        ) from None


def _check_meaning(
    outputs: list[tuple[str, Output]],
    drvs: list[tuple[str, tuple[str, ...]]],
    srcs: tuple[str, ...],
    store_dir: str,
) -> None:
    """What Nix checks of a derivation's fields beyond their syntax: at least one output;
    output paths, input sources and input derivations (``.drv`` files) are store paths of
    ``store_dir``; a fixed output names a known hash algorithm (``r:`` for recursive) and
    a hex digest of its size, an input-addressed one neither. ``FormatError`` naming the
    field otherwise."""
    if not outputs:
        raise FormatError("derivation: no outputs")

    def in_store(p: str, what: str) -> None:
        if not p and what.startswith("output"):
            raise FormatError(
                f"derivation: {what} is empty: a floating content-addressed, impure or deferred "
                "derivation (Nix's ca-derivations, impure-derivations), which kiln does not build"
            )
        try:
            StorePath.parse(p, store_dir)
        except FormatError as e:
            raise FormatError(f"derivation: {what} {p!r} is not a store path of {store_dir}: {e}") from None

    for k, o in outputs:
        in_store(o.path, f"output {k!r} path")
        if not o.hash_algo and not o.hash:
            continue
        size = DIGEST_SIZES.get(o.hash_algo.removeprefix("r:"))
        if size is None:
            raise FormatError(
                f"derivation: output {k!r} has unknown hash algorithm {o.hash_algo!r} "
                f"(expected one of {', '.join(DIGEST_SIZES)}, with r: for a recursive hash)"
            )
        if len(o.hash) != 2 * size or not _HEX.fullmatch(o.hash):
            raise FormatError(
                f"derivation: output {k!r} hash {o.hash[:80]!r} is not {2 * size} lowercase hex digits "
                f"({o.hash_algo})"
            )
    for p, _ in drvs:
        in_store(p, "input derivation")
        if not p.endswith(".drv"):
            raise FormatError(f"derivation: input derivation {p!r} is not a .drv file")
    for p in srcs:
        in_store(p, "input source")
