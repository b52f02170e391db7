"""Runs in a container on a Docker engine (this machine's, or the one DOCKER_HOST names)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import requests
from urllib3.exceptions import HTTPError

from ..errors import ConfigError, DockerUnavailableError, LaunchError
from ..experiment.archive import container_payload
from ..rundir.layout import RunDir
from ..rundir.logs import STDERR, STDOUT, LogSink
from ..rundir.record import EndState, RunRecord
from . import engine
from .base import Backend, Execution, attempt_variables
from .docker_sdk import docker

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

CODE_PATH, OUTPUT_PATH, CONFIG_PATH = "/code", "/output", "/expman/config.json"
ENGINE_WAIT_S = 60  # the engine's answer once the output has ended (the container has exited)
ORPHAN_GRACE_S = 10
LAUNCH_TRIES = 3
LAUNCH_BACKOFF_S = 1.0  # a container left by a silent earlier attempt: SIGTERM, then SIGKILL after this


def container_environment(record: RunRecord) -> dict[str, str]:
    return {
        "EXPMAN_RUN_ID": record.run_id,
        "EXPMAN_OUTPUT_DIR": OUTPUT_PATH,
        "EXPMAN_CONFIG": CONFIG_PATH,
        **attempt_variables(record),
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
        # The container's init (tini) passes signals to the program's whole process group, not
        # only to its direct child: a wrapper script's children get them too.
        "TINI_KILL_PROCESS_GROUP": "1",
    }


def container_spec(record: RunRecord, output_dir: str, user: str) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: a pure function of the record, the
    output directory on the engine's host and the uid:gid to run as."""
    res = record.resources
    spec: dict[str, Any] = {
        "image": record.image.image_id,
        "command": list(record.command),
        "working_dir": CODE_PATH,
        "user": user,
        "init": True,
        "security_opt": ["no-new-privileges"],
        "environment": container_environment(record),
        "labels": {"expman.run_id": record.run_id, "expman.commit": record.git.commit},
        "mounts": [docker.types.Mount(target=OUTPUT_PATH, source=output_dir, type="bind", read_only=False)],
        "detach": True,
    }
    if res.get("cpus"):
        spec["nano_cpus"] = int(res["cpus"] * 1e9)
    if res.get("memory_bytes"):
        spec["mem_limit"] = res["memory_bytes"]
        spec["memswap_limit"] = res["memory_bytes"]  # no swap: the limit is the limit
    if res.get("gpus"):
        spec["device_requests"] = [docker.types.DeviceRequest(count=res["gpus"], capabilities=[["gpu"]])]
    return spec


class LocalBackend(Backend):
    name = "local"

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = engine.connect(self.environ)
        return self._client

    def check(self, plan: Plan) -> None:
        if plan.dockerfile is None:
            raise ConfigError(
                f"commit {plan.commit[:12]} has no {plan.config.settings.dockerfile}; "
                "commit one or use --backend process"
            )
        self.client  # noqa: B018 - connecting is the check

    def check_record(self, record: RunRecord) -> None:
        require_dockerfile(record, self.name)
        self.client  # noqa: B018 - connecting is the check

    def describe(self, plan: Plan) -> dict[str, Any]:
        return {
            **super().describe(plan),
            "image_tag": plan.image_tag,
            "docker_host": self.redactor.text(engine.docker_host(self.environ)),
        }

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:
        """Build the image from the run's archive; a rerun runs on its original's image, by
        id, while the engine still has it (else it is rebuilt, and the new id noted)."""
        require_dockerfile(record, self.name)
        tag, dockerfile = record.image.image_tag or "", record.image.dockerfile or "Dockerfile"
        record.image.engine_version = engine.engine_version(self.client)
        pinned = record.image.image_id if record.rerun_of else None
        if pinned and engine.image_exists(self.client, pinned):
            reporter.info(f"image {pinned[:19]} ({tag}), as recorded")
            return
        with reporter.activity(f"building image {tag}") as step:
            record.image.image_id = engine.build_image(
                self.client, run.code_tar, dockerfile, tag, run.build_log, self.redactor, on_step=step
            )
        reporter.info(f"image {record.image.image_id[:19]} ({tag})")
        if pinned and pinned != record.image.image_id:
            record.warnings.append(
                f"the recorded image {pinned} is gone; "
                f"rebuilt from the archived {dockerfile} as {record.image.image_id}"
            )

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        user = f"{record.submitter.uid}:{record.submitter.gid}"
        container, frames = self.launch(run, record, container_spec(record, str(run.output), user))
        return ContainerExecution(self.client, container, frames, sink)

    def launch(self, run: RunDir, record: RunRecord, spec: dict[str, Any]) -> tuple[Any, Any]:
        """Create and start the container named for the run and attempt; returns it and its
        attached output. After any failure, whatever the engine made under that name is
        removed (a create whose answer was lost, by a timeout or a dropped connection, has
        made it all the same); a transient engine error is tried again."""
        spec = {**spec, "name": container_name(record)}
        for attempt in range(1, LAUNCH_TRIES + 1):
            try:
                container = self.client.containers.create(**spec)
                record.container_id = container.id
                return container, self.start_container(run, container)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                self.remove_named(spec["name"])
                record.container_id = None
                if attempt == LAUNCH_TRIES or not _transient(exc):
                    raise LaunchError(f"cannot start the container: {self.redactor.text(str(exc))}") from None
                time.sleep(LAUNCH_BACKOFF_S * attempt)
            except BaseException:  # Ctrl-C included: never leave a created container behind
                self.remove_named(spec["name"])
                raise
        raise AssertionError("unreachable")

    def start_container(self, run: RunDir, container: Any) -> Any:
        """Copy code and config in, attach, start; returns the attached output stream."""
        with container_payload(run.code_tar, run.config.read_bytes()) as payload:
            container.put_archive("/", payload)
        # Attach before start, as `docker run` does: output of a program that ends at once is not lost.
        frames = self.client.api.attach(container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        container.start()
        return frames

    def remove_named(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass  # nothing was made, or the engine is away (then its next attempt finds it by name)

    def stop_orphan(self, record: RunRecord) -> None:
        if record.container_id:
            stop_container(self.client, record.container_id)


_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def _engine_lost(exc: BaseException) -> DockerUnavailableError:
    return DockerUnavailableError(
        f"lost the Docker engine while the run went on ({str(exc).splitlines()[0][:200]}); "
        "'docker ps' shows whether its container still runs"
    )


def require_dockerfile(record: RunRecord, backend: str) -> None:
    """A run made for the process backend and given to a worker of a container backend may
    have no Dockerfile in its commit (its creation checked that only for its own backend)."""
    if record.image.dockerfile_hash is None:
        raise ConfigError(
            f"commit {record.git.commit[:12]} of run {record.run_id} has no {record.image.dockerfile}; "
            f"the {backend} backend runs containers: run it with a worker of its own backend ({record.backend})"
        )


def container_name(record: RunRecord) -> str:
    """One name per run and attempt: a second create of the same attempt finds the first."""
    return f"expman-{record.run_id}-{max(record.attempt, 1)}"


def _transient(exc: BaseException) -> bool:
    """An engine error worth another try: a lost or slow answer, an engine-side failure, or
    the name still held by what a lost answer made."""
    if isinstance(exc, requests.exceptions.RequestException):
        return True
    if isinstance(exc, docker.errors.APIError):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 409)
    return False


def engine_time(text: str | None) -> datetime | None:
    """Docker's UTC times with nanoseconds ("2026-11-22T07:06:51.123456789Z") -> aware datetime."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", text or "")
    if match is None or match[1].startswith("0001-"):
        return None
    return datetime.fromisoformat(f"{match[1]}.{(match[2] or '0')[:6].ljust(6, '0')}+00:00")


def stop_container(client: docker.DockerClient, container_id: str) -> None:
    """Stop (SIGTERM, then SIGKILL after a grace) and remove; a missing container is fine."""
    try:
        container = client.containers.get(container_id)
        container.stop(timeout=ORPHAN_GRACE_S)
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


class ContainerExecution(Execution):
    """A container, its output pumped into the sink by a thread.

    The end of the output is an Event, not the thread's liveness: a Thread.join interrupted
    by an exception from a signal handler (a cancel) can leave ``is_alive()`` False while the
    thread still runs (CPython 3.11), and the engine's wait would then block until the
    program ends by itself."""

    def __init__(self, client: docker.DockerClient, container: Any, frames: Any, sink: LogSink) -> None:
        self._client, self._container, self._sink = client, container, sink
        self._pumped = threading.Event()
        self._stats = threading.Thread(target=self._watch_memory, daemon=True)
        self._peak_memory: int | None = None
        threading.Thread(target=self._pump_until_end, args=(frames,), daemon=True).start()
        self._stats.start()

    def wait(self, timeout_s: float | None) -> int | None:
        if not self._pumped.wait(timeout_s):
            return None
        try:
            result = self._client.api.wait(self._container.id, timeout=ENGINE_WAIT_S)
        except _ENGINE_ERRORS as exc:
            raise _engine_lost(exc) from None
        return int(result.get("StatusCode", -1))

    def _pump_until_end(self, frames: Any) -> None:
        """The output until the stream ends; a stream the engine breaks off ends it too (the
        wait that follows asks the engine how the container is)."""
        try:
            self._pump_output(frames)
        except (*_ENGINE_ERRORS, HTTPError, OSError):
            pass
        finally:
            self._pumped.set()

    def signal(self, signum: int) -> None:
        try:
            self._container.kill(signal=signum)
        except _ENGINE_ERRORS:
            pass  # already ended (or the engine is away: the wait says so)

    def end_state(self, exit_code: int) -> EndState:
        """As the engine saw it. Peak memory is the highest sample of the engine's stats so far
        (none for a program that ended within its first sample, about 0.2 s): waiting for the
        stats stream would add its 1-2 s period to every run."""
        try:
            state = self._client.api.inspect_container(self._container.id)["State"]
        except _ENGINE_ERRORS as exc:
            raise _engine_lost(exc) from None
        started, finished = engine_time(state.get("StartedAt")), engine_time(state.get("FinishedAt"))
        return EndState(
            exit_code=int(state.get("ExitCode", exit_code)),
            oom_killed=bool(state.get("OOMKilled")),
            peak_memory_bytes=self._peak_memory,
            duration_s=max(0.0, (finished - started).total_seconds()) if started and finished else None,
        )

    def cleanup(self) -> None:
        try:
            self._container.remove(force=True)
        except _ENGINE_ERRORS:
            pass  # gone already, or the engine is away (the next attempt removes it by name)

    def _pump_output(self, frames: Any) -> None:
        self.pump(frames, self._sink)

    @staticmethod
    def pump(frames: Any, sink: LogSink) -> None:
        """Copy demultiplexed container output into the sink until the stream ends."""
        for out, err in frames:
            if out:
                sink.write(STDOUT, out)
            if err:
                sink.write(STDERR, err)

    def _watch_memory(self) -> None:
        """Track peak memory from the engine's stats (cgroup v1 max_usage, else sampled usage)."""
        try:
            for stats in self._container.stats(stream=True, decode=True):
                memory = stats.get("memory_stats") or {}
                observed = memory.get("max_usage") or memory.get("usage")
                if observed:
                    self._peak_memory = max(self._peak_memory or 0, int(observed))
        except (docker.errors.DockerException, requests.exceptions.RequestException, HTTPError, OSError, ValueError):
            pass  # telemetry only: a lost stats stream leaves the peak unknown
