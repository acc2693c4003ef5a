"""Bugs planted into ``orbital node`` processes, for the teeth of tests/test_security.py.

Python imports ``sitecustomize`` at start-up from the first directory of ``sys.path`` that
has one; a test puts this directory on the node processes' ``PYTHONPATH`` and names the
bugs in ``ORBITAL_PLANT`` (comma-separated). Without ``ORBITAL_PLANT`` nothing is changed.

* ``no_guard``: the core's guard accepts every message (``raft.core.guard``).
* ``no_sender_binding``: the transport no longer checks that a message's ``src`` is the
  node its connection's key belongs to.
"""

from __future__ import annotations

import os

_PLANTS = {p for p in os.environ.get("ORBITAL_PLANT", "").split(",") if p}

if "no_guard" in _PLANTS:
    from raft.core import guard as _guard

    _guard.Guard.check = lambda self, core, m: None  # type: ignore[method-assign]
    _guard.Guard.may_campaign = lambda self, core: True  # type: ignore[method-assign]

if "no_sender_binding" in _PLANTS:
    from raft import transport as _transport

    _original = _transport.ZmqTransport._received

    def _received(self: _transport.ZmqTransport, parts: list[bytes]) -> None:
        if self._keys is not None:
            msg = self._decode(parts[1:])
            if msg is None:
                return
            parts = [msg.src.encode(), *parts[1:]]  # as if the key were the claimed sender's
        _original(self, parts)

    _transport.ZmqTransport._received = _received  # type: ignore[method-assign]
