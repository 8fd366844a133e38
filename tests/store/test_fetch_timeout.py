"""``KILN_FETCH_TIMEOUT`` is bounded: an infinite or huge value reached
``socket.settimeout`` and ended in "OverflowError: timestamp out of range", which named
no variable."""

from __future__ import annotations

import socket

import pytest

from kiln.store.fetchhttp import FetchError, fetch_timeout


@pytest.mark.parametrize(
    "value", ["1e10", "inf", "Infinity", "-inf", "nan", "1e400", "604801", "0", "-1", "x"]
)
def test_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KILN_FETCH_TIMEOUT", value)
    with pytest.raises(FetchError, match="^KILN_FETCH_TIMEOUT must be a .*number of seconds"):
        fetch_timeout()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 30.0), ("30", 30.0), ("0.5", 0.5), ("604800", 604800.0)]
)
def test_accepted_and_usable(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float) -> None:
    if value is None:
        monkeypatch.delenv("KILN_FETCH_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("KILN_FETCH_TIMEOUT", value)
    assert fetch_timeout() == expected
    with socket.socket() as s:
        s.settimeout(fetch_timeout())  # (what overflowed)


def test_a_long_bad_value_is_not_echoed_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_FETCH_TIMEOUT", "9" * 5000)
    with pytest.raises(FetchError) as e:
        fetch_timeout()
    assert len(str(e.value)) < 200
