"""The limits Linux puts on the size of a program's arguments and environment, checked
for a build before its sandbox starts (``check``).

``execve`` fails with ``E2BIG`` ("Argument list too long") when

* one argument, or one environment string (``NAME=value``), with its NUL, is over
  ``MAX_ARG_STRLEN``: 131,072 bytes (32 pages);
* or all of them together are over ``arg_limit``: a quarter of the stack limit (at most
  6 MiB, at least 128 KiB), counting each string with its NUL, a pointer to each, and the
  path of the program. The sandbox runs with an 8 MiB stack limit (``procstate.STACK``;
  kiln's hard limit if lower): 2 MiB.

A build meets both twice: when bwrap starts (its argument list ends with the builder's
command; it gets no environment: the build's goes through ``--setenv`` options in a
memfd, ``bwrapstart``) and when bwrap starts the builder in the sandbox (the command and
the whole environment). A recipe's fields become environment variables and its
``build`` script is an argument of ``bash -c``: a field of 1 MB evaluated fine and then
failed here, naming nothing (``cannot start the sandbox /usr/bin/bwrap: [Errno 7]
Argument list too long``). ``check`` names the variable or argument instead, with its
size and the limit, and says what to do.

Counted as the kernel counts them (``bprm_stack_limits``, ``copy_strings`` in
``fs/exec.c``, Linux >= 4.13); the tests check both limits against a real sandbox.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence

from .errors import SandboxError
from .procstate import GATE_FD, INF, OPTIONS_FD, STACK
from .spec import SandboxSpec, build_env

#: the most bytes one argument or environment string may take, its NUL included
MAX_ARG_STRLEN = 32 * 4096
#: what the kernel counts for each string's pointer (``sizeof(char *)``, 64-bit)
POINTER = 8
#: ``_STK_LIM / 4 * 3`` and ``ARG_MAX``: the bounds of ``arg_limit`` whatever the stack
_MOST, _LEAST = 6 << 20, 128 << 10

#: what to do about it, in every message
_ADVICE = (
    "put large data in a file instead: a `path` source or a fetched file, which the build "
    "script reads (see docs/recipe-language.md)"
)


def stack_limit() -> int:
    """The stack limit bwrap and the builder start with (as ``launcher`` sets it)."""
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    return STACK if hard == INF or hard >= STACK else hard


def arg_limit(stack: int) -> int:
    """The most bytes all arguments and environment strings of one ``execve`` may take
    together (each with its NUL and a pointer, with the program's path) under ``stack``."""
    return max(min(stack // 4, _MOST), _LEAST)


def _size(s: str) -> int:
    return len(os.fsencode(s)) + 1


def _total(path: str, argv: Sequence[str], env: Sequence[str]) -> int:
    return (
        _size(path) + sum(map(_size, argv)) + sum(map(_size, env)) + POINTER * (max(len(argv), 1) + len(env))
    )


def _argument(spec: SandboxSpec, i: int) -> str:
    """How a message names argument ``i`` of the builder's command."""
    if i > 0 and spec.argv[i - 1] == "-c":
        return "the build script (the argument of -c)"
    return f"argument {i} of the builder's command"


def check(spec: SandboxSpec, bwrap: str) -> None:
    """Raise ``SandboxError`` if starting ``spec`` (with the bwrap at path ``bwrap``) would
    fail with ``E2BIG``: naming the variable or argument too long, its size and the
    limit, or the largest ones when all of them together are too much."""
    names = list(build_env(spec).items())
    env = [f"{k}={v}" for k, v in names]
    for (k, _), s in zip(names, env, strict=True):
        if (n := _size(s)) > MAX_ARG_STRLEN:
            raise SandboxError(
                f"the build's environment variable {k!r} is too large for Linux to pass to a program: "
                f"{n:,} bytes ('{k}=', its value and a NUL), and one variable or argument may take at "
                f"most {MAX_ARG_STRLEN:,} (MAX_ARG_STRLEN; execve would fail with E2BIG, 'Argument "
                f"list too long'). A recipe's fields become environment variables: {_ADVICE}"
            )
    for i, a in enumerate(spec.argv):
        if (n := _size(a)) > MAX_ARG_STRLEN:
            raise SandboxError(
                f"{_argument(spec, i)} is too large for Linux to pass to a program: {n:,} bytes "
                f"(with its NUL), and one argument or environment variable may take at most "
                f"{MAX_ARG_STRLEN:,} (MAX_ARG_STRLEN; execve would fail with E2BIG, 'Argument list "
                f"too long'): {_ADVICE}"
            )
    stack = stack_limit()
    limit = arg_limit(stack)
    wrapper = ["bwrap", "--args", str(GATE_FD), "--args", str(OPTIONS_FD), "--", *spec.argv]
    total = max(_total(bwrap, wrapper, ()), _total(spec.argv[0], spec.argv, env))
    if total > limit:
        sizes = [(_size(s), f"variable {k!r}") for (k, _), s in zip(names, env, strict=True)]
        sizes += [(_size(a), _argument(spec, i)) for i, a in enumerate(spec.argv)]
        largest = ", ".join(f"{what} {n:,}" for n, what in sorted(sizes, key=lambda x: (-x[0], x[1]))[:3])
        raise SandboxError(
            f"the build's command and environment are too large for Linux to pass to a program: "
            f"{total:,} bytes in all ({len(spec.argv)} arguments and {len(env)} environment variables, "
            f"each with its NUL and a pointer of {POINTER} bytes), and a program may get at most {limit:,} "
            f"(a quarter of the {stack:,}-byte stack limit builds run with; execve would fail with "
            f"E2BIG, 'Argument list too long'). The largest: {largest} bytes. A recipe's fields "
            f"become environment variables: {_ADVICE}"
        )
