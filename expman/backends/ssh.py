"""Runs in a container on the Docker engine of an SSH host (expman.hosts).

The image is built by the host's engine (its layer cache), the run directory is mirrored
under the host's runs_root (code.tar, config.json, run.json, logs, output), and the
container runs there under the same contract as locally, as the remote login user. The
container is left to the host's engine: a dropped connection or a sleeping laptop does not
stop it. ``reconcile`` reconnects for the live status, ``sync`` copies the remote run
directory back (only files that changed), and the container is removed once its run is
final and synced.
"""

from __future__ import annotations

import dataclasses
import posixpath
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from ..errors import ConfigError, ConnectionLostError, DockerUnavailableError, ExpmanError, RemoteError
from ..experiment.config import HostSettings, config_from
from ..results.flatten import read_config
from ..rundir import lifecycle
from ..rundir.checkpoint import normalized
from ..rundir.files import write_bytes_atomic
from ..rundir.layout import RunDir
from ..rundir.lifecycle import Recorder
from ..rundir.logs import STDERR, STDOUT, LogSink
from ..rundir.record import EndState, RunRecord, RunStatus
from .base import Execution
from .docker_sdk import docker
from .flow import Stopping
from .local import (
    ContainerExecution,
    LocalBackend,
    container_spec,
    engine_time,
    require_dockerfile,
    stop_container,
)
from .remote import RemoteHost, alive_timeout_s, connect

if TYPE_CHECKING:
    from ..experiment.plan import Plan
    from ..progress import Reporter

_LINK_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError, EOFError)


@dataclasses.dataclass
class SyncResult:
    files: int = 0
    bytes: int = 0
    skipped: int = 0


def host_of(record: RunRecord) -> HostSettings:
    """The host a run was submitted to, as recorded (no repository needed)."""
    remote = record.remote or {}
    fields = {f.name for f in dataclasses.fields(HostSettings)}
    return HostSettings(**{k: v for k, v in remote.items() if k in fields})


def host_to_run_on(run: RunDir, record: RunRecord) -> HostSettings:
    """The host a run is to go to, as its own config.json defines it: the one chosen when it
    was created; for a run created for another backend (a worker's --backend ssh),
    expman.host or the only host defined."""
    settings = config_from(read_config(run.config), f"{run.config}").settings
    if record.ssh_host is None and settings.host is None and len(settings.hosts) != 1:
        defined = ", ".join(settings.hosts) or "none"
        raise ConfigError(
            f"run {record.run_id} was scheduled for the {record.backend} backend and its config.json names no one "
            f"ssh host (expman.hosts: {defined}; no expman.host); schedule it with --backend ssh --host NAME"
        )
    return settings.host_settings(record.ssh_host)


class SSHBackend(LocalBackend):
    name = "ssh"

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(environ)
        self._remote: RemoteHost | None = None
        self._settings: HostSettings | None = None

    # --- connection ---------------------------------------------------------------

    def remote_for(self, settings: HostSettings) -> RemoteHost:
        """A live connection to ``settings``' host, reusing the current one when it is that host."""
        if self._remote is None or not self._remote.alive or _link(self._remote.settings) != _link(settings):
            if self._remote is not None:
                self._remote.close()
            self._remote, self._client = connect(settings, alive_timeout_s(self.environ)), None
        return self._remote

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            assert self._remote is not None, "connect to a host first"
            self._client = self._remote.docker(self.environ)
        return self._client

    @property
    def connected(self) -> bool:
        return self._remote is not None and self._remote.alive

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote, self._client = None, None

    # --- submitting ---------------------------------------------------------------

    def check(self, plan: Plan) -> None:
        if plan.dockerfile is None:
            raise ConfigError(
                f"commit {plan.commit[:12]} has no {plan.config.settings.dockerfile}; the ssh backend runs containers"
            )
        assert plan.host is not None
        self._settings = plan.host
        self.remote_for(plan.host)
        self.client  # noqa: B018 - reaching the remote engine is part of the check

    def describe(self, plan: Plan) -> dict[str, Any]:
        assert plan.host is not None
        return {
            "command": list(plan.config.settings.command),
            "image_tag": plan.image_tag,
            "host": plan.host.name,
            "ssh": plan.host.target,
            "remote_runs_root": plan.host.runs_root,
        }

    def prepare(self, run: RunDir, record: RunRecord, reporter: Reporter) -> None:
        """Mirror the run on its host and build its image there. A worker has no checked plan:
        the host comes from the run itself, and reaching it and its engine is checked here."""
        require_dockerfile(record, self.name)
        self._settings = host_to_run_on(run, record)
        remote = self.remote_for(self._settings)
        self.client  # noqa: B018 - an unreachable engine fails before anything is copied
        runs_root = remote.path(self._settings.runs_root)
        path = posixpath.join(runs_root, run.run_id)
        with reporter.activity(f"copying the run to {self._settings.name}:{path}"):
            try:
                for sub in ("logs", "output"):
                    remote.makedirs(posixpath.join(path, sub))
                uid, gid = remote.owner(path)
                remote.put(run.code_tar, posixpath.join(path, "code.tar"))
                remote.put(run.config, posixpath.join(path, "config.json"))
            except OSError as exc:
                raise RemoteError(
                    f"cannot write {path} on {self._settings.name}: {exc}; check runs_root there"
                ) from None
        record.remote = {**dataclasses.asdict(self._settings), "runs_root": runs_root, "path": path}
        record.remote.update(uid=uid, gid=gid, synced_at=None)
        super().prepare(run, record, reporter)
        remote.put(run.build_log, posixpath.join(path, "logs", "build.log"))
        self.push_record(run, record)

    def start(self, run: RunDir, record: RunRecord, sink: LogSink) -> Execution:
        remote = record.remote or {}
        user = f"{remote['uid']}:{remote['gid']}"
        spec = container_spec(record, posixpath.join(remote["path"], "output"), user)
        spec["labels"]["expman.host"] = remote["name"]
        container, frames = self.launch(run, record, spec)
        return RemoteExecution(self, run, record, container, frames, sink)

    def detach(self, run: RunDir, record: RunRecord) -> RunRecord:
        """Start the container and return: the host's engine keeps it running."""
        sink = LogSink(run, self.redactor, echo=False)
        recorder = Recorder(run)
        try:
            execution = self.start(run, record, sink)
        except ExpmanError as exc:
            recorder.end(record, RunStatus.FAILED, datetime.now(UTC), reason=f"start failed: {exc.message}")
            raise
        finally:
            sink.close()
        assert isinstance(execution, RemoteExecution)
        execution.detach()
        recorder.running(record, datetime.now(UTC), self.execution_host)
        self.push_record(run, record)
        return record

    @property
    def execution_host(self) -> str:
        assert self._settings is not None
        return self._settings.name

    def push_record(self, run: RunDir, record: RunRecord) -> None:
        """Mirror run.json into the remote run directory."""
        assert self._remote is not None and record.remote is not None
        self._remote.put_bytes(lifecycle.mirror_bytes(record), posixpath.join(record.remote["path"], run.record.name))

    # --- looking at and controlling runs ------------------------------------------

    @contextmanager
    def session(self, record: RunRecord) -> Iterator[RemoteHost]:
        """Connected to the run's host (reused across runs of the same host)."""
        self._settings = host_of(record)
        yield self.remote_for(self._settings)

    def reconcile(self, runs: list[tuple[RunDir, RunRecord]]) -> list[str]:
        warnings = []
        for run, record in runs:
            if record.remote is None or record.container_id is None:
                continue
            try:
                with self.session(record):
                    self.update_status(run, record)
            except ExpmanError as exc:
                warnings.append(f"{record.run_id}: status as last recorded; {exc.message}")
            except _LINK_ERRORS as exc:
                warnings.append(f"{record.run_id}: status as last recorded; lost the link to {record.host}: {exc}")
        return warnings

    def update_status(self, run: RunDir, record: RunRecord) -> dict[str, Any] | None:
        """Read the container's state and record any change; returns the state (None: gone)."""
        assert record.container_id is not None
        try:
            state = self.client.api.inspect_container(record.container_id)["State"]
        except docker.errors.NotFound:
            if not record.final:
                reason = f"its container is gone from {record.host}"
                Recorder(run).end(record, RunStatus.LOST, datetime.now(UTC), reason=reason)
            return None
        if record.final:
            return state
        if state.get("Running"):
            if record.status == RunStatus.QUEUED:
                started = engine_time(state.get("StartedAt")) or datetime.now(UTC)
                Recorder(run).running(record, started, host_of(record).name)
            self._enforce_timeout(run, record)
            return state
        if state.get("Status") in ("exited", "dead"):
            self._record_end(run, record, state)
        return state

    def _enforce_timeout(self, run: RunDir, record: RunRecord) -> None:
        """A detached run past its timeout is asked to stop (its stop signal), and killed at a
        later look once the grace has passed; it ends recorded as a timeout either way."""
        timeout_s = record.resources.get("timeout_s")
        if not timeout_s or not record.started_at or record.container_id is None or record.remote is None:
            return
        now = datetime.now(UTC)
        if (now - datetime.fromisoformat(record.started_at)).total_seconds() <= timeout_s:
            return
        stopping = Stopping.of(record)
        asked = record.remote.get("timeout_stop_at")
        if asked is None:
            self.client.api.kill(record.container_id, signal=stopping.signal)
            record.remote["timeout_stop_at"] = now.isoformat()
            lifecycle.save(run, record)
        elif (now - datetime.fromisoformat(asked)).total_seconds() > stopping.grace_s:
            self.client.api.kill(record.container_id)

    def _record_end(self, run: RunDir, record: RunRecord, state: dict[str, Any]) -> None:
        end = EndState(exit_code=int(state.get("ExitCode", -1)), oom_killed=bool(state.get("OOMKilled")))
        status = RunStatus.SUCCEEDED if end.exit_code == 0 else RunStatus.FAILED
        reason = None if end.exit_code == 0 else "out of memory" if end.oom_killed else f"exit code {end.exit_code}"
        if (record.remote or {}).get("timeout_stop_at"):
            status, reason = RunStatus.FAILED, "timeout"
        ended = engine_time(state.get("FinishedAt")) or datetime.now(UTC)
        Recorder(run).end(record, status, ended, reason=reason, end=end)

    def sync(self, run: RunDir, record: RunRecord) -> SyncResult:
        """Bring the run's status, logs and outputs here; once final, remove its container."""
        with self.session(record) as remote:
            state = self.update_status(run, record) if record.container_id else None
            result = self._copy_outputs(remote, run, record)
            if state is not None:
                self._copy_logs(run, record)
            if record.final:
                for name in ("stdout.log", "stderr.log"):
                    if (run.logs / name).exists():
                        remote.put(run.logs / name, posixpath.join(record.remote["path"], "logs", name))  # type: ignore[index]
                if state is not None:
                    stop_container(self.client, record.container_id or "")
                record.remote["synced_at"] = datetime.now(UTC).isoformat()  # type: ignore[index]
                lifecycle.save(run, record)
            self.push_record(run, record)
        return result

    def _copy_outputs(self, remote: RemoteHost, run: RunDir, record: RunRecord) -> SyncResult:
        result = SyncResult()
        top = posixpath.join(record.remote["path"], "output")  # type: ignore[index]
        for relative, attributes in remote.walk(top):
            local = run.output / relative
            size, mtime = attributes.st_size, attributes.st_mtime
            try:
                current = local.stat()
                if current.st_size == size and int(current.st_mtime) == mtime:
                    result.skipped += 1
                    continue
            except FileNotFoundError:
                pass
            remote.get(posixpath.join(top, relative), local, mtime)
            result.files += 1
            result.bytes += size or 0
        return result

    def pull_checkpoint(self, run: RunDir, record: RunRecord, paths: Sequence[str]) -> None:
        """Make the checkpoint paths of the local output what the host's output holds (files
        whose size or mtime differ are copied), so that a snapshot here sees the program's.
        The program controls the host's output: links there are left out, never followed."""
        top = posixpath.join((record.remote or {})["path"], "output")
        try:
            with self.session(record) as remote:
                for path in normalized(paths):
                    there = dict(_walk_path(remote, top, path))
                    _remove_others(run.output, path, set(there))
                    for relative in there:
                        _pull_file(remote, top, relative, run.output / relative)
        except (*_LINK_ERRORS, ExpmanError) as exc:
            raise RemoteError(f"cannot read the checkpoint paths on {record.host}: {exc}") from None

    def push_checkpoint(self, run: RunDir, record: RunRecord, paths: Sequence[str]) -> None:
        """Replace the checkpoint paths of the host's output by those restored here, before the
        program starts there (a retry on another host, say). A link on the way to a path there
        is refused, never written through."""
        top = posixpath.join((record.remote or {})["path"], "output")
        try:
            with self.session(record) as remote:
                for path in normalized(paths):
                    remote.makedirs_below(top, posixpath.dirname(path))
                    remote.remove(posixpath.join(top, path))
                    for local in _files_under(run.output / path):
                        relative = local.relative_to(run.output).as_posix()
                        remote.makedirs_below(top, posixpath.dirname(relative))
                        remote.put(local, posixpath.join(top, relative))
        except (*_LINK_ERRORS, ExpmanError) as exc:
            raise RemoteError(f"cannot restore the checkpoint paths on {record.host}: {exc}") from None

    def _copy_logs(self, run: RunDir, record: RunRecord) -> None:
        """The container's whole stdout and stderr, redacted, replace the local logs."""
        for name, path in (("stdout", run.stdout_log), ("stderr", run.stderr_log)):
            data = self.client.api.logs(record.container_id, stdout=name == "stdout", stderr=name == "stderr")
            write_bytes_atomic(path, self.redactor.text(data.decode("utf-8", errors="replace")).encode())

    def follow_logs(self, run: RunDir, record: RunRecord, echo: bool = True) -> bool:
        """Stream a running remote run's output here until it ends, then sync it; False if it
        was not running (then only synced)."""
        streamed = False
        with self.session(record):
            state = self.update_status(run, record)
            if state is not None and state.get("Running"):
                for path in (run.stdout_log, run.stderr_log):  # the replay from the start rewrites them
                    path.write_bytes(b"")
                sink = LogSink(run, self.redactor, echo)
                try:
                    self._stream_logs(record.container_id, sink)
                except _LINK_ERRORS:
                    raise ConnectionLostError(
                        f"lost the connection to {record.host}; run {record.run_id} goes on there; "
                        f"'expman logs {record.run_id} --follow' reconnects"
                    ) from None
                finally:
                    sink.close()
                streamed = True
            self.sync(run, record)
        return streamed

    def _stream_logs(self, container_id: str | None, sink: LogSink) -> None:
        """Everything the container has written and will write, until it ends; stdout and
        stderr each in their own stream so they stay apart."""
        failures: list[BaseException] = []

        def stream(name: str) -> None:
            try:
                chunks = self.client.api.logs(
                    container_id, stdout=name == STDOUT, stderr=name == STDERR, stream=True, follow=True
                )
                for chunk in chunks:
                    sink.write(name, chunk)
            except _LINK_ERRORS as exc:
                failures.append(exc)

        threads = [threading.Thread(target=stream, args=(name,), daemon=True) for name in (STDOUT, STDERR)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def cancel(self, run: RunDir, record: RunRecord) -> RunRecord:
        record = super().cancel(run, record)
        self.sync(run, record)
        return record

    def reaches(self, record: RunRecord) -> bool:
        """A container an earlier attempt left on an SSH host can be stopped from any machine."""
        return record.remote is not None and record.container_id is not None

    def stop_orphan(self, record: RunRecord) -> None:
        if record.container_id:
            with self.session(record):
                try:
                    self.client.api.stop(record.container_id, timeout=10)
                    state = self.client.api.inspect_container(record.container_id)["State"]
                    record.exit_code = int(state.get("ExitCode", -1))
                except docker.errors.NotFound:
                    pass


class RemoteExecution(ContainerExecution):
    """A container on an SSH host, followed over the connection. If the connection drops,
    ``wait`` raises ConnectionLostError and the container is left running."""

    def __init__(
        self, backend: SSHBackend, run: RunDir, record: RunRecord, container: Any, frames: Any, sink: LogSink
    ) -> None:
        self._backend, self._run, self._record = backend, run, record
        self._lost = False
        super().__init__(backend.client, container, frames, sink)

    def wait(self, timeout_s: float | None) -> int | None:
        try:
            exit_code = super().wait(timeout_s)
        except (*_LINK_ERRORS, DockerUnavailableError):
            self._lost = True
        if self._lost or not self._backend.connected:
            self._lost = True
            raise ConnectionLostError(
                f"lost the connection to {self._record.host}; run {self._record.run_id} goes on there; "
                f"'expman show {self._record.run_id}' reconnects and 'expman sync' fetches its outputs"
            )
        return exit_code

    def detach(self) -> None:
        """Stop following: the container goes on, and cleanup leaves it alone."""
        self._lost = True

    def cleanup(self) -> None:
        """Once the run is final: copy its outputs here and remove the container."""
        if self._lost or not self._record.final:
            return
        try:
            self._backend.sync(self._run, self._record)
        except (ExpmanError, *_LINK_ERRORS):
            self._record.warnings.append("could not sync the outputs at the end; run 'expman sync'")
            lifecycle.save(self._run, self._record)

    def _pump_output(self, frames: Any) -> None:
        try:
            self.pump(frames, self._sink)
        except _LINK_ERRORS:
            self._lost = True


def _walk_path(remote: RemoteHost, top: str, path: str) -> Iterator[tuple[str, Any]]:
    """(path relative to the output, attributes) of the regular files at or under ``path``;
    links (on the way, at or under it) are left out."""
    attributes = remote.lstat_below(top, path)
    if attributes is None:
        return
    if stat.S_ISREG(attributes.st_mode or 0):
        yield path, attributes
    elif stat.S_ISDIR(attributes.st_mode or 0):
        for relative, found in remote.walk(posixpath.join(top, path)):
            yield posixpath.join(path, relative), found


def _pull_file(remote: RemoteHost, top: str, relative: str, local: Path) -> None:
    """Copy one file of the host's output here unless unchanged; looked at again just before
    it is opened (every component with lstat), so one swapped for a link is left out."""
    attributes = remote.lstat_below(top, relative)
    if attributes is not None and stat.S_ISREG(attributes.st_mode or 0) and not _same_file(local, attributes):
        remote.get(posixpath.join(top, relative), local, attributes.st_mtime, listed=attributes)


def _same_file(local: Path, attributes: Any) -> bool:
    try:
        current = local.stat()
    except FileNotFoundError:
        return False
    return current.st_size == attributes.st_size and int(current.st_mtime) == attributes.st_mtime


def _files_under(top: Path) -> list[Path]:
    if top.is_file():
        return [top]
    return [p for p in top.rglob("*") if p.is_file() and not p.is_symlink()]


def _remove_others(output: Path, path: str, keep: set[str]) -> None:
    """Local files under ``path`` the host no longer has (the program removed them)."""
    for local in _files_under(output / path):
        if local.relative_to(output).as_posix() not in keep:
            local.unlink()


def _link(settings: HostSettings) -> tuple[Any, ...]:
    """What identifies a connection (runs_root does not)."""
    s = settings
    return (s.hostname, s.port, s.user, s.identity_file, s.known_hosts, s.docker)
