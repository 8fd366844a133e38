"""An option value starting with '-' (``kiln store add --name -x``).

argparse reads any word starting with '-' after an option as another option, so
``--name -x`` failed with "argument --name: expected one argument", while a store path
name may start with '-' (Nix's rules: ``store/paths.py``'s ``check_name``); only
``--name=-x`` worked. ``dash_name`` joins ``--name WORD`` into ``--name=WORD`` for the
``add`` subcommand when WORD is none of ``add``'s own options nor what argparse would
take for one: a forgotten value (``--name --add-root r``) is still a usage error, and
never a path named ``--add-root``.
"""

from __future__ import annotations


def dash_name(argv: list[str], options: frozenset[str]) -> list[str]:
    """``argv`` (``kiln store``'s words) with ``add``'s ``--name WORD`` made
    ``--name=WORD`` where WORD starts with '-' and is not ``option_like`` one of
    ``options`` (``add``'s option strings); everything after ``--`` as it is."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # (the top-level --store DIR, -h)
        i += 2 if argv[i] == "--store" else 1
    if i >= len(argv) or argv[i] != "add":
        return argv
    out, j = argv[: i + 1], i + 1
    while j < len(argv) and argv[j] != "--":
        w = argv[j]
        value = argv[j + 1] if w == "--name" and j + 1 < len(argv) else ""
        if value.startswith("-") and not option_like(value, options):
            out.append(f"--name={value}")
            j += 2
            continue
        out.append(w)
        j += 1
    return out + argv[j:]


def option_like(word: str, options: frozenset[str]) -> bool:
    """Whether argparse reads ``word`` as one of ``options`` (exactly, a long one by a
    prefix, a short one with more after it: ``-hx``) or as ``--``."""
    if word == "--" or word in options:
        return True
    if word.startswith("--"):
        head = word.split("=", 1)[0]
        return any(o.startswith(head) for o in options if o.startswith("--"))
    return word[:2] in options
