"""Run model-written Python behind an operating-system boundary, and judge it from outside.

In-interpreter guards (patching ``os``, ``sys.modules``) are undone in one line, so the boundary is
the OS (see ``_jail.py`` for the child side): every program runs in fresh mount, network, IPC, UTS
and PID namespaces, chrooted into a read-only view of /usr and the standard library with a private
16 MB /tmp, as uid/gid 65534 without capabilities (no_new_privs), under rlimits (CPU, address
space, file size, open files, no new processes), and is killed with everything it started at the
wall-clock limit. That needs Linux and root: the steps util-linux's ``unshare`` and ``setpriv`` take,
done through libc in the child itself (two exec's fewer per program).

Where isolation cannot be set up, running a program raises :class:`SandboxUnavailable` unless the
process opted in with ``allow_unsandboxed(True)`` (the recipe's ``scoring.allow_unsandboxed_code``);
then programs run as plain child processes of the same user with the same rlimits and the same
judge, each in a fresh folder that :func:`remove_tree` removes afterwards whatever the program left
there (even when the judge had to be killed), and a RuntimeWarning says so: never silently.
Unisolated, a program can still touch whatever its user can, and as root it can read the checks
through /proc or kill the judge.

The verdict of :func:`run_tests` does not come from the program: its tests are split into probes
(which run with the program) and checks (which a separate judge process evaluates on the probes'
values as plain data), so exit status, early exits, hooks, rigged ``__eq__`` and reading the tests
at run time cannot make a wrong program pass. :func:`run_python` only says whether a program ran to
its end, which the program itself can fake; use it for isolation, not for rewards.
"""

from __future__ import annotations

import fcntl
import functools
import json
import marshal
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from corpmerge.rewards.checks import UnsupportedTest, split_tests

SANDBOX_UID = 65534  # nobody / the overflow uid: owns nothing on the host
OPT_IN = "scoring.allow_unsandboxed_code: true"
_JAIL = Path(__file__).with_name("_jail.py")
_SETUP_FAILED = 3  # _jail.SETUP_FAILED
_GRACE_SECONDS = 5.0  # beyond the wall limit, for the judge itself
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _PINNED = 0x80086601, 0x40086602, 0x10 | 0x20  # immutable, append-only
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW

_allowed_unsandboxed = False


class SandboxUnavailable(RuntimeError):
    """Model-written code cannot run isolated here, and running it unisolated was not opted into."""


class SandboxError(RuntimeError):
    """The sandbox's own machinery failed (not the program)."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str


def allow_unsandboxed(flag: bool) -> None:
    """Process-wide opt-in to run code without OS isolation where isolation is unavailable."""
    global _allowed_unsandboxed
    _allowed_unsandboxed = bool(flag)


SELF_TEST = f"""
import os, socket
assert os.getuid() == os.geteuid() == {SANDBOX_UID} and os.getgid() == {SANDBOX_UID} and not os.getgroups(), "uid"
assert os.getpid() == 1, "pid namespace"
assert [name for _, name in socket.if_nameindex()] == ["lo"], "network namespace"
assert not os.path.exists("/proc/1/environ") and not os.path.exists(HOST_FILE), "file system view"
for path in ("/usr/corpmerge-probe", "/corpmerge-probe"):
    try:
        open(path, "w")
    except OSError:
        pass
    else:
        raise AssertionError("writable " + path)
open("scratch", "w").write("ok")
try:
    os.fork()
except OSError:
    pass
else:
    raise AssertionError("fork allowed")
"""


@functools.cache
def isolation_problem() -> str | None:
    """None when programs can run isolated here; otherwise why not, in one line (checked once)."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux namespaces, this is {sys.platform}"
    if os.geteuid() != 0:
        return f"needs root to create namespaces and switch to uid {SANDBOX_UID} (running as uid {os.geteuid()})"
    with tempfile.NamedTemporaryFile(prefix="corpmerge-host-") as host_file:  # must not be visible inside
        program = f"HOST_FILE = {host_file.name!r}\n{SELF_TEST}"
        try:
            result = _launch(_job(program, "", None, isolate=True, wall=10.0, cpu=5, memory=1 << 30), None)
        except (SandboxError, OSError) as error:
            return str(error)
    return None if result.passed else f"isolation self-test failed: {result.reason}"


def _isolate() -> bool:
    """True to isolate; False when unisolated running was opted into; else SandboxUnavailable."""
    problem = isolation_problem()
    if problem is None:
        return True
    if not _allowed_unsandboxed:
        raise SandboxUnavailable(
            f"cannot run model-written code: OS isolation is unavailable here ({problem}); set `{OPT_IN}` in the recipe to run it without isolation (unsafe)"
        )
    _warn(problem)
    return False


def _warn(problem: str) -> None:
    warnings.warn(f"running model-written code WITHOUT OS isolation ({problem}), as {OPT_IN} allows", RuntimeWarning, stacklevel=4)


def _job(code: str, setup: str, probes: list[str] | None, *, isolate: bool, wall: float, cpu: int, memory: int) -> dict:
    return {"isolate": isolate, "uid": SANDBOX_UID, "wall": float(wall), "cpu": int(cpu), "memory": int(memory), "setup": setup, "code": code, "probes": probes}


def _launch(job: dict, checks: dict | None) -> SandboxResult:
    """Run the judge on ``job``; unisolated, in a fresh folder that is removed afterwards whatever happened."""
    if job["isolate"]:  # the program's /tmp is a tmpfs that vanishes with its mount namespace
        return _run_judge(job, checks)
    try:
        workdir = tempfile.mkdtemp(prefix="corpmerge-sandbox-")
    except OSError as error:
        raise SandboxError(f"sandbox setup failed: cannot make the program's folder: {error}") from None
    try:
        return _run_judge({**job, "workdir": workdir}, checks)
    finally:
        remove_tree(workdir)


def _run_judge(job: dict, checks: dict | None) -> SandboxResult:
    head = marshal.dumps(job)
    data = b"%010d" % len(head) + head + (marshal.dumps(checks) if checks is not None else b"")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(_JAIL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_ENV,
        cwd="/",
        start_new_session=True,
        close_fds=True,
    )
    try:
        out, err = proc.communicate(data, timeout=job["wall"] + _GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.communicate()  # the runner dies with the judge (parent-death signal)
        return SandboxResult(False, "timeout")
    lines = out.decode("utf-8", "replace").strip().splitlines()
    tail = (err.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if proc.returncode == _SETUP_FAILED:
        raise SandboxError(tail)
    try:
        verdict = json.loads(lines[-1])
        return SandboxResult(bool(verdict["passed"]), str(verdict["reason"]))
    except (IndexError, ValueError, KeyError, TypeError):
        raise SandboxError(f"sandbox judge failed: {tail}") from None


def run_tests(setup_code: str, code: str, tests: list[str], *, wall_seconds: float = 10.0, cpu_seconds: int = 5, memory_bytes: int = 1 << 30) -> SandboxResult:
    """Run ``setup_code`` and ``code``, then judge the assert ``tests`` outside the program's process."""
    isolate = _isolate()
    try:
        split = split_tests(setup_code or "", code, tests)
    except SyntaxError as error:
        return SandboxResult(False, f"SyntaxError: {error.msg}")
    except UnsupportedTest as error:
        return SandboxResult(False, str(error))
    job = _job(code, setup_code or "", split.probes, isolate=isolate, wall=wall_seconds, cpu=cpu_seconds, memory=memory_bytes)
    return _launch(job, {"setup": setup_code or "", "modules": split.modules, "names": split.names, "checks": split.checks})


def run_python(program: str, *, wall_seconds: float = 10.0, cpu_seconds: int = 5, memory_bytes: int = 1 << 30) -> SandboxResult:
    """Run ``program`` in the sandbox; passed when it ran to its end. Not a verdict: a program can fake that."""
    job = _job(program, "", None, isolate=_isolate(), wall=wall_seconds, cpu=cpu_seconds, memory=memory_bytes)
    return _launch(job, None)


def remove_tree(top: str) -> None:
    """``rm -rf top`` as far as this process may; never raises, never follows a symlink, never blocks.

    Whatever a program left there: any depth (folders are flattened into ``top`` by renaming their
    entries up, so neither recursion nor PATH_MAX applies and two descriptors are open at a time),
    FIFOs and device nodes (never opened), folders without permissions (given back to the owner),
    and immutable or append-only flags (cleared where this process has the privilege to).
    """
    _unpin(top)
    try:
        fd = os.open(top, _OPEN_DIR)
    except OSError:  # not a folder (any more): a symlink or file is removed, not followed
        _try(os.unlink, top)
        return
    try:
        queue, serial = deque(_entries(fd)), 0
        while queue:
            name = queue.popleft()
            if _remove(fd, name):
                continue
            try:  # a folder that is not empty (a file that stays cannot be opened this way)
                child = os.open(name, _OPEN_DIR, dir_fd=fd)
            except OSError:
                continue
            try:
                for entry in _entries(child):  # up one level, under a name of our own
                    for _ in range(2):  # the second time unpinned, under another name
                        serial += 1
                        moved = f".corpmerge-rm-{serial}"
                        if _try(os.rename, entry, moved, src_dir_fd=child, dst_dir_fd=fd):
                            queue.append(moved)
                            break
                        _unpin(entry, child)
            finally:
                os.close(child)
            _remove(fd, name)
    finally:
        os.close(fd)
    _try(os.rmdir, top)


def _entries(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []


def _try(operation, *args, **kwargs) -> bool:
    """True when ``operation`` succeeded or its target is already gone."""
    try:
        operation(*args, **kwargs)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _remove(fd: int, name: str) -> bool:
    """Remove an entry (a folder only when empty), clearing what stops it once; True when it is gone."""
    try:
        is_dir = stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    remove = os.rmdir if is_dir else os.unlink
    if _try(remove, name, dir_fd=fd):
        return True
    _unpin(name, fd)
    return _try(remove, name, dir_fd=fd)


def _unpin(name: str, fd: int | None = None) -> None:
    """Clear the immutable/append-only flags of a file or folder and give a folder rwx to its owner.

    Only regular files and folders are opened: non-blocking, without following symlinks.
    """
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    except OSError:
        handle = None
    if handle is not None:
        try:
            flags = struct.unpack("i", fcntl.ioctl(handle, _FS_IOC_GETFLAGS, bytes(4)))[0]
            if flags & _PINNED:
                fcntl.ioctl(handle, _FS_IOC_SETFLAGS, struct.pack("i", flags & ~_PINNED))
        except OSError:
            pass
        finally:
            os.close(handle)
    if stat.S_ISDIR(mode):
        _try(os.chmod, name, 0o700, dir_fd=fd)  # just checked it is a folder, not a symlink
