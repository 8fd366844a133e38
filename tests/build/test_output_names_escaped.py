"""File names a build chose, in kiln's messages: a newline in one is written ``\\n``
(``shownname``, as ``kiln store ls`` shows names), so it cannot start a line of kiln's
own (``error: forged``); ESC was escaped already. Real sandboxed builds (busybox)."""

from __future__ import annotations

import shutil

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions, NotDeterministic
from kiln.store.errors import KilnError
from kiln.store.shownname import shown_name

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

FORGED = "$(printf 'x\\nerror: forged')"


def builder(store, **kw) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(**kw), say=lambda m: None)


def _no_forged_line(msg: str) -> None:
    assert not any(line.startswith("error: forged") for line in msg.split("\n")), msg


def test_an_unstorable_files_name(store, graph):
    d, _ = graph.drv("fifo", f'mkdir $out; mkfifo "$out/{FORGED}"')
    with pytest.raises(KilnError) as e:
        builder(store).realise([d])
    _no_forged_line(str(e.value))
    assert "/x\\nerror: forged: is a fifo" in str(e.value)


def test_a_stray_references_file_name(store, graph):
    d, _ = graph.drv("stray", f'mkdir $out; echo /kiln/store/{"0" * 32}-x > "$out/{FORGED}"')
    with pytest.raises(BuildError) as e:
        builder(store).realise([d])
    _no_forged_line(str(e.value))
    assert f"\n  x\\nerror: forged: /kiln/store/{'0' * 32}-x" in str(e.value)


def test_check_differences_name_files_on_one_line(store, graph):
    """The file list, and diffoscope's explanation (indented: it prints names raw)."""
    d, _ = graph.drv("nondet", f'mkdir $out; cat /proc/sys/kernel/random/uuid > "$out/{FORGED}"')
    builder(store).realise([d])
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True).realise([d])
    _no_forged_line(str(e.value))
    assert "  x\\nerror: forged: contents differ" in str(e.value), str(e.value)


def test_check_differences_of_a_name_that_is_not_utf8(store, graph):
    # diffoscope prints the byte raw: its output was decoded strictly (UnicodeDecodeError)
    d, _ = graph.drv("nondet", "mkdir $out; cat /proc/sys/kernel/random/uuid > \"$out/$(printf 'y\\377')\"")
    builder(store).realise([d])
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True).realise([d])
    assert "  y\\xff: contents differ" in str(e.value), str(e.value)


def test_shown_name_is_ls_b():
    assert shown_name(b"a\nb\\c\td\re\x1b\xff") == "a\\nb\\\\c\\td\\re\\x1b\\xff"
    assert shown_name("caf\u00e9 \u202e") == "caf\u00e9 \\xe2\\x80\\xae"
