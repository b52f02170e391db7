"""Docker images built from a commit's own Dockerfile, with the engine's layer cache.

The build context is the run's code.tar itself, so the Dockerfile and every file it COPYs
come from the commit, never from the work tree. Commit-specific facts stay off the image
(no per-commit labels or build args), so a commit that changes only code reuses every layer
and gets the same image id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError, DockerUnavailableError
from ..redact import Redactor

if TYPE_CHECKING:
    import docker

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def docker_host(environ: Mapping[str, str]) -> str:
    return environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect(environ: Mapping[str, str], base_url: str | None = None, shown: str | None = None) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (or ``base_url``), checked with a ping;
    ``shown`` names the engine in errors."""
    import requests

    from .docker_sdk import docker  # here, not at the top: the SDK takes a tenth of a second to import

    url = base_url or docker_host(environ)
    shown = shown or Redactor(environ).text(url)
    try:
        # version="auto" asks the engine for its API version: that request is the check
        client = docker.DockerClient(base_url=url, version="auto", timeout=120)
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        reason = str(exc).splitlines()[0][:200]
        hint = (
            "check that Docker is installed there and the login user may use it (docker group)"
            if base_url
            else "start dockerd (or set DOCKER_HOST) or use --backend process"
        )
        raise DockerUnavailableError(f"cannot reach the Docker engine at {shown} ({reason}); {hint}") from None
    return client


def engine_version(client: docker.DockerClient) -> str:
    return str(client.version().get("Version", "unknown"))


def image_exists(client: docker.DockerClient, image_id: str) -> bool:
    import requests

    from .docker_sdk import docker

    try:
        client.images.get(image_id)
    except docker.errors.ImageNotFound:
        return False
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise DockerUnavailableError(
            f"cannot ask the Docker engine for image {image_id} ({reason}); is dockerd up?"
        ) from None
    return True


def dockerfile_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def build_image(
    client: docker.DockerClient,
    context_tar: Path,
    dockerfile: str,
    tag: str,
    log_path: Path,
    redactor: Redactor,
    on_step: Callable[[int, int, str], None] = lambda step, total, text: None,
) -> str:
    """Build ``context_tar`` (a git archive) into ``tag``; returns the image id.

    The build output is written to ``log_path`` as it arrives; ``on_step`` sees each step.
    """
    import requests

    from .docker_sdk import docker

    last_lines: list[str] = []
    image_id = None
    with open(context_tar, "rb") as context, open(log_path, "w", encoding="utf-8") as log:
        try:
            chunks = client.api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=dockerfile,
                tag=tag,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for chunk in chunks:
                image_id = _consume_chunk(chunk, log, redactor, on_step, last_lines) or image_id
        except BuildError:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.write(f"\n{redactor.text(str(exc))}\n")
            raise BuildError(f"image build failed: {redactor.text(str(exc))}; see {log_path}") from None
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id


def _consume_chunk(
    chunk: dict[str, Any],
    log: Any,
    redactor: Redactor,
    on_step: Callable[[int, int, str], None],
    last_lines: list[str],
) -> str | None:
    if "error" in chunk:
        message = redactor.text(str(chunk["error"]).strip())
        log.write(message + "\n")
        log.flush()
        context = " | ".join(last_lines[-3:])
        raise BuildError(f"image build failed: {message} (after: {context}); see the build log", message)
    text = redactor.text(chunk.get("stream", ""))
    if text:
        log.write(text)
        log.flush()
        for line in text.splitlines():
            if line.strip():
                last_lines.append(line.strip())
            step = _STEP.match(line)
            if step:
                on_step(int(step.group(1)), int(step.group(2)), step.group(3))
    aux = chunk.get("aux")
    return aux.get("ID") if isinstance(aux, dict) and "ID" in aux else None
