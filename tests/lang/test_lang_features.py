"""Please-style golden tests: each tests/data/lang/features/<name>.recipe evaluates to
the derivations in <name>.expected (JSON: attribute → drv path, out path and the whole
derivation). Regenerate after an intended change with KILN_UPDATE_EXPECTED=1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lang_helpers import DATA

from kiln.lang import evaluate_file

FEATURES = sorted(p.stem for p in (DATA / "features").glob("*.recipe"))


def snapshot(ev) -> dict:
    out = {}
    for attr, p in ev.attributes().items():
        d = ev.drvs[p]
        out[attr] = {
            "drvPath": p,
            "outPath": d.output_path("out"),
            "closure": {
                q: {
                    "outputs": {k: [o.path, o.hash_algo, o.hash] for k, o in ev.drvs[q].outputs},
                    "inputDrvs": {k: list(v) for k, v in ev.drvs[q].input_drvs},
                    "inputSrcs": list(ev.drvs[q].input_srcs),
                    "builder": ev.drvs[q].builder,
                    "args": list(ev.drvs[q].args),
                    "env": dict(ev.drvs[q].env),
                }
                for q in ev.closure(p)
            },
        }
    return out


@pytest.mark.parametrize("name", FEATURES)
def test_feature(name: str, features: Path, hash_sources, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file(f"{name}.recipe", add_source=hash_sources)
    got = json.dumps(snapshot(ev), indent=2, sort_keys=True) + "\n"
    expected_file = DATA / "features" / f"{name}.expected"
    if os.environ.get("KILN_UPDATE_EXPECTED") == "1":
        expected_file.write_text(got)
    assert got == expected_file.read_text()


def test_every_feature_has_expectations():
    for name in FEATURES:
        assert (DATA / "features" / f"{name}.expected").is_file(), name
