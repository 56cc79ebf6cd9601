"""The contracts layer: the interfaces parts of moonshard rely on, apart from what implements them.

- ``contracts.host``: host capabilities (``Capability``, ``RunScope``) and ``HostAnswerer``, all
  the sandbox needs to have its host requests answered;
- ``contracts.worker``: what a worker is asked (requests), what it answers (typed replies),
  how it fails (typed errors), its configuration and its handles;
- ``contracts.wire``: the one codec of requests, replies and errors for the process wire;
- the store's contract is ``moonshard.store.api`` (kept beside its implementations, which
  import nothing else).

Nothing here imports an implementation.
"""

from __future__ import annotations

__all__: list[str] = []
