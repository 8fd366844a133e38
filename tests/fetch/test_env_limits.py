"""The limits a user raises by environment variable share one reading rule
(``store.envnumber``): unset or empty is the default, digits the value, anything else an
error of the caller's kind naming the variable and what was found."""

from __future__ import annotations

import pytest

from kiln.store.archivetree import ArchiveError, Limits
from kiln.store.fetchgit import GitFetchError, limit
from kiln.store.fetchhttp import FetchError, _max_download


def test_each_limit_reads_its_variable_and_refuses_other_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_FETCH_MAX_SIZE", "")
    monkeypatch.setenv("KILN_UNPACK_MAX_BYTES", "123")
    assert _max_download() > 0 and Limits.from_env().bytes == 123
    for var, call, error in (
        ("KILN_FETCH_MAX_SIZE", _max_download, FetchError),
        ("KILN_UNPACK_MAX_ENTRIES", Limits.from_env, ArchiveError),
        ("KILN_GIT_MAX_DEPTH", lambda: limit("MAX_EXPORT_DEPTH"), GitFetchError),
    ):
        monkeypatch.setenv(var, "10k")
        with pytest.raises(error, match=f"{var} must be .*, found '10k'"):
            call()
        monkeypatch.delenv(var)
