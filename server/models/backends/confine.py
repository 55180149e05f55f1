"""Confinement of a process that runs model code: drop root, then Landlock and seccomp.

Called by the TorchScript worker (server/models/backends/torchscript_worker.py) after it has
imported everything it needs and before it loads the model. Landlock is used through its three
system calls with ctypes: the PyPI bindings (`landlock` 1.0.0.dev5 and younger ones) are
development releases, and the calls are a small, stable kernel ABI. Linux x86_64/aarch64."""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import signal
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

UNPRIVILEGED_USER = "nobody"

_SYSCALLS = {  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self
    "x86_64": (444, 445, 446),
    "aarch64": (444, 445, 446),
}
_SOCKET_NR = {"x86_64": 41, "aarch64": 198}
_IO_URING_SETUP_NR = 425  # the same number on both: io_uring could open sockets past seccomp
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Filesystem rights (include/uapi/linux/landlock.h), by the ABI that introduced them.
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_ALL_FS_V1 = (1 << 13) - 1
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1 << 0

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_EACCES = 13

READ = _READ_FILE | _READ_DIR | _EXECUTE
READ_WRITE = _ALL_FS_V1 | _TRUNCATE


class ConfinementError(RuntimeError):
    """The process could not be confined as asked."""


@dataclass(frozen=True)
class Confinement:
    """What was applied, for the model's log line and description."""

    uid: int
    landlock_abi: int
    seccomp: bool

    @property
    def summary(self) -> str:
        landlock = (
            f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "NO Landlock (kernel)"
        )
        net = "no sockets (seccomp)" if self.seccomp else "sockets allowed"
        return f"confined: uid {self.uid}, no_new_privs, {landlock}, {net}"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _calls() -> tuple[int, int, int]:
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise ConfinementError(f"no Landlock system call numbers known for {machine}")
    return _SYSCALLS[machine]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when the kernel has none (or disabled it)."""
    if platform.machine() not in _SYSCALLS:
        return 0
    create, _, _ = _calls()
    version = _libc().syscall(create, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def unprivileged_ids(user: str = UNPRIVILEGED_USER) -> tuple[int, int]:
    """(uid, gid) model code runs as; never root's."""
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfinementError(f"user {user!r} is root: refusing it for model code")
    return entry.pw_uid, entry.pw_gid


def drop_privileges(user: str = UNPRIVILEGED_USER) -> int:
    """As root: no supplementary groups, the user's gid and uid (never root). Returns the uid."""
    if os.getuid() != 0 and os.geteuid() != 0:
        return os.getuid()
    uid, gid = unprivileged_ids(user)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise ConfinementError("still root after setuid")
    return uid


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent goes (a server killed before it could close its
    workers): a model looping in a run must not spin on without it. Set after the uid drop,
    which clears it. The kernel sends it when the parent's *thread* that started this process
    ends: the server starts workers from executor threads that live as long as the model."""
    if _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise ConfinementError(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent_pid:  # the parent went before the signal was set
        os._exit(1)


def no_new_privs() -> None:
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")


def open_rules(read: Iterable[Path], read_write: Iterable[Path]) -> list[tuple[int, int]]:
    """(O_PATH fd, rights) of each path that exists, opened before the uid drop (so paths the
    unprivileged user cannot walk to, such as a Python under /root, can still be granted)."""
    rules: list[tuple[int, int]] = []
    for paths, rights in ((read, READ), (read_write, READ_WRITE)):
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            if not os.path.isdir(path):
                # A file takes only file rights.
                rights &= _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
            rules.append((fd, rights))
    return rules


def landlock(abi: int, rules: list[tuple[int, int]]) -> None:
    """Allow what `rules` grant beneath each path, nothing else on the filesystem; with
    ABI >= 4 no TCP bind/connect, >= 6 no abstract UNIX sockets or signals outside this
    process. Needs no_new_privs first. Closes the rules' fds."""
    create, add_rule, restrict_self = _calls()
    handled_fs = _ALL_FS_V1
    if abi >= 2:
        handled_fs |= _REFER
    if abi >= 3:
        handled_fs |= _TRUNCATE
    if abi >= 5:
        handled_fs |= _IOCTL_DEV
    handled_net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)[:size]
    libc = _libc()
    ruleset = int(libc.syscall(create, ctypes.create_string_buffer(attr, size), size, 0))
    if ruleset < 0:
        raise ConfinementError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for fd, rights in rules:
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & handled_fs, fd), 12)
            if libc.syscall(add_rule, ruleset, _RULE_PATH_BENEATH, rule, 0) != 0:
                raise ConfinementError(f"landlock_add_rule: {os.strerror(ctypes.get_errno())}")
        if libc.syscall(restrict_self, ruleset, 0) != 0:
            raise ConfinementError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
        for fd, _ in rules:
            os.close(fd)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def forbid_sockets() -> None:
    """seccomp: socket(2) and io_uring_setup(2) fail with EACCES; a foreign syscall ABI kills.
    The worker talks to the server over a socket pair it inherited, so it creates none."""
    machine = platform.machine()
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    program = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq_k, 1, 0, _AUDIT_ARCH[machine]),
        (ret_k, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jeq_k, 2, 0, _SOCKET_NR[machine]),
        (jeq_k, 1, 0, _IO_URING_SETUP_NR),
        (ret_k, 0, 0, _SECCOMP_RET_ALLOW),
        (ret_k, 0, 0, _SECCOMP_RET_ERRNO | _EACCES),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
    fprog = _SockFprog(len(program), filters)
    if _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise ConfinementError(f"seccomp: {os.strerror(ctypes.get_errno())}")


def confine(
    read: Iterable[Path], read_write: Iterable[Path], *, require_landlock: bool
) -> Confinement:
    """Drop root, set no_new_privs, apply Landlock (when the kernel has it) and seccomp.
    Without Landlock: ConfinementError when `require_landlock`, else uid drop and seccomp
    only (the caller logs that the model runs without filesystem confinement)."""
    abi = landlock_abi()
    if not abi and require_landlock:
        raise ConfinementError(
            "the kernel has no Landlock: TorchScript models are refused unless "
            "EDGEFLEET_SANDBOX_ALLOW_UNCONFINED=1 (docs/security.md)"
        )
    rules = open_rules(read, read_write) if abi else []
    uid = drop_privileges()
    no_new_privs()
    if abi:
        landlock(abi, rules)
    seccomp = platform.machine() in _SOCKET_NR
    if seccomp:
        forbid_sockets()
    return Confinement(uid=uid, landlock_abi=abi, seccomp=seccomp)
