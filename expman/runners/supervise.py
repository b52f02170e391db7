"""``python -m expman.runners.supervise RUN_DIR``: execute a prepared run without a terminal.

Started by ``expman submit --detach`` in its own session, so the run goes on after the
submitting shell exits. Everything it needs is in the run directory's record.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..backends import make_backend
from ..backends.flow import execute
from ..errors import ExpmanError
from ..rundir.layout import RunDir, utc_now
from ..rundir.record import RunStatus, load_record


def main(argv: list[str]) -> int:
    run = RunDir(Path(argv[0]))
    record = load_record(run)
    try:
        final = execute(make_backend(record.backend, os.environ), run, record, utc_now, echo=False)
    except ExpmanError as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    return 0 if final.status == RunStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
