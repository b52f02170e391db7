"""Which filesystem holds a path: SQLite's file locks and the shared memory of its WAL mode
work only on a local one, and on a network filesystem a queue corrupts silently.

The kernel is asked with Linux's statfs(2), through ctypes, for ``f_type`` (the
filesystem's magic number), rather than looking the path up in /proc/self/mountinfo:
statfs answers for the path itself, through symlinks, bind mounts and mounts stacked on
one another, where mountinfo needs the longest mount-point prefix of the resolved path,
unescaped (``\\040`` for a space), and the last of the entries stacked on that point.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# f_type values of filesystems whose files other machines (or a user-space server) may
# change: NFS, SMB and cluster filesystems, and FUSE, which includes sshfs, GlusterFS and
# virtiofs (statfs cannot tell a local FUSE filesystem from those).
NETWORK_FILESYSTEMS = {
    0x6969: "NFS",
    0x517B: "SMB",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x01021997: "9p",
    0x65735546: "FUSE",
    0x00C36400: "CephFS",
    0x5346414F: "AFS",
    0x6B414653: "AFS",
    0x73757245: "Coda",
    0x564C: "NCP",
    0x7461636F: "OCFS2",
    0x01161970: "GFS2",
    0x19830326: "BeeGFS",
    0x20030528: "OrangeFS",
    0xAAD7AAEA: "PanFS",
    0x013111A8: "IBRIX",
    0xBEEFDEAD: "StorNext",
    0x61636673: "ACFS",
    0x786F4256: "VirtualBox shared folder",
    0xBACBACBC: "VMware shared folder",
}
# struct statfs is 120 bytes on 64-bit Linux and 84 on 32-bit; f_type, a C long, comes first.
_STATFS_BYTES = 256


def network_filesystem(path: Path) -> str | None:
    """The name of the network (or FUSE) filesystem that holds ``path``, or would hold it
    once made (its nearest existing ancestor's); None for a local filesystem, or when
    statfs cannot tell."""
    f_type = _filesystem_type(_nearest_existing(path.absolute()))
    return None if f_type is None else NETWORK_FILESYSTEMS.get(f_type)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _filesystem_type(path: Path) -> int | None:
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(_STATFS_BYTES)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF  # magic numbers are 32-bit
