"""A recipe in a git repository another user owns: libgit2 (like git's "dubious
ownership" check) will not open it, so ``kiln build`` cannot record its commit and
fails saying how to trust it; once trusted (``safe.directory`` in the global git
config, which libgit2 reads too) the build records the commit. Real git, real build."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from clikit import kiln_at

OTHER = 1234


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another user")
def test_a_repository_of_another_user_is_refused_with_the_way_to_trust_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    blob = tmp_path / "blob"
    blob.write_text("owned\n")
    h = hashlib.sha256(blob.read_bytes()).hexdigest()
    (repo / "x.recipe").write_text(f'let src = fetchurl {{ url = "file://{blob}"; sha256 = "{h}"; }};\n')
    (repo / ".kilnroot").write_text("")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    for d, _dirs, files in os.walk(repo):
        os.chown(d, OTHER, OTHER)
        for f in files:
            os.chown(os.path.join(d, f), OTHER, OTHER)
    home = tmp_path / "userhome"  # (this test's own global git config)
    home.mkdir()
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    r = kiln_at(tmp_path, "build", str(repo / "x.recipe"), "src", env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot open git repository {repo}/.git/: " in r.stderr, r.stderr
    want = f"git config --global --add safe.directory {repo}"
    assert want in r.stderr, r.stderr
    subprocess.run(want.split(), check=True, env={**os.environ, **env})
    r = kiln_at(tmp_path, "build", str(repo / "x.recipe"), "src", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    shown = kiln_at(tmp_path, "verify", out, "--json", env=env)
    prov = json.loads(shown.stdout)["provenance"]
    assert (prov["git_commit"], prov["git_dirty"]) == (commit.stdout.strip(), False)
