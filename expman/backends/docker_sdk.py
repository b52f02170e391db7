"""The Docker SDK, imported without its own SSH transport unless DOCKER_HOST asks for it.

docker-py imports paramiko whenever it can, for ``ssh://`` engine URLs: that is half of its
import time (about 0.1 s of every ``expman submit``). expman's ssh backend reaches remote
engines through its own tunnel, so the SDK's transport is needed only for an ``ssh://``
DOCKER_HOST.
"""

from __future__ import annotations

import os
import sys

_masked = "paramiko" not in sys.modules and not os.environ.get("DOCKER_HOST", "").startswith("ssh://")
if _masked:
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # "import paramiko" fails at once
try:
    import docker
    import docker.errors
    import docker.types
finally:
    if _masked:
        del sys.modules["paramiko"]

__all__ = ["docker"]
