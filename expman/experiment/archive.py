"""The code of a run: ``git archive`` of one commit, and safe ways to unpack it.

The archive is the only way code reaches a run: it is the Docker build context, it is
copied into the container at /code, and the process backend extracts it. The work tree is
never read.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from ..errors import GitError, UnsafeArchiveError
from .git import stream_archive

CODE_DIR = "code"
CONFIG_DIR = "expman"
SHARED_CODE_DIR = ".expman-code"


def write_archive(repo: Path, commit: str, dest: Path) -> None:
    """``git archive`` ``commit`` into ``dest``."""
    try:
        with open(dest, "wb") as out:
            stream_archive(repo, commit, out)
    except GitError:
        dest.unlink(missing_ok=True)
        raise


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract refusing absolute paths, '..', links that leave ``dest`` and device files."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter=_strict_data_filter)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{archive} holds an unsafe member ({exc}); refusing to extract it") from None
    except tarfile.TarError as exc:
        raise UnsafeArchiveError(f"{archive} is not a readable tar archive ({exc})") from None


def extract_shared(archive: Path, commit: str, link: Path) -> Path:
    """Extract ``archive`` once per commit under ``<runs_root>/.expman-code/<commit>`` and point
    ``link`` (a run's ``code``) at it: the runs of a sweep share one copy of the code.

    The runs_root is ``link``'s grandparent. Extraction goes to a temporary directory that is
    renamed into place, so a concurrent run never sees a half-extracted tree.
    """
    shared = link.parent.parent / SHARED_CODE_DIR / commit
    if not shared.is_dir():
        shared.parent.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{commit}.", dir=shared.parent))
        try:
            extract_archive(archive, staging)
            os.rename(staging, shared)
        except OSError:
            if not shared.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not link.is_symlink():
        link.symlink_to(Path("..") / SHARED_CODE_DIR / commit)
    return shared


def _strict_data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, but absolute names are refused instead of made relative:
    git archive never writes them, so one means the archive is not what it claims."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest_path)


def container_payload(archive: Path, config_json: bytes) -> IO[bytes]:
    """A tar to unpack at / in a container: the archive under code/, the config at expman/.

    Entries are re-rooted rather than extracted, so nothing from the archive touches the
    host's file system on the way in.
    """
    payload = tempfile.TemporaryFile()
    with tarfile.open(archive) as src, tarfile.open(fileobj=payload, mode="w") as dst:
        for directory in (CODE_DIR, CONFIG_DIR):
            dst.addfile(_directory_entry(directory))
        for member in src:
            if member.name in ("", ".") or member.type == tarfile.XGLTYPE:
                continue
            fileobj = src.extractfile(member) if member.isfile() else None
            member.name = f"{CODE_DIR}/{member.name.lstrip('./')}"
            if member.islnk():
                member.linkname = f"{CODE_DIR}/{member.linkname}"
            dst.addfile(member, fileobj)
        info = tarfile.TarInfo(f"{CONFIG_DIR}/config.json")
        info.size, info.mode = len(config_json), 0o644
        dst.addfile(info, io.BytesIO(config_json))
    payload.seek(0)
    return payload


def _directory_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info
