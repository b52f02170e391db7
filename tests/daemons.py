"""Real sshd, PostgreSQL and a one-node Slurm cluster on loopback, for the tests and benchmarks.

Each starter returns a handle with what clients need and a ``stop()``; a missing package
raises ``Missing`` (the fixtures turn that into a failure under CI=true, a skip otherwise).
Everything lives under a directory the caller owns; nothing under /etc is touched.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REMOTE_USER = "expman-remote"


class Missing(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check, what: str, log: Path, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not come up; log {log}:\n{tail}")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended while we looked
        ppid = int(text.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def freeze_descendants(pid: int) -> list[int]:
    """SIGSTOP every descendant of ``pid``; returns their pids. Scanned again until nothing
    new appears, since a process may fork before its stop lands (a stopped one cannot)."""
    frozen: list[int] = []
    while new := [p for p in descendants(pid) if p not in frozen]:
        for child in new:
            _send(child, signal.SIGSTOP)
        frozen += new
        _await_stop(new)
    return frozen


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        _send(pid, signal.SIGKILL)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _await_stop(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_state(pid) not in "tTZX" for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} did not stop within {timeout_s} s")
        time.sleep(0.01)


def _state(pid: int) -> str:
    """The one-letter state from /proc (X: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None and not Path(p).exists()]
    if missing:
        raise Missing(
            f"missing {', '.join(missing)}; run scripts/setup (installs openssh-server, postgresql, slurm-wlm, munge)"
        )


# --------------------------------------------------------------------------- postgresql

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


@dataclass
class Postgres:
    port: int
    datadir: Path
    proc: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        argv = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", database]
        result = subprocess.run([*argv, "-Atc", sql], capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_postgres(workdir: Path, durable: bool = False) -> Postgres:
    """initdb (trust on loopback) and a postgres server as the postgres user, on a free port.
    Tests run without fsync; ``durable`` keeps the server's defaults (the benchmarks)."""
    _need(str(PG_BIN / "initdb"), str(PG_BIN / "postgres"))
    datadir, sockets = workdir / "data", workdir / "sockets"
    sockets.mkdir(parents=True, exist_ok=True)
    shutil.chown(workdir, PG_USER, PG_USER)
    shutil.chown(sockets, PG_USER, PG_USER)
    as_postgres = ["runuser", "-u", PG_USER, "--"]
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(datadir), "-U", PG_USER, "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = workdir / "postgres.log"
    out = open(log, "ab")
    options = ["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-k", str(sockets), "-c", "max_connections=200"]
    options += [] if durable else ["-c", "fsync=off"]
    proc = subprocess.Popen(
        [*as_postgres, str(PG_BIN / "postgres"), "-D", str(datadir), *options], stdout=out, stderr=out
    )
    server = Postgres(port=port, datadir=datadir, proc=proc)

    def accepting() -> bool:
        argv = [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        return subprocess.run(argv, capture_output=True).returncode == 0

    _wait_for(accepting, "postgres", log)
    return server


# --------------------------------------------------------------------------- sshd


@dataclass
class Sshd:
    port: int
    user: str
    home: Path
    identity_file: Path
    known_hosts: Path
    host_public_key: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def freeze_sessions(self) -> list[int]:
        """Stop (SIGSTOP) the processes serving this listener's connections: a silent link,
        the peer gone without closing. Returns their pids for ``kill_pids``."""
        return freeze_descendants(self.proc.pid)

    def kill_sessions(self) -> None:
        """Kill the processes serving this listener's connections (not the listener, nor
        any other sshd's sessions of the same user): a dropped link."""
        kill_pids(self.freeze_sessions())

    def stop(self) -> None:
        self.kill_sessions()  # while they are still the listener's children
        self.proc.terminate()
        self.proc.wait(10)


def ensure_remote_user() -> pwd.struct_passwd:
    """A non-root user in the docker group: the remote side of the SSH tests."""
    try:
        return pwd.getpwnam(REMOTE_USER)
    except KeyError:
        # "*": no password, yet not locked (sshd refuses locked accounts even for keys)
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "-p", "*", REMOTE_USER], check=True)
    groups = [g.gr_name for g in grp.getgrall()]
    if "docker" in groups:
        subprocess.run(["usermod", "-aG", "docker", REMOTE_USER], check=True)
    return pwd.getpwnam(REMOTE_USER)


def start_sshd(workdir: Path) -> Sshd:
    _need("/usr/sbin/sshd", "ssh-keygen")
    workdir.mkdir(parents=True, exist_ok=True)
    user = ensure_remote_user()
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "id_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(authorized, 0o644)
    os.chmod(workdir, 0o755)
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {workdir}/sshd.pid\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin no\nSubsystem sftp internal-sftp\n"
        f"AllowUsers {REMOTE_USER}\nClientAliveInterval 5\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    log = workdir / "sshd.log"
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=open(log, "ab"))

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait_for(listening, "sshd", log)
    public = host_key.with_suffix(".pub").read_text().split()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    return Sshd(
        port=port,
        user=REMOTE_USER,
        home=Path(user.pw_dir),
        identity_file=client_key,
        known_hosts=known_hosts,
        host_public_key=f"{public[0]} {public[1]}",
        proc=proc,
        log=log,
    )


# --------------------------------------------------------------------------- Slurm


@dataclass
class Slurm:
    conf: Path
    partition: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def environ(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


SLURM_CONF = """\
ClusterName=expman-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
OverTimeLimit=0
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
"""


def start_slurm(workdir: Path, partition: str = "expman") -> Slurm:
    """munged (if none runs), then slurmctld and slurmd on this host, with a config written here."""
    _need("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "sbatch")
    workdir.mkdir(parents=True, exist_ok=True)
    _start_munge(workdir)
    state = workdir / "state"
    for sub in ("ctld", "d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 512
    conf = workdir / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host,
            ctld_port=_free_port(),
            d_port=_free_port(),
            state=state,
            cpus=os.cpu_count() or 1,
            memory=memory,
            partition=partition,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    log = workdir / "daemons.log"
    out = open(log, "ab")
    ctld = subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=out, stderr=out)
    slurm = Slurm(conf=conf, partition=partition, procs=[ctld])

    def ping() -> bool:
        return subprocess.run(["scontrol", "ping"], env=env, capture_output=True).returncode == 0

    _wait_for(ping, "slurmctld", state / "slurmctld.log")
    slurm.procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(conf)], env=env, stdout=out, stderr=out))

    def node_idle() -> bool:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
        return result.stdout.strip() in ("idle", "mix", "alloc")

    _wait_for(node_idle, "slurmd", state / "slurmd.log", timeout_s=60)
    return slurm


def _start_munge(workdir: Path) -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        os.chmod(key, 0o400)
    for directory in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    _wait_for(lambda: Path("/run/munge/munge.socket.2").exists(), "munged", Path("/var/log/munge/munged.log"))
