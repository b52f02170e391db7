from __future__ import annotations

import io
import tarfile

import pytest

from expman.errors import UnsafeArchiveError
from expman.experiment.archive import container_payload, extract_archive, write_archive


def make_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def entry(name, data=b"x", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "member",
    [
        entry("../escape.txt"),
        entry("/etc/evil"),
        entry("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        entry("up", kind=tarfile.SYMTYPE, linkname="../../outside"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, member):
    archive = tmp_path / "evil.tar"
    make_tar(archive, [member])
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_git_archive_roundtrip_and_payload_layout(make_repo, tmp_path):
    repo = make_repo()
    archive = tmp_path / "code.tar"
    write_archive(repo.path, repo.git("rev-parse", "HEAD"), archive)
    extract_archive(archive, tmp_path / "code")
    assert (tmp_path / "code" / "job.py").read_text() == (repo.path / "job.py").read_text()
    with container_payload(archive, b'{"a": 1}') as payload, tarfile.open(fileobj=payload) as tar:
        names = tar.getnames()
        assert tar.extractfile("expman/config.json").read() == b'{"a": 1}'
    assert "code/job.py" in names and "code/Dockerfile" in names
    assert all(n.startswith(("code", "expman")) for n in names)
