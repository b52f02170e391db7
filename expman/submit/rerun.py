"""``expman rerun``: a new run of what a recorded run ran, made from that run's directory
alone (its code.tar and effective config.json; no repository needed), executed as
``expman submit`` executes runs, then compared with the original: is it a reproduction?

The new run links to the original (``rerun_of``) and runs on the original's image, by id,
while the engine has it (``LocalBackend.prepare``); its verdict goes into its record
(``reproduction``) through lifecycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backends import make_backend
from ..backends.base import Backend
from ..errors import RunCancelledError, UsageError
from ..hostinfo import host_facts
from ..progress import Reporter
from ..results.compare import Entry, compare_runs, verdict
from ..results.rundiff import entry_line
from ..rundir import lifecycle
from ..rundir.files import link_or_copy
from ..rundir.layout import Clock, RunDir, create_run_dir, utc_now
from ..rundir.record import ImageInfo, RunRecord, RunStatus, load_record
from .create import fill_new_run, submitter_of
from .run import execute_runs

RERUN_BACKENDS = ("local", "process")  # where a rerun is followed here and its outputs land here
REPRODUCED, DIFFERS = "reproduced", "differs"


@dataclass(frozen=True)
class Reproduction:
    run: RunDir
    record: RunRecord
    differences: list[Entry]
    notes: list[Entry]

    @property
    def reproduced(self) -> bool:
        return not self.differences


def rerun(
    original: RunDir,
    backend_name: str | None,
    environ: Mapping[str, str],
    reporter: Reporter,
    argv: list[str],
    rtol: float = 0.0,
    logs: bool = False,
    clock: Clock = utc_now,
) -> Reproduction:
    """Run ``original`` again and compare the two; every check comes before anything is written."""
    record = load_record(original)
    backend = make_backend(_backend_name(record, backend_name), environ)
    _check_rerunnable(original, record)
    backend.check_record(record)
    run, new = _create_rerun(original, record, backend, argv, clock)
    reporter.info(f"run {run.run_id} at {run.path} (a rerun of {record.run_id})")
    (ended,) = execute_runs(backend, [(run, new)], reporter, detach=False, clock=clock)
    if ended.status == RunStatus.CANCELLED:
        raise RunCancelledError(f"rerun {run.run_id} cancelled; nothing compared")
    differences, notes = verdict(compare_runs(original, record, run, ended, rtol, logs))
    reproduction = {
        "verdict": DIFFERS if differences else REPRODUCED,
        "compared_with": record.run_id,
        "rtol": rtol,
        "logs": logs,
        "differences": [entry_line(e, qualified=True, cut=False) for e in differences],
        "notes": [entry_line(e, qualified=True, cut=False) for e in notes],
    }
    return Reproduction(run, lifecycle.note_reproduction(run, reproduction), differences, notes)


def _backend_name(record: RunRecord, chosen: str | None) -> str:
    name = chosen or record.backend
    if name not in RERUN_BACKENDS:
        raise UsageError(
            f"run {record.run_id} ran on the {name} backend; a rerun is followed and compared here: "
            f"choose --backend {' or '.join(RERUN_BACKENDS)}"
        )
    return name


def _check_rerunnable(original: RunDir, record: RunRecord) -> None:
    if not record.final:
        raise UsageError(f"run {record.run_id} is {record.status}; rerun it once it has ended")
    for path in (original.code_tar, original.config):
        if not path.is_file():
            raise UsageError(
                f"run {record.run_id} has no {path.name} (at {path}); it cannot be rerun from its directory: "
                "submit its commit again instead"
            )


def _create_rerun(
    original: RunDir, record: RunRecord, backend: Backend, argv: list[str], clock: Clock
) -> tuple[RunDir, RunRecord]:
    """The new run's directory next to the original's: the same archive (a hard link) and
    config, and its first record (queued). A failure is recorded in the new run and raised."""
    run = create_run_dir(original.path.parent, clock)
    new = rerun_record(record, run.run_id, backend, argv, clock)

    def write() -> None:
        try:
            link_or_copy(original.code_tar, run.code_tar)
            run.config.write_bytes(original.config.read_bytes())
        except OSError as exc:
            raise lifecycle.unwritable(run.path, exc) from None

    fill_new_run(run, new, clock, write)
    return run, new


def rerun_record(original: RunRecord, run_id: str, backend: Backend, argv: list[str], clock: Clock) -> RunRecord:
    """What ``original`` ran (commit, command, resources, image), with this submitter, host
    and environment; nothing of how it went, and no sweep, search or queue: a rerun is a run
    of its own, linked to the original."""
    return RunRecord(
        run_id=run_id,
        status=RunStatus.QUEUED,
        git=dataclasses.replace(original.git),
        config_hash=original.config_hash,
        command=list(original.command),
        resources=dict(original.resources),
        backend=backend.name,
        submitter=submitter_of(backend.redactor.argv(argv)),
        host_facts=host_facts(),
        environment=backend.redactor.environment(backend.environ),
        queued_at=clock().isoformat(),
        image=_image_of(original.image, backend),
        checkpoint=_copied(original.checkpoint),
        rerun_of=original.run_id,
    )


def _image_of(image: ImageInfo, backend: Backend) -> ImageInfo:
    """The original's image (its id pins it) for a container backend; none for a process."""
    if backend.name == "process":
        return ImageInfo(dockerfile=image.dockerfile, dockerfile_hash=image.dockerfile_hash, image_tag=image.image_tag)
    return dataclasses.replace(image, engine_version=None)


def _copied(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)
