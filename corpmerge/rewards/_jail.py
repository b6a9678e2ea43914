"""The child side of the code sandbox. Run as a script (``python -I -S -B _jail.py``), never imported.

Two processes; only the second one runs model-written code:

* the judge (this process) starts as root. In isolated mode it enters new mount, network, IPC, UTS and
  PID namespaces, builds a read-only root of /usr, the standard library and four device files with a
  small tmpfs at /tmp, chroots into it, and becomes uid/gid 65534 with no capabilities and
  no_new_privs. Then it reads the runner's part of the job and forks;
* the runner is pid 1 of the new PID namespace (so it sees no other process, and when it dies
  everything it started dies with it). It takes rlimits (CPU, address space, file size, open
  files, no processes at all), runs the setup code and the candidate's code, evaluates each *probe*
  (the parts of the tests that call the candidate's code), writes the values as tagged JSON to a
  pipe and exits. It never sees the checks (the expected values).

The judge waits for the runner (killing it at the wall-clock limit), only then reads the checks from
stdin, binds the decoded probe values and evaluates the checks itself. Exit status, early exits,
hooks, rigged ``__eq__`` and whatever the runner prints cannot change the verdict: the runner only
hands over data. The verdict is one JSON line on stdout; a setup failure is one line on stderr and
exit status 3.

Protocol on stdin: ten ASCII digits giving the length of the runner's job, the job, then the judge's
checks up to end of file, both marshalled by the parent (trusted data). The runner hands its values
over as JSON, which the judge parses with the C scanner of ``_json`` (``json`` itself imports ``re``
and ``enum``: a quarter of this process's start-up).
"""

import _json
import _signal as signal  # `signal` imports enum (milliseconds); the constants are the same
import builtins
import marshal
import os
import resource
import select
import sys
import time

SETUP_FAILED = 3
RESULT_CAP = 4 << 20  # bytes of runner output the judge reads
ENCODE_BUDGET = 200_000  # values (and characters / 64) a runner may hand over
REASON_CHARS = 200

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEVICES = ("null", "zero", "random", "urandom")


class SetupError(Exception):
    """Isolation could not be set up (reported on stderr, exit status 3)."""


# --- isolation (judge, as root) ---------------------------------------------------------------


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(name, *args):
        if getattr(libc, name)(*args) != 0:
            errno = ctypes.get_errno()
            raise SetupError(f"{name}{tuple(a.decode() if isinstance(a, bytes) else a for a in args if a is not None)}: {os.strerror(errno)}")

    return call


def _isolate(uid: int) -> None:
    """New namespaces, a read-only chroot with a fresh /tmp, then uid/gid ``uid`` without capabilities."""
    call = _libc()
    call("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)
    call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    # what the new root shows, opened before /tmp is covered (the interpreter's path could live there)
    wanted = [d for d in SYSTEM_DIRS if os.path.lexists("/" + d)]
    dirs = {"/" + d: os.open("/" + d, os.O_PATH) for d in wanted if not os.path.islink("/" + d)}
    here = os.path.dirname(os.path.abspath(__file__))  # on sys.path before 3.11 (-I implies -P from 3.11)
    for path in sys.path:
        if path != here and os.path.isdir(path) and not any(path == d or path.startswith(d + "/") for d in dirs):
            dirs[path] = os.open(path, os.O_PATH)
    files = {f"/dev/{d}": os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES}
    if os.path.isfile("/etc/ld.so.cache"):
        files["/etc/ld.so.cache"] = os.open("/etc/ld.so.cache", os.O_PATH)
    root = "/tmp"
    call("mount", b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    for d in wanted:
        if os.path.islink("/" + d):
            os.symlink(os.readlink("/" + d), f"{root}/{d}")
    binds = []
    for path, fd in [*dirs.items(), *files.items()]:
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if path in dirs:
            os.makedirs(target, exist_ok=True)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        call("mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND, None)
        binds.append((target, path.startswith("/dev/")))
        os.close(fd)
    os.mkdir(f"{root}/tmp")
    call("mount", b"tmpfs", f"{root}/tmp".encode(), b"tmpfs", MS_NOSUID | MS_NODEV, f"size=16m,mode=700,uid={uid},gid={uid}".encode())
    for target, device in binds:  # a bind mount takes its flags only on a remount
        call("mount", None, target.encode(), None, MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if device else MS_RDONLY | MS_NODEV), None)
    call("mount", None, root.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
    os.chroot(root)
    os.chdir("/tmp")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability
    call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SetupError("could not switch to the sandbox uid")


# --- runner (the candidate's code) ------------------------------------------------------------


def _limit(kind: int, value: int) -> None:
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass


def _reason(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[:REASON_CHARS]


class _Budget:
    def __init__(self) -> None:
        self.left = ENCODE_BUDGET

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError("result too large")


_quote = _json.encode_basestring_ascii
_FLOATS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _encode(value, budget: _Budget, depth: int = 0) -> str:
    """Plain data as JSON text: scalars as themselves, everything else as [tag, payload]."""
    budget.spend()
    if depth > 100:
        raise ValueError("result nested too deeply")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        text = repr(float(value))
        return _FLOATS.get(text, text)
    if isinstance(value, str):
        budget.spend(len(value) // 64)
        return _quote(str(value))
    items = lambda xs: "[" + ",".join(_encode(x, budget, depth + 1) for x in xs) + "]"  # noqa: E731
    pairs = lambda xs: "[" + ",".join(items(kv) for kv in xs) + "]"  # noqa: E731
    if isinstance(value, (bytes, bytearray)):
        budget.spend(len(value) // 64)
        return f'["{"bytearray" if isinstance(value, bytearray) else "bytes"}",{_quote(bytes(value).decode("latin-1"))}]'
    if isinstance(value, complex):
        return f'["complex",{items((value.real, value.imag))}]'
    if isinstance(value, dict):
        return f'["dict",{pairs(dict.items(value))}]'
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            return f'["{base.__name__}",{items(base.__iter__(value))}]'
    kind = type(value).__name__
    if kind in ("deque", "dict_keys", "dict_values"):
        return f'["{kind}",{items(value)}]'
    if kind == "dict_items":
        return f'["{kind}",{pairs(value)}]'
    if kind == "range":
        return f'["range",{items((value.start, value.stop, value.step))}]'
    if kind == "Fraction":
        return f'["Fraction",{items((int(value.numerator), int(value.denominator)))}]'
    if kind == "Decimal":
        return f'["Decimal",{_quote(str(value))}]'
    if hasattr(type(value), "__next__"):  # generators, map, filter, zip, iterators: consumed here
        return f'["iter",{items(value)}]'
    raise TypeError(f"cannot hand over a {kind} (plain data only)")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _run(job: dict, result_fd: int) -> None:
    """The runner: everything up to the first line of candidate code is trusted."""
    _limit(resource.RLIMIT_CPU, job["cpu"])
    _limit(resource.RLIMIT_AS, job["memory"])
    _limit(resource.RLIMIT_FSIZE, 1 << 20)
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, 0)  # no fork, no threads (root, unisolated, is exempt)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": os.getcwd(), "TMPDIR": os.getcwd(), "LANG": "C.UTF-8"})
    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(job["setup"], "<setup>", "exec"), g)
        exec(compile(job["code"], "<program>", "exec"), g)
    except BaseException as error:  # SystemExit too: leaving before the tests is not passing them
        _write_all(result_fd, b'{"error":%s}' % _quote(_reason(error)).encode())
        os._exit(1)
    if job["probes"] is None:
        _write_all(result_fd, b'{"done":true}')
        os._exit(0)
    out = []
    for source in job["probes"]:
        try:
            out.append('["ok",%s]' % _encode(eval(compile(source, "<test>", "eval"), g), _Budget()))
        except BaseException as error:
            out.append('["error",%s]' % _quote(_reason(error)))
    _write_all(result_fd, ('{"probes":[%s]}' % ",".join(out)).encode())
    os._exit(0)


# --- judge ------------------------------------------------------------------------------------


class _ScanContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder."""

    strict, object_hook, object_pairs_hook, memo = True, None, None, {}
    parse_float, parse_int, parse_constant = float, int, float


_scan = _json.make_scanner(_ScanContext())


def _loads(data: bytes):
    """Parse one JSON document (ValueError, RecursionError or StopIteration when it is not one)."""
    text = data.decode("utf-8")
    value, end = _scan(text, 0)
    if text[end:].strip():
        raise ValueError("trailing data")
    return value


def _decode(value):
    if not isinstance(value, list):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ValueError("malformed result")
    tag, payload = value
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](_decode(x) for x in payload)
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in payload}
    if tag in ("bytes", "bytearray"):
        return (bytes if tag == "bytes" else bytearray)(payload.encode("latin-1"))
    if tag == "complex":
        return complex(float(payload[0]), float(payload[1]))
    if tag == "iter":
        return iter([_decode(x) for x in payload])
    if tag == "deque":
        from collections import deque

        return deque(_decode(x) for x in payload)
    if tag == "dict_keys":
        return dict.fromkeys(_decode(x) for x in payload).keys()
    if tag == "dict_values":
        return dict(enumerate(_decode(x) for x in payload)).values()
    if tag == "dict_items":
        return {_decode(k): _decode(v) for k, v in payload}.items()
    if tag == "range":
        return range(*(int(x) for x in payload))
    if tag == "Fraction":
        from fractions import Fraction

        return Fraction(int(payload[0]), int(payload[1]))
    if tag == "Decimal":
        from decimal import Decimal

        return Decimal(str(payload))
    raise ValueError("malformed result")


class ProbeFailed(Exception):
    pass


class _Probes(dict):
    """Probe values by placeholder name; a probe that raised re-raises when the check reaches it."""

    def __init__(self, names: list, values: list) -> None:
        super().__init__(zip(names, values))

    def __getitem__(self, name):
        value = dict.__getitem__(self, name)
        if isinstance(value, ProbeFailed):
            raise value
        return value


def _judge(checks: dict, result: dict, nprobes: int) -> tuple:
    if "error" in result:
        return False, str(result["error"])[:REASON_CHARS]
    probes = result.get("probes")
    if not isinstance(probes, list) or len(probes) != nprobes:
        return False, "malformed runner output"
    values = []
    for item in probes:
        try:
            status, payload = item
            values.append(_decode(payload) if status == "ok" else ProbeFailed(str(payload)[:REASON_CHARS]))
        except Exception:
            values.append(ProbeFailed("malformed result"))
    env = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        exec(compile(checks["setup"], "<setup>", "exec"), env)
        for name in checks["modules"]:
            env.setdefault(name, __import__(name))
    except BaseException as error:
        return False, f"test setup failed: {_reason(error)}"
    scope = _Probes(checks["names"], values)
    for number, check in enumerate(checks["checks"], 1):
        try:
            ok = eval(compile(check, "<test>", "eval"), env, scope)
        except ProbeFailed as error:
            return False, str(error)
        except BaseException as error:
            return False, f"test {number}: {_reason(error)}"
        if not ok:
            return False, f"test {number} failed"
    return True, "ok"


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            raise SetupError("job truncated")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_rest(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _watch(pid: int, result_r: int, err_r: int, deadline: float, group: bool) -> tuple:
    """Collect the runner's output until it exits or the deadline passes (then kill it)."""
    buffers = {result_r: bytearray(), err_r: bytearray()}
    pidfd = os.pidfd_open(pid)
    open_fds = [result_r, err_r]
    verdict = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            verdict = "timeout"
            break
        ready, _, _ = select.select(open_fds + [pidfd], [], [], left)
        for fd in ready:
            if fd == pidfd:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.remove(fd)
                continue
            buffers[fd] += chunk
            if fd == err_r:
                del buffers[fd][:-2048]
            elif len(buffers[fd]) > RESULT_CAP:
                verdict = "output too large"
        if verdict or pidfd in ready:
            break
    if verdict:
        try:
            os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    for fd in open_fds:  # drain what an exited runner left in the pipes, without waiting for more
        os.set_blocking(fd, False)
        try:
            while len(buffers[fd]) <= RESULT_CAP and (chunk := os.read(fd, 1 << 16)):
                buffers[fd] += chunk
        except BlockingIOError:
            pass
    if group:  # unisolated: nothing else kills what the runner may have started
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return verdict, status, bytes(buffers[result_r][: RESULT_CAP + 1]), bytes(buffers[err_r])


def _exit_reason(status: int, stderr: bytes) -> str:
    """Why a runner handed over nothing."""
    tail = stderr.decode("utf-8", "replace").strip().splitlines()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {signal.SIGXCPU: "CPU limit", signal.SIGKILL: "killed (CPU limit or out of memory)"}.get(sig, f"killed by signal {sig}")
    if tail:
        return tail[-1][:REASON_CHARS]
    return f"left before the tests ran (exit code {os.WEXITSTATUS(status)})"


def main() -> int:
    start = time.monotonic()
    try:
        job = marshal.loads(_read_exactly(0, int(_read_exactly(0, 10))))
        if job["isolate"]:
            _isolate(job["uid"])
            workdir = None
        else:  # unsafe by choice; still keep a same-uid runner out of /proc/<judge>/fd (root can read it anyway)
            _libc()("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
            workdir = job["workdir"]  # made and removed by the parent, whatever happens here
        result_r, result_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
    except (SetupError, OSError, ValueError, KeyError, EOFError, TypeError) as error:
        print(f"sandbox setup failed: {error}", file=sys.stderr)
        return SETUP_FAILED
    if pid == 0:  # runner
        try:
            _libc()("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the judge
            if workdir is not None:
                os.chdir(workdir)
            os.setsid()  # its own process group: kill(0, ...) must not reach the judge
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(err_w, 2)
            os.dup2(devnull, 0)  # the checks stay unread in the stdin pipe: the runner never sees them
            os.dup2(devnull, 1)
            os.dup2(result_w, 3)
            os.closerange(4, 1 << 20)
            _run(job, 3)
        finally:
            os._exit(70)
    os.close(result_w)
    os.close(err_w)
    _limit(resource.RLIMIT_AS, max(job["memory"], 1 << 30))
    verdict, status, output, stderr = _watch(pid, result_r, err_r, start + job["wall"], group=not job["isolate"])
    if verdict is None:
        try:
            result = _loads(output)
            if not isinstance(result, dict):
                raise ValueError
        except (ValueError, RecursionError, StopIteration):
            result = {"error": _exit_reason(status, stderr) if not output else "malformed runner output"}
        if job["probes"] is None:
            passed, verdict = ("done" in result and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), None
            verdict = "ok" if passed else result.get("error") or _exit_reason(status, stderr)
        else:
            checks = marshal.loads(_read_rest(0))
            passed, verdict = _judge(checks, result, len(job["probes"]))
    else:
        passed = False
    sys.stdout.write('{"passed": %s, "reason": %s}\n' % ("true" if passed else "false", _quote(str(verdict)[:REASON_CHARS])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
