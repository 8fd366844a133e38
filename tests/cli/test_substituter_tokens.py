"""``kiln build``'s substituter tokens (``tokenargs.substituter_tokens``): ``URL=TOKEN``
pairs from ``KILN_SUBSTITUTER_TOKENS`` or from the file ``KILN_SUBSTITUTER_TOKENS_FILE``
names, which is held to the token file rules (mode 0600, ASCII, not empty). Errors
never show a token. (A real private registry read with them: tests/build/test_substitute.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.store.errors import KilnError
from kiln.tokenargs import substituter_tokens

SECRET = "kiln_abc_s3cr3t"


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    f = tmp_path / "tokens"
    f.write_text(text)
    f.chmod(mode)
    return f


def test_pairs_from_the_variable_or_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_SUBSTITUTER_TOKENS_FILE", raising=False)
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS", f"http://a:1={SECRET} https://b/c=t2")
    assert substituter_tokens() == {"http://a:1": SECRET, "https://b/c": "t2"}
    monkeypatch.delenv("KILN_SUBSTITUTER_TOKENS")
    f = _file(tmp_path, f"# private registries\nhttp://a:1={SECRET}\n\n  https://b/c=t2 http://d=t3\n")
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS_FILE", str(f))
    assert substituter_tokens() == {"http://a:1": SECRET, "https://b/c": "t2", "http://d": "t3"}
    monkeypatch.delenv("KILN_SUBSTITUTER_TOKENS_FILE")
    assert substituter_tokens() == {}


@pytest.mark.parametrize(
    ("text", "mode", "said"),
    [
        (f"http://a={SECRET}\n", 0o644, "accessible by group/others (mode 644); run: chmod 600"),
        ("\n  \n", 0o600, "is empty"),
        (f"http://a={SECRET}\n{SECRET}\n", 0o600, "line 2: expected URL=TOKEN pairs"),
        (f"http://a={SECRET}é\n", 0o600, "non-ASCII"),
    ],
)
def test_a_bad_token_file_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: int, said: str
) -> None:
    monkeypatch.delenv("KILN_SUBSTITUTER_TOKENS", raising=False)
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS_FILE", str(_file(tmp_path, text, mode)))
    with pytest.raises(KilnError) as e:
        substituter_tokens()
    assert said in str(e.value) and SECRET not in str(e.value)


def test_the_variable_and_the_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS", f"http://a={SECRET}")
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS_FILE", str(_file(tmp_path, f"http://b={SECRET}\n")))
    with pytest.raises(KilnError, match="both set") as e:
        substituter_tokens()
    assert SECRET not in str(e.value)
    monkeypatch.setenv("KILN_SUBSTITUTER_TOKENS_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("KILN_SUBSTITUTER_TOKENS")
    with pytest.raises(KilnError, match="no such file"):
        substituter_tokens()
