"""What every ``--json`` of kiln prints: one convention for scripts (``set -e``, ``jq``).

Invariants (README, "In scripts: streams and exit statuses"):

- A command given ``--json`` that gets to a result prints exactly one JSON document on
  stdout, and nothing else there: an object whose top-level ``"ok"`` is a bool, true
  exactly when the exit status is 0. Warnings, notes and progress go to stderr. A
  command stopped before its result (an error: ``error: ...`` on stderr, status 1 or
  70; a usage error, status 2) prints nothing on stdout, so ``kiln ... --json | jq -e
  .ok`` fails for it too (``jq -e`` exits 4 on no input).
- Every hash a document carries as ``algo:digest`` is written as a narinfo's
  ``NarHash:`` is: ``sha256:`` and the nix-base32 digest (Nix 2.4+'s ``nix path-info
  --json`` prints SRI instead)
  (``hash_text``), whatever command prints it, so two documents' hashes compare as
  strings. A field whose name holds the algorithm (``root_sha256`` of ``kiln mirror
  status``: a file's digest, as ``sha256sum`` prints it) and documents of a standard
  format (SBOMs, in-toto statements, ``show-derivation``) keep their format's form.
- Keys a command printed before this convention keep their names and meaning; ``ok``
  is added where it was missing.

``emit`` prints a document; commands whose document has other needs (the order Nix
gives ``path-info``'s fields) pass ``sort_keys=False``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from kiln.store.hashes import Hash


def hash_text(h: Hash) -> str:
    """``h`` as every ``--json`` document writes a hash: ``sha256:<nix32>``."""
    return h.to_nix32()


def document(ok: bool, doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with ``"ok": ok`` (first when keys are not sorted). A ``doc`` that has an
    ``ok`` of its own must agree: the exit status and ``ok`` never tell two stories."""
    if "ok" in doc and doc["ok"] is not ok:
        raise AssertionError(f"--json document says ok={doc['ok']!r}, the command ok={ok!r}")
    return {"ok": ok, **{k: v for k, v in doc.items() if k != "ok"}}


def emit(ok: bool, doc: Mapping[str, Any], *, sort_keys: bool = True) -> None:
    """Print ``document(ok, doc)`` on stdout, the one JSON document of the command."""
    sys.stdout.write(json.dumps(document(ok, doc), indent=2, sort_keys=sort_keys) + "\n")
