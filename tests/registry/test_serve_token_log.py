"""Tokens as an operator sees them: the access-log line of a refused request (401, 403)
names the id of the token the client presented (a revoked token still in use), only
the id, only of a well-formed token, never the secret; ``kiln registry token list``
prints the creation time as ISO 8601 UTC, not as an epoch number."""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

from regkit import kiln, request


def test_a_refused_token_is_logged_by_its_id(tmp_path: Path, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    revoked = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    reader = kiln("registry", "token", "create", "--scope", "read", "--dir", str(reg)).stdout.strip()
    rid, kid = revoked.split("_")[1], reader.split("_")[1]
    assert kiln("registry", "token", "revoke", "--dir", str(reg), rid).returncode == 0
    log = tmp_path / "access.log"
    srv = kiln_server("--dir", str(reg), "--access-log", str(log))
    sent = {  # case -> (Authorization, status); each PUT to a path of its own
        "revoked": (f"Bearer {revoked}", 401),
        "lacks-scope": (f"Bearer {reader}", 403),
        # malformed: an id that is not 8 hex digits is not written, whatever it holds
        "bad-id": ("Bearer kiln_ZZ\tx y_secret", 401),
        "no-secret": (f"Bearer kiln_{rid}_", 401),
        "basic": (f"Basic kiln_{rid}_abc", 401),
    }
    paths = {case: f"/{c * 32}.narinfo" for case, c in zip(sent, "abcdf", strict=True)}
    for case, (auth, status) in sent.items():
        assert request(srv.url + paths[case], "PUT", b"x", {"Authorization": auth})[0] == status, case
    srv.stop()
    text = log.read_text()
    last = {case: next(ln for ln in text.splitlines() if paths[case] in ln).split()[-3:] for case in sent}
    assert last["revoked"][0] == "401" and last["revoked"][2] == rid, last
    assert last["lacks-scope"][0] == "403" and last["lacks-scope"][2] == kid, last
    for case in ("bad-id", "no-secret", "basic"):
        assert last[case][2] == "-", last
    for token in (revoked, reader):  # the secrets are never written
        assert token.split("_", 2)[2] not in text


def test_token_list_prints_the_creation_time_in_iso_8601_utc(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    before = int(time.time())
    tok = kiln("registry", "token", "create", "--scope", "read", "--dir", str(reg), "--comment", "ci").stdout
    after = int(time.time())
    listed = kiln("registry", "token", "list", "--dir", str(reg)).stdout.splitlines()
    assert len(listed) == 1
    tid, scopes, created, comment = listed[0].split("\t")
    assert (tid, scopes, comment) == (tok.split("_")[1], "read", "ci")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created), created
    stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 1 <= stamp <= after + 1, (created, before, after)
