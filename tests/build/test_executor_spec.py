"""What the build loop tells an executor beyond bubblewrap's needs, for one that runs
elsewhere (a REAPI client, docs/sandbox.md): the output paths it must bring back
(``SandboxSpec.outputs``), and that a rebuild comparing with valid outputs (``--check``,
``kiln rebuild``) must not be answered from a cache (``cacheable`` False) — a cached
result would compare a build with itself. Real builds in bubblewrap, each spec seen."""

from __future__ import annotations

import shutil

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


class Recording(BwrapExecutor):
    """Bubblewrap, keeping every spec it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list = []

    def run(self, spec, log, **kw):  # noqa: ANN001, ANN201 - the executor's
        self.specs.append(spec)
        return super().run(spec, log, **kw)


def test_outputs_are_declared_and_a_rebuild_is_not_cacheable(store, graph) -> None:
    p, d = graph.drv(
        "two-outs", "mkdir -p $out $dev; echo x > $out/x; echo y > $dev/y", outputs=("out", "dev")
    )
    ex = Recording()
    Builder(store, ex, BuildOptions(), say=lambda m: None).realise([p])
    Builder(store, ex, BuildOptions(check=True), say=lambda m: None).realise([p])
    Builder(store, ex, BuildOptions(), say=lambda m: None).rebuild(p)
    first, check, rebuild = ex.specs
    want = {d.output_path("out"), d.output_path("dev")}
    assert set(first.outputs) == want and set(check.outputs) == want and set(rebuild.outputs) == want
    assert first.cacheable and not check.cacheable and not rebuild.cacheable
