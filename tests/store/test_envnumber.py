"""``envnumber.whole_number`` accepts only ASCII digits, and not too many of them: other
scripts' digits were read as numbers ("١٢" as 12), a superscript ("²") and 5,000 digits
(past ``int``'s limit) ended in an unnamed ``ValueError`` ("internal error")."""

from __future__ import annotations

import pytest

from kiln.store.envnumber import whole_number
from kiln.store.errors import KilnError

#: the most digits accepted (``envnumber.MAX_DIGITS``)
_DIGITS = 20


class _Err(KilnError):
    pass


@pytest.mark.parametrize(
    "value, expected",
    [("", 7), ("0", 0), ("12", 12), ("9" * _DIGITS, int("9" * _DIGITS))],
)
def test_accepted(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("KILN_TEST_N", value)
    assert whole_number("KILN_TEST_N", 7, _Err) == expected


def test_unset_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_TEST_N", raising=False)
    assert whole_number("KILN_TEST_N", 7, _Err) == 7


@pytest.mark.parametrize(
    "value",
    ["²", "١٢", "１２", "5" * 5000, "9" * (_DIGITS + 1), "-1", " 12", "12 ", "1e3", "+3", "1_000"],
    ids=lambda v: v if len(v) < 10 else f"{len(v)}-digits",
)
def test_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KILN_TEST_N", value)
    with pytest.raises(_Err, match="^KILN_TEST_N must be a number of things") as e:
        whole_number("KILN_TEST_N", 7, _Err, "a number of things")
    assert len(str(e.value)) < 200, str(e.value)  # a huge value is not echoed whole
    assert value[:10] in str(e.value)
