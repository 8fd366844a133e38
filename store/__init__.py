"""kiln.store: formats (NAR, nix-base32, store paths, derivations, narinfo, signatures),
the local object store, its SQLite metadata, garbage collection and the build loop.

Layering: this package imports nothing of kiln's except ``kiln.sandbox`` (the executor
interface used by the build loop). Pure format modules (``nixbase32``, ``hashes``,
``paths``, ``nar``, ``narinfo``, ``derivation``, ``signing``) do no I/O of their own.
"""
