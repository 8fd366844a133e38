"""The policy ``POST /verify`` applies: the file as it is when each review is answered.

Invariants:

- **A change reaches the next answer.** ``kiln key revoke NAME --policy FILE`` edits the
  policy file (atomically, by rename) while ``kiln serve --policy FILE`` runs. A server
  that kept the policy it read at start-up went on allowing what a now-compromised key
  signed until it was restarted, while ``kiln verify --policy FILE`` already failed it.
  So ``PolicyWatch.current`` loads the file again before every answer. There is no cache
  to go stale: reading a small TOML file (and the key files it names, which a stat of
  the policy alone would miss) is noise beside what a review costs anyway (a closure
  download, or re-hashing the closure in the store).
- **Fail closed.** A policy that no longer loads (malformed after an edit, deleted,
  unreadable) is never replaced by the last one that did: ``current`` raises
  ``PolicyError`` and the review is denied with that reason (``admission.unjudged``).
- **Every answer names the policy that judged it**: its source and the sha256 of its
  text (``Policy.digest``), so an operator can tell which version of the file decided.

A change of digest, and each new load error, is said once on stderr per worker, so the
server's log shows when a revocation took effect.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from kiln.store.policy import Policy, PolicyError, load


class PolicyWatch:
    """The policy file at ``path``, loaded afresh by ``current``. ``initial`` is what was
    loaded at start-up (checked before the server forked): the baseline for saying on
    stderr that the file changed. Safe to call from several threads."""

    def __init__(self, path: Path, initial: Policy | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._digest = initial.digest if initial is not None else ""
        self._error = ""

    def current(self) -> Policy:
        """The policy as the file says now; ``PolicyError`` (saying what is wrong with the
        file) when it does not load: never an older policy in its place."""
        try:
            policy = load(self.path)
        except PolicyError as e:
            self._note(error=str(e))
            raise
        self._note(digest=policy.digest)
        return policy

    def _note(self, *, digest: str = "", error: str = "") -> None:
        """Say on stderr when the policy in force changes, or stops loading (once each)."""
        with self._lock:
            if error:
                if error == self._error:
                    return
                self._error = error
                msg = f"policy {self.path} does not load; POST /verify denies every review until it does: {error}"
            else:
                if digest == self._digest and not self._error:
                    return
                self._digest, self._error = digest, ""
                msg = f"policy {self.path} in force: sha256:{digest}"
        print(f"kiln serve: {msg}", file=sys.stderr, flush=True)
