"""The sandbox can never read a signing key.

Builds run by ``kiln build --sign-key`` and ``kiln rebuild --key`` try to read the store's
``keys/default.sec`` and the key file given on the command line by their host paths.
Both files exist and are readable by the user running kiln, yet inside the sandbox they
are simply absent: a build that needs them fails with "No such file or directory",
while a build that only probes for them succeeds and records that it saw nothing.
"""

from __future__ import annotations

from rbkit import needs_bwrap

from kiln.store.build import Builder, BuildOptions

pytestmark = needs_bwrap

PROBE = (
    "for f in $default_key $given_key $key_dir; do "
    "if cat $f 2>/dev/null || ls $f 2>/dev/null; then echo LEAKED >&2; exit 1; fi; done; "
    "echo nothing-visible > $out"
)


def test_build_cannot_read_keys(store, graph, kiln, rebuilder_keys):
    from kiln.buildglue import load_sign_key

    load_sign_key(store, None, create=True)  # the store's keys/default.sec, as kiln build makes it
    default_key = store.root / "keys" / "default.sec"
    assert default_key.is_file() and rebuilder_keys.sk_file.is_file()
    given = rebuilder_keys.sk_file
    env = {"default_key": str(default_key), "given_key": str(given), "key_dir": str(default_key.parent)}

    steal, steal_out = graph.drv("steal", f"cat {default_key} {given} > $out", env=env)
    probe, probe_out = graph.drv("probe", PROBE, env=env)

    # The probe builds (and signs with --sign-key) fine: the keys exist only outside.
    kiln("build", "--sign-key", str(given), probe)
    assert store.real_path(probe_out).read_text() == "nothing-visible\n"

    r = kiln("build", "--sign-key", str(given), steal, expect=1)
    assert "failed" in r.stderr
    assert f"cat: can't open '{default_key}': No such file or directory" in r.stderr
    assert f"cat: can't open '{given}': No such file or directory" in r.stderr
    assert not store.is_valid(steal_out)

    # The rebuilder's key is just as invisible to the rebuild it signs for.
    r = kiln("rebuild", probe_out, "--key", str(given))
    assert f"{probe_out}: reproduced" in r.stdout


def test_keys_absent_even_when_the_build_runs_in_process(store, graph, rebuilder_keys):
    # The library path too: a Builder used in-process mounts only the input closure.
    from kiln.sandbox.bwrap import BwrapExecutor

    env = {
        "default_key": str(store.root / "keys" / "default.sec"),
        "given_key": str(rebuilder_keys.sk_file),
        "key_dir": str(rebuilder_keys.sk_file.parent),
    }
    probe, out = graph.drv("probe-lib", PROBE, env=env)
    Builder(store, BwrapExecutor(), BuildOptions(progress=False), say=lambda m: None).realise([probe])
    assert store.real_path(out).read_text() == "nothing-visible\n"
