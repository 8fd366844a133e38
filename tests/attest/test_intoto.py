"""in-toto statements: SLSA provenance and VSA shape, parsing, subject matching; and
``kiln.gitinfo.git_info``, the recipe's commit they record."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln.gitinfo import git_info
from kiln.store import dsse, intoto
from kiln.store.errors import FormatError
from kiln.store.signing import SecretKey

NAR = "9a93b2b7dfdac77ceba5a558a580e74667dd6fede4585b91eefb60f03b72df23"
BASE = "0c6kzph7l0dcbyl6jyv3dlb2lrykjxma-hello-2.12"


def _prov(**kw):
    args = dict(
        recipe_file="recipes/hello.recipe",
        attribute="hello",
        parameters={"system": "x86_64-linux"},
        git_commit="684cb30b05a6b312420211274413c9bb69cf95ea",
        git_dirty=False,
        sandbox_settings={"network": False, "namespaces": ["user", "net", "pid"]},
        toolchain_path="/kiln/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-toolchain",
        resolved_dependencies=[
            {"uri": "https://ftp.gnu.org/gnu/hello/hello-2.12.tar.gz", "digest": "sha256:" + NAR},
            {"name": "1111aaaaaaaaaaaaaaaaaaaaaaaaaaaa-gcc", "digest": {"sha256": NAR}},
        ],
        builder_version="0.1.0",
        invocation_id="7e0b5d7a-7f0c-4d3c-9d5a-0d4c1a2b3c4d",
        started_on=1700000000,
        finished_on="2023-11-14T22:14:00Z",
    )
    args.update(kw)
    return intoto.provenance(BASE, NAR, **args)


def test_provenance_shape() -> None:
    st = _prov()
    assert st["_type"] == intoto.STATEMENT_TYPE
    assert st["subject"] == [{"name": BASE, "digest": {"sha256": NAR}}]
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    bd = st["predicate"]["buildDefinition"]
    assert bd["buildType"] == intoto.BUILD_TYPE
    assert bd["externalParameters"]["recipeRepository"] == {
        "commit": "684cb30b05a6b312420211274413c9bb69cf95ea",
        "dirty": False,
    }
    assert bd["internalParameters"]["sandbox"]["network"] is False
    uris = [d.get("uri") for d in bd["resolvedDependencies"]]
    assert "git+file:recipes/hello.recipe" in uris
    assert {"gitCommit": "684cb30b05a6b312420211274413c9bb69cf95ea"} in [
        d["digest"] for d in bd["resolvedDependencies"]
    ]
    md = st["predicate"]["runDetails"]["metadata"]
    assert md["startedOn"] == "2023-11-14T22:13:20Z"
    assert md["finishedOn"] == "2023-11-14T22:14:00Z"
    assert st["predicate"]["runDetails"]["builder"]["id"] == intoto.BUILDER_LOCAL
    # Canonical bytes round-trip through the parser.
    parsed = intoto.parse_statement(intoto.canonical_json(st))
    assert parsed.predicate_type == intoto.PROVENANCE_TYPE
    assert parsed.matches(BASE, NAR)
    assert not parsed.matches(BASE, "0" * 64)
    assert not parsed.matches("0c6kzph7l0dcbyl6jyv3dlb2lrykjxma-evil", NAR)


@pytest.mark.parametrize("name", [None, "", "_"])
def test_a_subject_without_the_paths_name_does_not_match(name: str | None) -> None:
    """in-toto lets a subject go unnamed (or be named "_"); such a statement names no
    store path, so it vouches for none, whatever content it has the digest of."""
    subject: dict = {"digest": {"sha256": NAR}}
    if name is not None:
        subject["name"] = name
    st = {
        "_type": intoto.STATEMENT_TYPE,
        "subject": [subject],
        "predicateType": intoto.PROVENANCE_TYPE,
        "predicate": {},
    }
    parsed = intoto.parse_statement(intoto.canonical_json(st))
    assert not parsed.matches(BASE, NAR)


def test_provenance_rejects_bad_input() -> None:
    with pytest.raises(FormatError):
        intoto.provenance(BASE, "XYZ", **{k: v for k, v in _prov_args().items()})
    with pytest.raises(FormatError, match="uri/url or a digest"):
        _prov(resolved_dependencies=[{"name": "x"}])


def _prov_args() -> dict:
    return dict(
        recipe_file="r",
        attribute="a",
        parameters={},
        git_commit=None,
        git_dirty=True,
        sandbox_settings={},
        toolchain_path=None,
        resolved_dependencies=[],
        builder_version="0",
        invocation_id="x",
        started_on=0,
        finished_on=0,
    )


def test_vsa() -> None:
    st = intoto.vsa(
        BASE,
        NAR,
        verifier_version="0.1.0",
        time_verified=0,
        passed=True,
        resource_uri=f"kiln:/kiln/store/{BASE}",
        derivation="/kiln/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello.drv",
        rebuilt_nar_sha256_hex=NAR,
    )
    p = st["predicate"]
    assert p["verificationResult"] == "PASSED"
    assert p["verifiedLevels"] == [intoto.LEVEL_REPRODUCED]
    assert p["timeVerified"] == "1970-01-01T00:00:00Z"
    failed = intoto.vsa(BASE, NAR, verifier_version="0", time_verified=0, passed=False, resource_uri="x")
    assert failed["predicate"]["verifiedLevels"] == ["FAILED"]


_GOOD = json.dumps(
    {
        "_type": intoto.STATEMENT_TYPE,
        "subject": [{"name": "x", "digest": {"sha256": "ab"}}],
        "predicateType": "p",
    }
)


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b"[]",
        b'{"_type":"x"}',
        json.dumps({"_type": intoto.STATEMENT_TYPE, "subject": []}).encode(),
        # one meaning for every verifier: no duplicate keys (json takes the last), UTF-8 only
        (_GOOD[:-1] + ', "subject": [{"name": "y", "digest": {"sha256": "cd"}}]}').encode(),
        _GOOD.encode("utf-16"),
    ],
)
def test_parse_statement_rejects(payload: bytes) -> None:
    with pytest.raises(FormatError):
        intoto.parse_statement(payload)


def test_times() -> None:
    assert intoto.rfc3339("2024-01-01T01:00:00+01:00") == "2024-01-01T00:00:00Z"
    with pytest.raises(FormatError):
        intoto.parse_time("2024-01-01T00:00:00")


def test_git_info(tmp_path: Path) -> None:
    assert git_info(tmp_path) == (None, False)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.recipe").write_text("x")
    assert git_info(tmp_path / "a.recipe") == (None, True)
    subprocess.run([*git, "-C", str(tmp_path), "add", "a.recipe"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-qm", "x"], check=True)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_info(tmp_path / "a.recipe") == (head, False)
    (tmp_path / "a.recipe").write_text("y")
    assert git_info(tmp_path / "a.recipe") == (head, True)


@pytest.mark.parametrize(
    "text",
    [
        "9999-12-31T23:59:59-23:59",  # past year 9999 in UTC: used to crash kiln verify
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "2026-W22-1T12:00:00Z",  # ISO 8601 week date, not RFC 3339
        "20260601T120000Z",  # basic format
        "2026-06-01 12:00:00Z",  # a space for the T
        "2024-01-01T00:00:00",  # no offset
    ],
)
def test_parse_time_takes_only_rfc3339_that_utc_can_hold(text: str) -> None:
    with pytest.raises(FormatError, match="invalid timestamp"):
        intoto.parse_time(text)


def test_parse_time_accepts_rfc3339() -> None:
    assert intoto.parse_time("2024-01-01t02:00:00+02:00") == datetime(2024, 1, 1, tzinfo=UTC)
    assert intoto.parse_time("2024-01-01T00:00:00.123456789Z").microsecond == 123456


def test_a_signer_never_shows_its_secret() -> None:
    key = SecretKey.generate("k")
    s = dsse.Ed25519Signer(key.key)
    assert repr(key.key[:8])[2:-1] not in repr(s) and "secret" not in repr(s)
