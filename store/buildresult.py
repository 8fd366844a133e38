"""The results of ``build.Builder.realise``: ``BuildResult`` per root, and
``BuildFailures``, the error that lists every failure under ``keep_going`` (``-k``).
Both are imported from ``kiln.store.build``."""

from __future__ import annotations

from dataclasses import dataclass

from .buildproduce import BuildError


@dataclass(frozen=True, slots=True)
class BuildResult:
    drv_path: str
    outputs: dict[str, str]
    built: bool  # False when already valid (or substituted)


class BuildFailures(BuildError):
    """Builds or ``--check``s failed under ``keep_going``: ``failed`` maps each failed
    derivation to its error (each was reported as it happened), ``skipped`` lists the
    derivations not attempted because an input failed, ``results`` the roots that were
    realised (and passed their checks)."""

    def __init__(
        self, failed: dict[str, BaseException], skipped: list[str], results: list[BuildResult]
    ) -> None:
        names = sorted(failed)
        msg = f"{len(names)} derivation{'s' if len(names) > 1 else ''} failed (reported above): " + ", ".join(
            names
        )
        if skipped:
            msg += f"; {len(skipped)} not attempted because an input failed: " + ", ".join(
                sorted(skipped)[:5]
            )
            msg += f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        super().__init__(names[0], msg)
        self.failed = failed
        self.skipped = skipped
        self.results = results
