"""Run untrusted Python (model-written code) in a separate, restricted process.

Defence in layers, all set up before the untrusted code runs:
* a separate process in its own session, killed with its whole process group on a wall-clock limit;
* resource limits: CPU seconds, address space, file size, open files, processes, no core dumps;
* a fresh temporary working directory (deleted afterwards) and a scrubbed environment;
* a prelude that removes process creation (fork/exec/spawn/subprocess/posix_spawn), signals,
  file deletion/renaming, network sockets, and ctypes from the interpreter.
Anything that fails, hangs or is refused counts as "not passed"; nothing raises to the caller.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRELUDE = r'''
import resource as _r
def _limit(kind, value):
    try:
        _r.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
_limit(_r.RLIMIT_CPU, {cpu_seconds})
_limit(_r.RLIMIT_AS, {memory_bytes})
_limit(_r.RLIMIT_FSIZE, 1 << 20)
_limit(_r.RLIMIT_NOFILE, 64)
_limit(_r.RLIMIT_NPROC, 0)
_limit(_r.RLIMIT_CORE, 0)
del _r, _limit

def _install_guards():
    import os, sys, shutil, socket, _socket, subprocess, _posixsubprocess
    def refused(*args, **kwargs):
        raise PermissionError("refused by the corpmerge sandbox")
    for name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle", "execlp",
                 "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg",
                 "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
                 "chmod", "chown", "link", "symlink", "setuid", "setgid", "putenv", "unsetenv", "chdir"):
        if hasattr(os, name):
            setattr(os, name, refused)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refused)
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, refused)
    _posixsubprocess.fork_exec = refused
    for module in (socket, _socket):
        for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server"):
            if hasattr(module, name):
                setattr(module, name, refused)
    for name in ("ctypes", "_ctypes", "multiprocessing", "pty"):
        sys.modules[name] = None
_install_guards()
del _install_guards
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str


def run_python(program: str, *, wall_seconds: float = 10.0, cpu_seconds: int = 5, memory_bytes: int = 1 << 30) -> SandboxResult:
    """Run ``program``; passed when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="corpmerge-sandbox-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(PRELUDE.format(cpu_seconds=cpu_seconds, memory_bytes=memory_bytes) + "\n" + program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        with open(Path(tmp) / "stderr.txt", "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(script)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, close_fds=True,
            )
            try:
                code = proc.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if code is None:
            return SandboxResult(False, "timeout")
        if code == 0:
            return SandboxResult(True, "ok")
        tail = (Path(tmp) / "stderr.txt").read_bytes()[-300:].decode("utf-8", "replace").strip().splitlines()
        return SandboxResult(False, tail[-1] if tail else f"exit code {code}")
