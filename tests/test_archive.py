"""The archive is the only way code reaches a run: unpacking it must never touch anything
outside its destination, whatever the tar holds, and leaves nothing behind when refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from expman.errors import UnsafeArchiveError
from expman.experiment.archive import container_payload, extract_archive, write_archive

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def entry(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def directory(name: str):
    return entry(name, kind=tarfile.DIRTYPE, mode=0o777)


def symlink(name: str, target: str):
    return entry(name, kind=tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str, mode: int = 0o644):
    return entry(name, kind=tarfile.LNKTYPE, linkname=target, mode=mode)


def realpath_overflow(dest: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """CVE-2025-4517 (the published PoC's shape): symlinks that expand past PATH_MAX, where
    os.path.realpath stops resolving and the filter's check goes wrong; ``escape`` then leads
    to dest's parent, a hardlink through it reaches ``flag`` there and overwrites it."""
    steps = "abcdefghijklmnop"
    component = "d" * ((PATH_MAX - len(str(dest)) - 1) // (len(steps) + 1))
    members, path = [], ""
    for step in steps:
        members += [directory(os.path.join(path, component)), symlink(os.path.join(path, step), component)]
        path = os.path.join(path, component)
    linkpath = os.path.join(*steps, "l" * 254)
    members += [
        symlink(linkpath, os.path.join(*[".."] * len(steps))),
        symlink("escape", os.path.join(linkpath, "..")),
        hardlink("flaglink", os.path.join("escape", "flag")),
        entry("flaglink", b"overwritten"),
        entry("escape/newfile", b"new"),
    ]
    return members


def relinked_symlink() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """CVE-2025-4330's shape: a hardlink to a symlink whose target does not exist yet makes
    tarfile extract the symlink member again, unfiltered, at the hardlink's place; from there
    its relative target leads outside, and the hardlink's mode is applied through it."""
    return [
        directory("sub"),
        symlink("sub/escape", "../victim"),  # dest/victim from sub/, dest's parent's from dest/
        hardlink("boom", "sub/escape", mode=0o777),
    ]


def outside_listing(outer: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes()) for p in outer.iterdir() if p.is_file()}


def test_cve_2025_4517_symlinks_past_path_max_are_refused(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "flag").write_bytes(b"secret")
    dest = outer / "dest"
    archive = make_tar(tmp_path / "evil.tar", realpath_overflow(dest))
    with pytest.raises(UnsafeArchiveError, match="evil.tar"):
        extract_archive(archive, dest)
    assert (outer / "flag").read_bytes() == b"secret"
    assert sorted(p.name for p in outer.iterdir()) == ["flag"]  # no newfile, no dest, no staging


def test_cve_2025_4330_hardlink_to_relinked_symlink_is_refused(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    victim = outer / "victim"
    victim.write_bytes(b"private")
    victim.chmod(0o600)
    archive = make_tar(tmp_path / "evil.tar", relinked_symlink())
    with pytest.raises(UnsafeArchiveError, match="boom"):
        extract_archive(archive, outer / "dest")
    assert outside_listing(outer) == {"victim": (0o600, b"private")}
    assert [p.name for p in outer.iterdir()] == ["victim"]


UNSAFE: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "parent": [entry("../escape.txt")],
    "absolute": [entry("/etc/evil")],
    "dot-dot inside": [directory("a"), entry("a/../../escape.txt")],
    "absolute link": [symlink("link", "/etc/passwd")],
    "link up": [symlink("up", "../../outside")],
    "link up and back": [directory("a"), symlink("a/l", "../../dest/good.txt")],
    "empty link": [symlink("empty", "")],
    # each link alone stays inside; together l3 -> l2/.. -> ./.. leaves
    "chain": [symlink("l3", "l2/.."), symlink("l2", ".")],
    "through a link": [directory("d"), symlink("l", "d"), entry("l/x")],
    "hardlink": [entry("a"), hardlink("b", "a")],
    "fifo": [entry("pipe", kind=tarfile.FIFOTYPE)],
    "char device": [entry("tty", kind=tarfile.CHRTYPE)],
    "block device": [entry("disk", kind=tarfile.BLKTYPE)],
    "contiguous": [entry("c", kind=tarfile.CONTTYPE)],
    "twice": [entry("a", b"one"), entry("a", b"two")],
    "file then link": [entry("a"), symlink("a", "b")],
    "under a file": [entry("a"), entry("a/b")],
}


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_members_are_refused_and_nothing_is_left(tmp_path, name):
    archive = make_tar(tmp_path / "evil.tar", [entry("good.txt", b"fine"), *UNSAFE[name]])
    outer = tmp_path / "outer"
    outer.mkdir()
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive(archive, outer / "dest")
    assert list(outer.iterdir()) == []  # not even the member before the refused one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar", "outer"]


@pytest.mark.parametrize("name", UNSAFE)
def test_the_container_payload_refuses_the_same_members(tmp_path, name):
    archive = make_tar(tmp_path / "evil.tar", [entry("good.txt", b"fine"), *UNSAFE[name]])
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        container_payload(archive, b"{}")


def test_the_cves_are_refused_in_the_container_payload_too(tmp_path):
    for name, members in {"a": realpath_overflow(tmp_path / "dest"), "b": relinked_symlink()}.items():
        with pytest.raises(UnsafeArchiveError):
            container_payload(make_tar(tmp_path / f"{name}.tar", members), b"{}")


def test_a_missing_or_damaged_archive_is_one_clear_error(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsafeArchiveError, match="not a readable tar"):
        extract_archive(tmp_path / "junk.tar", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


SYMLINKS = {
    "to_file": "job.py",
    "pkg/to_parent_file": "../job.py",
    "pkg/sub/deep_up": "../../pkg/sub/deep.py",
    "to_dir": "pkg/sub",
    "to_link": "to_dir/deep.py",  # a chain, ending inside
    "dangling": "not/there",
    "dir with spaces 'q\" ü/link": "../données/ü.txt",
}


def legit_repo(make_repo: Callable[..., object]):
    repo = make_repo()
    repo.write(
        {
            "pkg/sub/deep.py": "print('deep')\n",
            "données/ü.txt": "unicode\n",
            "dir with spaces 'q\" ü/file": "awkward\n",
            ".config/settings": "dotted\n",
            "run.sh": "#!/bin/sh\necho ran\n",
        }
    )
    (repo.path / "run.sh").chmod(0o755)
    for name, target in SYMLINKS.items():
        (repo.path / name).symlink_to(target)
    repo.commit(message="every legitimate kind of entry")
    return repo


def test_every_legitimate_git_archive_entry_extracts(make_repo, tmp_path):
    repo = legit_repo(make_repo)
    archive = tmp_path / "code.tar"
    write_archive(repo.path, repo.git("rev-parse", "HEAD"), archive)
    code = tmp_path / "out" / "code"
    code.parent.mkdir()
    extract_archive(archive, code)
    tracked = repo.git("ls-files", "-z").split("\0")
    for name in filter(None, tracked):
        original, copy = repo.path / name, code / name
        if original.is_symlink():
            assert os.readlink(copy) == os.readlink(original), name
        else:
            assert copy.read_bytes() == original.read_bytes(), name
            assert os.access(copy, os.X_OK) == os.access(original, os.X_OK), name
    assert (code / "to_link").read_text() == "print('deep')\n"
    assert [p.name for p in code.parent.iterdir()] == ["code"]  # no staging directory left


def test_container_payload_keeps_every_entry_under_code(make_repo, tmp_path):
    repo = legit_repo(make_repo)
    archive = tmp_path / "code.tar"
    write_archive(repo.path, repo.git("rev-parse", "HEAD"), archive)
    with container_payload(archive, b'{"a": 1}') as payload, tarfile.open(fileobj=payload) as tar:
        members = {m.name: m for m in tar}
        assert tar.extractfile("expman/config.json").read() == b'{"a": 1}'
        assert tar.extractfile("code/.gitignore").read() == b"*.pyc\n"  # dotfiles keep their dot
    for name, target in SYMLINKS.items():
        assert members[f"code/{name}"].issym() and members[f"code/{name}"].linkname == target
    assert members["code/run.sh"].mode & 0o111
    assert "code/données/ü.txt" in members and "code/job.py" in members and "code/Dockerfile" in members
    assert all(n.startswith(("code/", "expman/")) or n in ("code", "expman") for n in members)
