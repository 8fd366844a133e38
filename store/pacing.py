"""The slowest pace a peer may send at: one rule for every download kiln makes.

A transfer may last ``GRACE`` seconds plus one second per ``MIN_RATE`` bytes received:
far below any real link, far above a slowloris trickle. Source fetches apply it here
(``fetchhttp``, ``fetchgit``); the registry's client and server through
``kiln.registry.pace``. Values only, so both layers can import them cheaply.
"""

from __future__ import annotations

#: slowest average pace (bytes/s) accepted once ``GRACE`` seconds have passed
MIN_RATE = 4096
GRACE = 60.0
