"""Helpers for registry tests: keys, small stores, real servers on 127.0.0.1 (``kiln serve``
and Debian's nginx) started as subprocesses and stopped by pid, and a raw HTTP helper."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from clikit import kiln as kiln  # noqa: F401 - re-exported for the registry tests

from kiln.store.keyfiles import write_public_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keys:
    def __init__(self, d: Path, name: str) -> None:
        self.sk = SecretKey.generate(name)
        self.pk = self.sk.public()
        self.sk_file = d / f"{name}.sk"
        self.pk_file = d / f"{name}.pk"
        write_secret_key(self.sk_file, self.sk)
        write_public_key(self.pk_file, self.pk)


def make_store(root: Path, store_dir: str = "/kiln/store") -> LocalStore:
    return LocalStore.open(root, store_dir=store_dir)


def add_tree(store: LocalStore, tmp: Path, name: str, content: str) -> str:
    src = tmp / "src" / name
    src.mkdir(parents=True)
    (src / "file").write_text(content)
    return store.add_path(src, name).path


def add_chain(store: LocalStore, tmp: Path, n: int, tag: str = "x") -> list[str]:
    """``n`` paths where each references the previous one (a closure of depth n)."""
    out: list[str] = []
    for i in range(n):
        refs = out[-1:]
        text = f"{tag} {i} {' '.join(refs)}\n".encode()
        out.append(store.add_text(f"{tag}-{i}.txt", text, refs).path)
    return out


class Server:
    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self) -> None:
        """``stop``, then close the pipes to it (a test that read them is done: teardown)."""
        self.stop()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __del__(self) -> None:
        # A test that stopped its server (and maybe read its stderr) drops it: close the
        # pipes then, else each is an "unclosed file" ResourceWarning at the test's end.
        if self.proc.returncode is not None:
            self._close_pipes()


def start_kiln(
    args: list[str], max_file_bytes: int | None = None, nofile: tuple[int, int] | None = None
) -> Server:
    """``kiln serve ARGS`` on a free port; ``max_file_bytes`` caps the size of every file
    it writes (RLIMIT_FSIZE: writes past it fail with EFBIG, a full disk's stand-in);
    ``nofile`` is its (soft, hard) limit on open files."""
    import resource

    # port 0: the server binds a free port itself and says which (no window in which
    # another process can take a port picked here)
    cmd = [sys.executable, "-m", "kiln", "serve", *args, "--listen", "127.0.0.1:0"]

    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if "listening on http://127.0.0.1:" not in line:
        proc.wait(5)
        raise RuntimeError(f"kiln serve failed: {line} {proc.stderr.read()}")  # type: ignore[union-attr]
    return Server(proc, line.split("listening on ", 1)[1].strip())


NGINX_CONF = """
{user}
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location ~ /\\. {{ deny all; }}
        location ~ \\.narinfo$ {{ add_header Cache-Control "public, max-age=3600"; }}
        location /nar/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
        location /blobs/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
"""


def start_nginx(root: Path, tmp: Path, workers: int = 1) -> Server:
    """Debian's nginx serving ``root`` on a free port (``run_nginx``)."""
    # as root, workers would drop to 'nobody' and could not read 0700 pytest temp dirs
    user = "user root;" if os.geteuid() == 0 else ""
    return run_nginx(
        tmp,
        lambda port: NGINX_CONF.format(user=user, tmp=tmp, port=port, root=root, workers=workers),
        f"no /nix-cache-info in {root}?",
    )


def run_nginx(tmp: Path, conf_for: Callable[[int], str], hint: str) -> Server:
    """Debian's nginx with the configuration ``conf_for(port)`` (written into ``tmp``),
    once it answers ``/nix-cache-info``. nginx cannot be told port 0 and say which it
    took: a port picked here that another process (another pytest worker) takes before
    nginx binds it is given up for a new one, up to three times."""
    for _ in range(2):
        with contextlib.suppress(_PortTaken):
            return _run_nginx(tmp, conf_for, hint, free_port())
    return _run_nginx(tmp, conf_for, hint, free_port())


class _PortTaken(RuntimeError):
    pass


def _run_nginx(tmp: Path, conf_for: Callable[[int], str], hint: str, port: int) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(conf_for(port))
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/nix-cache-info", timeout=1).read()
            return Server(proc, url)
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read()  # type: ignore[union-attr]
                if "Address already in use" in err:
                    raise _PortTaken(err) from None
                raise RuntimeError(f"nginx failed: {err}") from None
            time.sleep(0.05)
    Server(proc, url).stop()  # (SIGTERM: the master takes its workers with it)
    raise RuntimeError(f"nginx did not come up on {url} ({hint})")


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, u.path or "/", body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def add_built(store: LocalStore, tmp: Path, name: str, content: str, refs: tuple[str, ...] = ()) -> str:
    """An input-addressed path (as a build would register it): needs a signature to be
    trusted by Nix, unlike content-addressed ones."""
    from kiln.store.hashes import Hash
    from kiln.store.paths import make_output_path

    path = str(make_output_path(Hash.sha256_of(f"{name}:{content}".encode()), "out", name, store.store_dir))
    tree = tmp / "built" / name
    tree.mkdir(parents=True)
    (tree / "data").write_text(content + " ".join(refs))
    return store.register_built(path, tree, refs, None).path


def push_cli(
    store: LocalStore, paths: list[str], url: str, token: str, sign_key: Path
) -> subprocess.CompletedProcess:
    """``kiln push --store STORE PATHS... --to URL --token TOKEN --sign-key SIGN_KEY``."""
    return kiln(
        "push", "--store", str(store.root), *paths, "--to", url, "--token", token, "--sign-key", str(sign_key)
    )


@contextlib.contextmanager
def verify_waiting_for_a_sync(reg: Path, *flags: str) -> Iterator[subprocess.Popen]:
    """``kiln registry verify --dir reg FLAGS --json`` started while "a mirror sync" (this
    test, holding ``.kiln/mirror.lock``) holds the directory; yields the process once it
    says it is waiting, i.e. has checked everything and is about to delete. The lock is
    released when the block ends: collect the process's output after it."""
    import fcntl

    from clikit import said_until

    from kiln.registry.dirlock import MIRROR_LOCK

    lock = reg / MIRROR_LOCK
    lock.parent.mkdir(exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "kiln", "registry", "verify", "--dir", str(reg), *flags, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        said_until(p.stderr, "waiting for a kiln mirror sync", 60)
        yield p
    finally:
        os.close(fd)
