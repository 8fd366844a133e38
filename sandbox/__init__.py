"""kiln.sandbox: run builds in isolation.

A ``SandboxSpec`` (value) describes one build run; an ``Executor`` runs it and returns
a ``Result``. ``BwrapExecutor`` is the local implementation (bubblewrap); a remote
(REAPI) executor can implement the same interface. This package imports nothing else
of kiln. See docs/sandbox.md.
"""

from .bwrap import BwrapExecutor, probe
from .bwrapargv import bwrap_argv
from .errors import SandboxError, SandboxUnavailable
from .executor import Executor, OutputCallback, Reason, Result
from .spec import BUILD_TOP, HOMELESS, SOURCE_DATE_EPOCH, SandboxSpec, build_env, fixed_env

__all__ = [
    "BUILD_TOP",
    "HOMELESS",
    "SOURCE_DATE_EPOCH",
    "BwrapExecutor",
    "Executor",
    "OutputCallback",
    "Reason",
    "Result",
    "SandboxError",
    "SandboxSpec",
    "SandboxUnavailable",
    "build_env",
    "bwrap_argv",
    "fixed_env",
    "probe",
]
