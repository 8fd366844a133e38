"""``KILN_SIGS_NEEDED`` is read by the rule of every number from the environment
(``envnumber.whole_number``): a superscript or thousands of digits were an unnamed
``ValueError`` ("internal error") from ``make_substituter``'s own ``int()``."""

from __future__ import annotations

import pytest

from kiln.buildsubst import make_substituter
from kiln.registry import substitute
from kiln.store.errors import KilnError


@pytest.fixture
def needed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thresholds substituters were made with (no registry is contacted)."""
    seen: list[int] = []

    class Fake:
        def __init__(self, regs, keys, sigs_needed, tokens):  # noqa: ANN001 - Substituter's
            seen.append(sigs_needed)

        def close(self) -> None:
            pass

    monkeypatch.setattr(substitute, "Substituter", Fake)
    monkeypatch.delenv("KILN_SUBSTITUTERS", raising=False)
    monkeypatch.delenv("KILN_TRUSTED_KEYS", raising=False)
    return seen


@pytest.mark.parametrize("value", ["²", "١", "9" * 5000, "-1", "1e3", "abc"], ids=lambda v: v[:8])
def test_a_bad_kiln_sigs_needed_is_refused_by_name(monkeypatch, needed, value) -> None:  # noqa: ANN001
    monkeypatch.setenv("KILN_SIGS_NEEDED", value)
    with pytest.raises(KilnError, match="^KILN_SIGS_NEEDED must be a whole number >= 0") as e:
        make_substituter(["file:///nonexistent"], [], None)
    assert len(str(e.value)) < 200
    assert needed == []


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("", 1), ("0", 0), ("3", 3)])
def test_kiln_sigs_needed_values(monkeypatch, needed, value, expected) -> None:  # noqa: ANN001
    if value is None:
        monkeypatch.delenv("KILN_SIGS_NEEDED", raising=False)
    else:
        monkeypatch.setenv("KILN_SIGS_NEEDED", value)
    make_substituter(["file:///nonexistent"], [], None).close()
    assert needed == [expected]
    make_substituter(["file:///nonexistent"], [], 2).close()  # the option wins
    assert needed == [expected, 2]
