"""An SSH host with a Docker engine: one checked connection that carries SFTP (the run
directory's files) and the Docker API (``docker system dial-stdio`` on the host).

Nothing but sshd and Docker is needed on the host. Host keys are checked against
known_hosts and never added; values reach the host only through SFTP and the Docker API.
The one remote command is the fixed ``docker [-H URL] system dial-stdio``, its URL checked
by the config schema and quoted. A link that stops answering is closed (``_LinkWatchdog``),
so nothing waits on a peer that is gone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import secrets
import shlex
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paramiko

from ..errors import ConfigError, ExpmanError, HostKeyError, RemoteError
from ..experiment.config import HostSettings, parse_duration
from .docker_sdk import docker
from .engine import connect as connect_docker

CONNECT_TIMEOUT_S = 15.0
ALIVE_TIMEOUT_S = 45.0
ALIVE_TIMEOUT_VARIABLE = "EXPMAN_SSH_ALIVE_TIMEOUT"
# OpenSSH answers this request even though it refuses it; its ServerAliveInterval relies on that.
_KEEPALIVE_REQUEST = "keepalive@openssh.com"
_CHUNK = 65536

logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, settings: HostSettings, known_hosts: Path) -> None:
        self.settings, self.known_hosts = settings, known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        s = self.settings
        port = f"-p {s.port} " if s.port != 22 else ""
        raise HostKeyError(
            f"host {s.name} ({s.hostname}:{s.port}) is not in {self.known_hosts} (its {key.get_name()} key is "
            f"{key.fingerprint}); check that fingerprint, then add it: ssh-keyscan {port}{s.hostname} >> "
            f"{self.known_hosts}"
        )


def alive_timeout_s(environ: Mapping[str, str]) -> float:
    """How long a link may leave a keepalive unanswered before it is declared lost:
    EXPMAN_SSH_ALIVE_TIMEOUT (a duration: "45s", "2m"), else 45 s."""
    value = environ.get(ALIVE_TIMEOUT_VARIABLE)
    if value is None:
        return ALIVE_TIMEOUT_S
    seconds = parse_duration(value, ALIVE_TIMEOUT_VARIABLE)
    if seconds <= 0:
        raise ConfigError(f'{ALIVE_TIMEOUT_VARIABLE}: {value!r} is no time to wait; write e.g. "45s", or unset it')
    return seconds


class _LinkWatchdog:
    """Closes the transport of a link that stops answering, so that every channel ends as
    for a closed link. paramiko's own keepalive wants no reply, so it never notices a peer
    gone without closing (a dropped route, a suspended host) and reads wait forever. This
    asks for a reply every third of the timeout and gives it the rest of the timeout."""

    def __init__(self, transport: paramiko.Transport, timeout_s: float) -> None:
        self._transport = transport
        self._interval_s = timeout_s / 3
        self._reply_s = timeout_s - self._interval_s
        self._stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s) and self._transport.is_active():
            self._ask()

    def _ask(self) -> None:
        """``global_request(wait=True)`` has no timeout, but it returns once the transport is
        inactive (its wait polls ``active``), so a timer that closes the transport bounds it."""
        deadline = threading.Timer(self._reply_s, self._transport.close)
        deadline.daemon = True
        deadline.start()
        try:
            self._transport.global_request(_KEEPALIVE_REQUEST, wait=True)
        except (paramiko.SSHException, OSError, EOFError):
            pass  # the transport ended meanwhile; _watch sees that
        finally:
            deadline.cancel()


class RemoteHost:
    """A connected host; close() (or a with block) ends the connection and the Docker tunnel."""

    def __init__(self, settings: HostSettings, client: paramiko.SSHClient, watchdog: _LinkWatchdog) -> None:
        self.settings = settings
        self._client = client
        self._watchdog = watchdog
        self.sftp = client.open_sftp()
        self.home = self.sftp.normalize(".")
        self._docker: docker.DockerClient | None = None
        self._tunnel: _DockerTunnel | None = None

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def path(self, configured: str) -> str:
        """An absolute remote path; a leading ~/ is the login user's home."""
        if configured == "~" or configured.startswith("~/"):
            return posixpath.join(self.home, configured[2:])
        return configured

    def docker(self, environ: Mapping[str, str]) -> docker.DockerClient:
        if self._docker is None:
            self._tunnel = _DockerTunnel(self._client, self.settings.docker)
            self._docker = connect_docker(environ, base_url=self._tunnel.url, shown=f"{self.settings.name} over SSH")
            # One channel per request: a kept-alive connection whose dial-stdio has ended would
            # fail the next request with a reset.
            self._docker.api.headers["Connection"] = "close"
        return self._docker

    def makedirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            current = "/" + "/".join(parts[:depth])
            try:
                self.sftp.stat(current)
            except FileNotFoundError:
                self.sftp.mkdir(current)

    def owner(self, path: str) -> tuple[int, int]:
        attributes = self.sftp.stat(path)
        return int(attributes.st_uid or 0), int(attributes.st_gid or 0)

    def put(self, local: Path, remote: str) -> None:
        """Upload to a new temporary, then rename into place."""
        with open(local, "rb") as reader:
            self._put_from(reader.read, remote)

    def put_bytes(self, data: bytes, remote: str) -> None:
        self._put_from(io.BytesIO(data).read, remote)

    def _put_from(self, read: Callable[[int], bytes], remote: str) -> None:
        """A fresh name, created exclusively (O_EXCL fails on any file or link already there:
        a program that can write the directory may have planted one), renamed over ``remote``
        (a rename replaces a link, never follows it)."""
        partial = posixpath.join(posixpath.dirname(remote), f".expman-{secrets.token_hex(8)}.partial")
        try:
            with self.sftp.open(partial, "wxb") as writer:
                writer.set_pipelined(True)
                while chunk := read(_CHUNK):
                    writer.write(chunk)
            self.sftp.posix_rename(partial, remote)
        except BaseException:
            with contextlib.suppress(OSError):
                self.sftp.remove(partial)
            raise

    def lstat_below(self, top: str, relative: str) -> paramiko.SFTPAttributes | None:
        """``top``/``relative``'s own attributes (a link's, not its target's), each component
        below ``top`` looked at with lstat; None when one is missing, or one on the way is a
        link or not a directory: what a program controls is never followed."""
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            try:
                attributes = self.sftp.lstat(posixpath.join(top, *parts[:depth]))
            except FileNotFoundError:
                return None
            if depth < len(parts) and not stat.S_ISDIR(attributes.st_mode or 0):
                return None
        return attributes

    def makedirs_below(self, top: str, relative: str) -> None:
        """Make ``top``/``relative``'s missing directories; a link or a non-directory on the
        way is refused (a RemoteError), never written through."""
        parts = [p for p in relative.split("/") if p]
        for depth in range(1, len(parts) + 1):
            current = posixpath.join(top, *parts[:depth])
            try:
                attributes = self.sftp.lstat(current)
            except FileNotFoundError:
                self.sftp.mkdir(current)
                continue
            if not stat.S_ISDIR(attributes.st_mode or 0):
                shown = "/".join(parts[:depth])
                raise RemoteError(f"{shown} is a symbolic link or not a directory; expman does not write through it")

    def remove(self, path: str) -> None:
        """Remove a file or a whole directory; nothing there is no error."""
        try:
            attributes = self.sftp.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(attributes.st_mode or 0):
            for entry in self.sftp.listdir_attr(path):
                self.remove(posixpath.join(path, entry.filename))
            self.sftp.rmdir(path)
        else:
            self.sftp.remove(path)

    def walk(self, top: str) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        """(path relative to ``top``, attributes) of every regular file below ``top``."""
        pending = [""]
        while pending:
            relative = pending.pop()
            try:
                entries = self.sftp.listdir_attr(posixpath.join(top, relative) if relative else top)
            except FileNotFoundError:
                continue
            for entry in entries:
                path = posixpath.join(relative, entry.filename) if relative else entry.filename
                if stat.S_ISDIR(entry.st_mode or 0):
                    pending.append(path)
                elif stat.S_ISREG(entry.st_mode or 0):
                    yield path, entry

    def get(self, remote: str, local: Path, mtime: int | None, listed: paramiko.SFTPAttributes | None = None) -> bool:
        """Download next to ``local`` and rename into place; keep the remote mtime. With
        ``listed`` (lstat attributes), False and nothing written when the file opened is not
        that regular file: SFTP cannot open without following a link, so one swapped in
        meanwhile shows in fstat."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".partial")
        try:
            with self.sftp.open(remote, "rb") as reader, os.fdopen(fd, "wb") as writer:
                if listed is not None and not _same_file(reader.stat(), listed):
                    Path(partial).unlink()
                    return False
                reader.prefetch()
                shutil.copyfileobj(reader, writer, _CHUNK)
            if mtime is not None:
                os.utime(partial, (mtime, mtime))
            os.replace(partial, local)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return True

    def close(self) -> None:
        if self._docker is not None:
            self._docker.close()
        if self._tunnel is not None:
            self._tunnel.close()
        self.sftp.close()
        self._client.close()
        self._watchdog.stop()


def _same_file(opened: paramiko.SFTPAttributes, listed: paramiko.SFTPAttributes) -> bool:
    keys = ("st_size", "st_mtime", "st_uid", "st_gid")
    return stat.S_ISREG(opened.st_mode or 0) and all(getattr(opened, k) == getattr(listed, k) for k in keys)


def connect(settings: HostSettings, alive_timeout_s: float = ALIVE_TIMEOUT_S) -> RemoteHost:
    """Log in with the host key checked; every failure is one clear line. A link that leaves
    a keepalive unanswered for ``alive_timeout_s`` is closed."""
    client = _checking_client(settings)
    _log_in(client, settings)
    transport = client.get_transport()
    assert transport is not None
    watchdog = _LinkWatchdog(transport, alive_timeout_s)
    try:
        return RemoteHost(settings, client, watchdog)
    except (paramiko.SSHException, OSError) as exc:
        client.close()
        watchdog.stop()
        raise RemoteError(
            f"{_where(settings)} accepted the login but SFTP failed ({exc}); enable its sftp subsystem"
        ) from None


def _where(settings: HostSettings) -> str:
    return f"{settings.name} ({settings.target})"


def _checking_client(settings: HostSettings) -> paramiko.SSHClient:
    """A client that checks host keys against known_hosts and never adds one."""
    known_hosts = Path(settings.known_hosts).expanduser()
    if not known_hosts.is_file():
        raise HostKeyError(
            f"no known_hosts file at {known_hosts}, so the key of {_where(settings)} cannot be checked; "
            f'add the host with ssh-keyscan or set "known_hosts" for it in expman.hosts'
        )
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
    except OSError as exc:
        raise HostKeyError(f"cannot read {known_hosts}: {exc}; fix the file") from None
    client.set_missing_host_key_policy(_RefuseUnknownHost(settings, known_hosts))
    return client


def _identity_file(settings: HostSettings) -> str | None:
    """The configured private key, which must exist; None: the user's keys and agent."""
    if not settings.identity_file:
        return None
    identity = str(Path(settings.identity_file).expanduser())
    if not Path(identity).is_file():
        raise RemoteError(f'identity_file {identity} of host {settings.name} does not exist; fix "identity_file"')
    return identity


def _log_in(client: paramiko.SSHClient, settings: HostSettings) -> None:
    identity = _identity_file(settings)
    try:
        client.connect(
            settings.hostname,
            port=settings.port,
            username=settings.user,
            key_filename=identity,
            look_for_keys=identity is None,
            allow_agent=identity is None,
            timeout=CONNECT_TIMEOUT_S,
            banner_timeout=CONNECT_TIMEOUT_S,
            auth_timeout=CONNECT_TIMEOUT_S,
        )
    except (HostKeyError, paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise _login_error(exc, settings, identity) from None


def _login_error(exc: Exception, settings: HostSettings, identity: str | None) -> ExpmanError:
    """What a failed login means, in one line."""
    where, known_hosts = _where(settings), Path(settings.known_hosts).expanduser()
    if isinstance(exc, HostKeyError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"the host key of {where} does not match {known_hosts} (got {exc.key.get_name()} "
            f"{exc.key.fingerprint}); refusing to connect. If the host was reinstalled, check the new key "
            f"and replace its line: ssh-keygen -R '[{settings.hostname}]:{settings.port}' -f {known_hosts}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = f"the key {identity}" if identity else "your keys and agent"
        return RemoteError(
            f"{where} refused the login as {settings.user or 'the current user'} with {key}; "
            f'check the user in "ssh" and that the public key is in the host\'s authorized_keys'
        )
    reason = str(exc) or type(exc).__name__
    return RemoteError(
        f"cannot reach {where}: {reason}; check that the host is up and sshd listens on port {settings.port}"
    )


class _DockerTunnel:
    """A private Unix socket here; each connection to it is a fresh SSH channel running
    ``docker system dial-stdio`` on the host, so docker-py speaks to the remote engine."""

    def __init__(self, client: paramiko.SSHClient, engine_url: str | None) -> None:
        self._client = client
        self._command = "docker " + (f"-H {shlex.quote(engine_url)} " if engine_url else "") + "system dial-stdio"
        self._dir = tempfile.mkdtemp(prefix="expman-ssh-")
        self._path = os.path.join(self._dir, "docker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self._path)
        self._server.listen(16)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self._path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                local, _ = self._server.accept()
            except OSError:
                return
            try:
                transport = self._client.get_transport()
                if transport is None or not transport.is_active():
                    raise paramiko.SSHException("connection closed")
                channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
                channel.exec_command(self._command)
            except (paramiko.SSHException, OSError, EOFError):
                local.close()
                continue
            threading.Thread(target=_bridge, args=(local, channel), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        try:
            os.unlink(self._path)
            os.rmdir(self._dir)
        except OSError:
            pass


def _bridge(local: socket.socket, channel: paramiko.Channel) -> None:
    """Both directions until both have ended, then close both ends.

    The client's end of the socket closes the whole channel rather than half-closing it:
    paramiko sends a half-close outside its channel lock, so one racing the host's close of
    a finished request could reach sshd after the channel was freed, and sshd then drops
    the whole connection ("ieof packet referred to nonexistent channel").
    """
    upstream = threading.Thread(target=_pump, args=(local, channel, channel.close), daemon=True)
    upstream.start()
    _pump(channel, local, lambda: local.shutdown(socket.SHUT_WR))
    upstream.join()
    channel.close()
    local.close()


def _pump(source: Any, target: Any, end: Callable[[], None]) -> None:
    """Copy bytes one way until EOF; then ``end`` the other side."""
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            target.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    try:
        end()
    except (OSError, EOFError):
        pass
