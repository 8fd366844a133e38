"""The executor interface: run a ``SandboxSpec``, stream its log, report a ``Result``.

An ``Executor`` is anything that can run a spec in isolation: ``BwrapExecutor`` locally,
later a Bazel Remote Execution API client. Contract every implementation keeps:

* the builder's stdout and stderr are merged, in order, into ``log`` (a binary file
  object) and, if given, passed chunk by chunk to ``on_output`` (for ``kiln build -L``);
  at most ``spec.max_log_bytes`` bytes are written;
* the spec's limits (wall clock, silence, log size) are enforced; on a breach the whole
  build (every process it started) is killed before ``run`` returns;
* ``run`` returns only when nothing of the build is left running. If the caller is
  interrupted (``KeyboardInterrupt``) or ``on_output`` raises, the build is killed and
  the exception propagates;
* ``cancel_all()`` (callable from any thread) kills every run in progress; those runs
  return reason 'killed' — the build loop calls it when interrupted while builds run in
  worker threads (KeyboardInterrupt is only delivered to the main thread);
* a sandbox that cannot be set up raises ``SandboxUnavailable``/``SandboxError``; it is
  never replaced by an unsandboxed run;
* the builder starts in a fixed process state, never the caller's: the table in
  ``procstate``'s docstring (signals at their defaults and unblocked, personality
  ``PER_LINUX``, every CPU (at most ``spec.cpus`` of them when set), nice 0, the listed
  resource limits, stdin ``/dev/null`` and no fds beyond 0-2, ``spec.umask``, NIS domain
  name ``(none)``). A remote worker
  must set the same, whatever state its own daemon runs in, and report any of it it
  cannot (``isolation()``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from .spec import SandboxSpec

#: Why a run ended. 'ok': exit 0. 'failed': non-zero exit. 'setup-failed': the sandbox
#: could not be set up, the builder never started (the executor's message is in the
#: log). 'timeout', 'silent', 'log-limit': killed by kiln for that limit. 'killed': died
#: of a signal kiln did not send.
Reason = Literal["ok", "failed", "setup-failed", "timeout", "silent", "log-limit", "killed"]

OutputCallback = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Result:
    """How a run ended.

    ``exit_status`` is the builder's exit status (``None`` if the sandbox itself was
    killed); a builder killed by signal N shows as ``128 + N`` (bubblewrap's convention).
    ``signal`` is the signal that killed the sandbox (kiln's SIGKILL on a limit breach, or
    an outside one), else ``None``. ``duration`` is wall-clock seconds, ``log_bytes`` the
    number of bytes written to the log.
    """

    exit_status: int | None
    signal: int | None
    reason: Reason
    duration: float
    log_bytes: int

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    def describe(self) -> str:
        """A one-line human explanation, e.g. for an error message."""
        if self.reason == "ok":
            return "succeeded"
        if self.reason == "failed":
            if self.exit_status is not None and self.exit_status > 128:
                return (
                    f"builder failed with exit status {self.exit_status} (signal {self.exit_status - 128}?)"
                )
            return f"builder failed with exit status {self.exit_status}"
        if self.reason == "setup-failed":
            return "the sandbox could not be set up, the builder never started (the sandbox's message is in the log)"
        if self.reason == "timeout":
            return f"killed after the time limit ({self.duration:.1f} s)"
        if self.reason == "silent":
            return "killed after producing no output for too long"
        if self.reason == "log-limit":
            return f"killed after the log reached its size limit ({self.log_bytes} bytes)"
        return f"killed by signal {self.signal}"


class Executor(abc.ABC):
    """Runs sandboxed builds. See the module docstring for the contract."""

    @abc.abstractmethod
    def run(self, spec: SandboxSpec, log: BinaryIO, *, on_output: OutputCallback | None = None) -> Result:
        """Run ``spec`` to completion (or until a limit), streaming its output to ``log``."""

    def isolation(self) -> dict[str, object]:
        """What this executor isolates, for provenance records (JSON-serialisable)."""
        return {"executor": type(self).__name__}

    @abc.abstractmethod
    def cancel_all(self) -> None:
        """Kill every run in progress (e.g. on Ctrl-C while worker threads run builds);
        those ``run`` calls return with reason 'killed'."""
