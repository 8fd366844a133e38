"""Derivations: the build recipe the builder sees, in Nix's ATerm ``Derive(...)`` form.

Theory of operation
-------------------
``lang`` evaluates a recipe into a ``Derivation`` whose output paths are still blank.
``finalize`` then computes the *hash modulo* of the derivation (Nix
``hashDerivationModulo``): the ATerm text with output paths and output env vars masked
and every input derivation replaced by the hex of *its* hash modulo. Fixed-output
inputs contribute ``sha256("fixed:out:<algo>:<hex>:<path>")`` instead, so changing a
source's URL (but not its content hash) does not change dependents' output paths.
Output paths come from that hash (``paths.make_output_path``); the filled-in ATerm is
then stored as a text object ``<hash>-<name>.drv`` whose references are its input
derivations and sources.

Invariants
----------
- ``serialize`` is canonical: outputs, input derivations, sources and env are sorted,
  so equal derivations give byte-equal text on every machine.
- ``drvparse.parse(serialize(d)) == d`` (up to the name, which lives in the store path).
- No I/O: callers resolve input derivations through a callback.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from .errors import FormatError
from .hashes import Hash
from .paths import (
    DEFAULT_STORE_DIR,
    StorePath,
    check_name,
    make_fixed_output_path,
    make_output_path,
    make_text_path,
)


@dataclass(frozen=True, slots=True)
class Output:
    """One output. ``hash_algo``/``hash`` are set only for fixed outputs:
    ``hash_algo`` is ``r:sha256`` (recursive/NAR) or ``sha256`` (flat file), ``hash`` is hex."""

    path: str = ""
    hash_algo: str = ""
    hash: str = ""

    @property
    def is_fixed(self) -> bool:
        return bool(self.hash)


def _frozen_map(m: Mapping) -> tuple:
    return tuple(sorted(m.items()))


@dataclass(frozen=True, slots=True)
class Derivation:
    """A derivation. Mappings are kept as sorted tuples so the value is hashable and
    canonical; use the ``*_map`` helpers to read them as dicts."""

    name: str
    outputs: tuple[tuple[str, Output], ...]
    input_drvs: tuple[tuple[str, tuple[str, ...]], ...]
    input_srcs: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    store_dir: str = field(default=DEFAULT_STORE_DIR, compare=True)

    @classmethod
    def make(
        cls,
        name: str,
        *,
        outputs: Mapping[str, Output],
        input_drvs: Mapping[str, tuple[str, ...] | list[str]] = {},  # noqa: B006 - read-only
        input_srcs: Iterable[str] = (),
        platform: str = "x86_64-linux",
        builder: str,
        args: Iterable[str] = (),
        env: Mapping[str, str] = {},  # noqa: B006 - read-only
        store_dir: str = DEFAULT_STORE_DIR,
    ) -> Derivation:
        return cls(
            name=name,
            outputs=_frozen_map(outputs),
            input_drvs=tuple(sorted((k, tuple(sorted(set(v)))) for k, v in input_drvs.items())),
            input_srcs=tuple(sorted(set(input_srcs))),
            platform=platform,
            builder=builder,
            args=tuple(args),
            env=_frozen_map(env),
            store_dir=store_dir,
        )

    @property
    def outputs_map(self) -> dict[str, Output]:
        return dict(self.outputs)

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def input_drvs_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.input_drvs)

    @property
    def is_fixed_output(self) -> bool:
        return len(self.outputs) == 1 and self.outputs[0][0] == "out" and self.outputs[0][1].is_fixed

    def output_path(self, name: str = "out") -> str:
        return self.outputs_map[name].path

    def references(self) -> list[StorePath]:
        """The store objects a ``.drv`` refers to: input derivations and sources."""
        return sorted(StorePath.parse(p) for p in [*self.input_srcs, *(k for k, _ in self.input_drvs)])

    def serialize(self, mask_outputs: bool = False, input_drvs: tuple | None = None) -> str:
        """The ATerm text. ``mask_outputs`` blanks output paths and their env vars;
        ``input_drvs`` overrides the input-derivation list (used for hashing modulo)."""
        out_names = {k for k, _ in self.outputs}
        parts = ["Derive(["]
        parts.append(
            ",".join(
                f"({_q(k)},{_q('' if mask_outputs else o.path)},{_q(o.hash_algo)},{_q(o.hash)})"
                for k, o in self.outputs
            )
        )
        parts.append("],[")
        drvs = self.input_drvs if input_drvs is None else input_drvs
        parts.append(",".join(f"({_q(p)},{_list(outs)})" for p, outs in drvs))
        parts.append("],")
        parts.append(_list(self.input_srcs))
        parts.append(f",{_q(self.platform)},{_q(self.builder)},{_list(self.args)},[")
        parts.append(
            ",".join(f"({_q(k)},{_q('' if mask_outputs and k in out_names else v)})" for k, v in self.env)
        )
        parts.append("])")
        return "".join(parts)


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


_NEEDS_ESC = re.compile(r'["\\\n\r\t]')
_ESC_TABLE = str.maketrans(_ESC)


def _q(s: str) -> str:
    # a regex scan and str.translate run in C: this is the hot loop of evaluation
    if _NEEDS_ESC.search(s):
        s = s.translate(_ESC_TABLE)
    return f'"{s}"'


def _list(items: Iterable[str]) -> str:
    return "[" + ",".join(_q(i) for i in items) + "]"


def check_drv_name(name: str) -> str:
    """Return ``name`` if a derivation may have it: a valid store path name
    (``paths.check_name``) that does not end in ``.drv`` (Nix's rule: an output named so
    would be taken for a derivation). Else ``FormatError``."""
    check_name(name)
    if name.endswith(".drv"):
        raise FormatError(
            f"derivation name {name!r} must not end in '.drv' (its output would look like a derivation)"
        )
    return name


# ---------------------------------------------------------------------------- hashing

Resolver = Callable[[str], Derivation]


def hash_modulo(
    drv: Derivation, resolve: Resolver, memo: dict[str, Hash], mask_outputs: bool = False
) -> Hash:
    """Nix ``hashDerivationModulo``. ``resolve`` maps an input ``.drv`` path to its
    derivation; ``memo`` caches results per ``.drv`` path (keeps the cost linear). The
    input derivations are hashed inputs first with an explicit stack: a chain of them
    may be deeper than Python's recursion limit (a crafted one, say)."""
    if drv.is_fixed_output:
        o = drv.outputs[0][1]
        return Hash.sha256_of(f"fixed:out:{o.hash_algo}:{o.hash}:{o.path}".encode())
    _hash_inputs(drv, resolve, memo)
    replaced: dict[str, tuple[str, ...]] = {}
    for path, outs in drv.input_drvs:
        key = memo[path].hex
        replaced[key] = tuple(sorted(set(replaced.get(key, ())) | set(outs)))
    text = drv.serialize(mask_outputs=mask_outputs, input_drvs=tuple(sorted(replaced.items())))
    return Hash("sha256", hashlib.sha256(text.encode()).digest())


def _hash_inputs(drv: Derivation, resolve: Resolver, memo: dict[str, Hash]) -> None:
    """Put every input derivation of ``drv`` (transitively) not yet in ``memo`` there,
    each once its own inputs are (a post-order walk; ``hash_modulo`` of each then finds
    all its inputs in ``memo`` and does not recurse)."""
    todo: list[tuple[str, Derivation | None]] = [(p, None) for p, _ in reversed(drv.input_drvs)]
    open_: set[str] = set()  # visited, inputs not all hashed yet
    while todo:
        path, d = todo.pop()
        if path in memo:
            continue
        if d is None:  # first visit: its inputs go first
            if path in open_:  # (a .drv's path hashes its inputs' paths: only a crafted graph loops)
                raise FormatError(f"derivation {path} depends on itself")
            d = resolve(path)
            if d.is_fixed_output:  # its hash is its output's: its inputs are not looked at
                memo[path] = hash_modulo(d, resolve, memo)
                continue
            open_.add(path)
            todo.append((path, d))
            todo.extend((p, None) for p, _ in reversed(d.input_drvs) if p not in memo)
            continue
        memo[path] = hash_modulo(d, resolve, memo)
        open_.discard(path)


def finalize(drv: Derivation, resolve: Resolver, memo: dict[str, Hash]) -> Derivation:
    """Fill in output paths (and their env vars) of a derivation built with blank ones.

    Fixed outputs get ``make_fixed_output_path``; others get the input-addressed path
    from the hash modulo with outputs masked."""
    if drv.is_fixed_output:
        o = drv.outputs[0][1]
        recursive = o.hash_algo.startswith("r:")
        algo = o.hash_algo.removeprefix("r:")
        try:
            digest = bytes.fromhex(o.hash)
        except ValueError:
            raise FormatError(f"derivation {drv.name}: fixed-output hash {o.hash!r} is not hex") from None
        path = str(make_fixed_output_path(drv.name, Hash(algo, digest), recursive, drv.store_dir))
        outs = {"out": replace(o, path=path)}
    else:
        h = hash_modulo(drv, resolve, memo, mask_outputs=True)
        outs = {
            k: replace(o, path=str(make_output_path(h, k, drv.name, drv.store_dir))) for k, o in drv.outputs
        }
    env = drv.env_map
    for k, o in outs.items():
        env[k] = o.path
    return replace(drv, outputs=_frozen_map(outs), env=_frozen_map(env))


def check_output_paths(drv: Derivation, resolve: Resolver, memo: dict[str, Hash]) -> None:
    """Raise ``FormatError`` unless every output path ``drv`` declares is the one its
    contents give (Nix's ``checkInvariants``). A ``.drv`` file is text-addressed, so anyone
    can write one that *claims* another derivation's output path; building or rebuilding
    it must not stand in for that derivation."""
    want = dict(finalize(drv, resolve, memo).outputs)
    env = drv.env_map
    for k, o in drv.outputs:
        if o.path != want[k].path:
            raise FormatError(
                f"derivation {drv.name}: output {k!r} is declared as {o.path or '(empty)'}, but the "
                f"derivation gives {want[k].path}: refusing a forged or corrupt derivation"
            )
        # the output env vars are masked out of the hash, so they are checked here: the
        # builder writes where they point (swapped $out and $dev would put each
        # output's contents at the other's path)
        if env.get(k) != o.path:
            raise FormatError(
                f"derivation {drv.name}: environment variable {k!r} is {env.get(k, '(unset)')!r}, "
                f"not its output path {o.path}: refusing a forged or corrupt derivation"
            )


def drv_path(drv: Derivation) -> StorePath:
    """The text-addressed store path of the ``.drv`` file."""
    return make_text_path(f"{drv.name}.drv", drv.serialize().encode(), drv.references(), drv.store_dir)
