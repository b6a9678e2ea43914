"""The code sandbox: the probe/check split, the judge's semantics, OS isolation, and hostile programs."""

from __future__ import annotations

import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from hangguard import hang_guard

from corpmerge.rewards import mbpp, sandbox
from corpmerge.rewards.checks import UnsupportedTest, split_tests
from corpmerge.rewards.sandbox import SELF_TEST, SandboxUnavailable, remove_tree, run_python, run_tests

HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.py"))
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
SECRET = "hf_secret_token_do_not_leak"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="OS isolation needs root (namespaces, chroot, uid switch)")


# --- the split ---------------------------------------------------------------------------------


def test_split_keeps_comparisons_and_expected_values_with_the_judge():
    split = split_tests(
        "import math",
        "def area(r):\n    return 3.14 * r * r",
        ["assert math.isclose(area(2), 12.56, rel_tol=0.001)", "assert round(area(1), 2) == 3.14", "assert not area(0)"],
    )
    assert split.probes == ["area(2)", "area(1)", "area(0)"] and split.names[2] == "_corpmerge_probe_2"
    assert split.checks == ["math.isclose(_corpmerge_probe_0, 12.56, rel_tol=0.001)", "round(_corpmerge_probe_1, 2) == 3.14", "not _corpmerge_probe_2"]
    assert not any("12.56" in p for p in split.probes)


def test_split_probes_are_the_smallest_pieces_that_need_the_candidate():
    split = split_tests(
        "root = [1, [2]]",
        "class Stack:\n    pass\ndef depth(t):\n    return 2",
        ["assert Stack([1, 2]).pop() == 2", "assert depth(root)[0] == 2", "assert sorted(depth(root), key=lambda t: -t) == [2]"],
    )
    assert split.probes == ["Stack([1, 2]).pop()", "depth(root)", "depth(root)"]
    assert split.checks[1] == "_corpmerge_probe_1[0] == 2"
    assert split.checks[2] == "sorted(_corpmerge_probe_2, key=lambda t: -t) == [2]"


def test_split_names_the_candidate_binds_override_builtins_and_modules():
    split = split_tests(
        "", "import math\nsorted = lambda xs: xs\ndef f():\n    return [2, 1]", ["assert sorted(f()) == [2, 1]", "assert math.floor(f()[0]) == 2"]
    )
    assert split.probes == ["sorted(f())", "f()"]  # the candidate's `sorted`, as when the asserts ran with its code
    assert split.modules == ["math"]  # `import math` binds the standard module: the judge imports its own


@pytest.mark.parametrize("test", ["assert all(f(i) == i for i in range(3))", "f(1) == 1", "x = f(1)", "assert (y := f(1))"])
def test_split_refuses_what_it_cannot_judge(test):
    with pytest.raises(UnsupportedTest):
        split_tests("", "def f(x):\n    return x", [test])


def test_split_reports_candidate_syntax_errors():
    with pytest.raises(SyntaxError):
        split_tests("", "def f(:", ["assert f() == 1"])
    with pytest.raises(SyntaxError):
        split_tests("", "x = 1\0", ["assert x == 1"])


# --- the judge's semantics (same verdicts as running the asserts after the code) ---------------

JUDGED = [
    # (setup, tests, a right program, a wrong one)
    ("import math", ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"], "def area(r):\n    return 3.14159 * r * r", "def area(r):\n    return 12"),
    ("", ["assert set(common([1, 2], [2, 3])) == set([2])"], "def common(a, b):\n    return [x for x in a if x in b]", "def common(a, b):\n    return a"),
    ("", ["assert is_even(2)", "assert not is_even(3)"], "def is_even(n):\n    return n % 2 == 0", "def is_even(n):\n    return True"),
    (
        "",
        ["assert count('aab') == {'a': 2, 'b': 1}"],
        "from collections import Counter\ndef count(s):\n    return Counter(s)",
        "def count(s):\n    return {'a': 1}",
    ),
    ("", ["assert list(evens(5)) == [0, 2, 4]"], "def evens(n):\n    yield from range(0, n, 2)", "def evens(n):\n    yield from range(n)"),
    (
        "",
        ["assert evens(5) == [0, 2, 4]"],  # a generator is not equal to a list, there as here
        "def evens(n):\n    return list(range(0, n, 2))",
        "def evens(n):\n    return (x for x in range(0, n, 2))",
    ),
    (
        "",
        ["assert pair() == (1, 2)"],
        "from collections import namedtuple\nP = namedtuple('P', 'a b')\ndef pair():\n    return P(1, 2)",
        "def pair():\n    return [1, 2]",
    ),
    ("", ["assert Stack([1, 2]).pop() == 2"], "class Stack(list):\n    pass", "class Stack(list):\n    def pop(self):\n        return 1"),
    (
        "root = [1, [2, [3]]]",
        ["assert depth(root) == 3"],
        "def depth(t):\n    return 1 + max([depth(x) for x in t if isinstance(x, list)], default=0)",
        "def depth(t):\n    return len(t)",
    ),
    ("", ["assert list(keys({'b': 1, 'a': 2})) == ['b', 'a']"], "def keys(d):\n    return d.keys()", "def keys(d):\n    return sorted(d)"),
    (
        "",
        ["assert nxt() == 1", "assert nxt() == 2"],  # asserts run in order against the same program state
        "n = 0\ndef nxt():\n    global n\n    n += 1\n    return n",
        "def nxt():\n    return 1",
    ),
    (
        "",
        ["assert f(0) is None or g(0) == 1"],  # a probe that raises only fails the test if the test gets to it
        "def f(x):\n    return None\ndef g(x):\n    raise ValueError",
        "def f(x):\n    return 0\ndef g(x):\n    raise ValueError",
    ),
    ("import math", ["assert math.isinf(big()) and big() > 0"], "def big():\n    return float('inf')", "def big():\n    return 10.0 ** 300"),
    ("", ["assert half(3) == Fraction(3, 2)"], "from fractions import Fraction\ndef half(x):\n    return Fraction(x, 2)", "def half(x):\n    return x // 2"),
]


@pytest.fixture
def opted_in():
    """Programs run even where isolation is unavailable (a non-root developer machine)."""
    sandbox.allow_unsandboxed(True)
    yield
    sandbox.allow_unsandboxed(False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(("setup", "tests", "right", "wrong"), JUDGED, ids=[t[1][0][7:40] for t in JUDGED])
def test_judge_agrees_with_running_the_asserts(setup, tests, right, wrong, opted_in):
    for program, expected in ((right, True), (wrong, False)):
        bare = subprocess.run([sys.executable, "-I", "-S", "-c", "\n".join([setup, program, *tests])], capture_output=True, timeout=30)
        assert (bare.returncode == 0) is expected, bare.stderr  # the reference: asserts run after the code
        result = run_tests(setup, program, tests, wall_seconds=5)
        assert result.passed is expected, result.reason


# --- isolation -------------------------------------------------------------------------------


@needs_root
def test_isolation_works_here():
    assert sandbox.isolation_problem() is None
    result = run_python(f"HOST_FILE = {__file__!r}\n{SELF_TEST}")  # uid 65534, pid 1, only `lo`, read-only view, no fork
    assert result.passed, result.reason


@needs_root
def test_program_sees_a_scrubbed_environment_and_a_private_tmp(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    result = run_python(
        "import os\nassert 'HF_TOKEN' not in os.environ and os.getcwd() == '/tmp' and os.listdir('.') == []\n"
        f"assert not os.path.exists({os.getcwd()!r}) and not os.path.exists({str(Path(__file__).parent)!r})\n"
        "assert set(os.listdir('/')) <= {'bin', 'dev', 'etc', 'lib', 'lib32', 'lib64', 'libx32', 'root', 'sbin', 'tmp', 'usr'}"
    )
    assert result.passed, result.reason


def test_without_isolation_code_runs_only_after_the_opt_in(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "no namespaces here")
    sandbox.allow_unsandboxed(False)
    for run in (
        lambda: run_tests("", "def add(a, b):\n    return a + b", ADD_TESTS),
        lambda: run_python("pass"),
        lambda: mbpp.score("<answer>def add(a, b):\n    return a + b</answer>", "", ADD_TESTS),
    ):
        with pytest.raises(SandboxUnavailable) as caught:
            run()
        message = str(caught.value)
        assert "\n" not in message and "no namespaces here" in message and "scoring.allow_unsandboxed_code: true" in message
    sandbox.allow_unsandboxed(True)
    try:
        with pytest.warns(RuntimeWarning, match="WITHOUT OS isolation"):
            assert run_tests("", "def add(a, b):\n    return a + b", ADD_TESTS).passed
    finally:
        sandbox.allow_unsandboxed(False)


def test_isolation_problem_names_the_missing_privilege(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    sandbox.isolation_problem.cache_clear()
    try:
        assert "needs root" in sandbox.isolation_problem()
    finally:
        sandbox.isolation_problem.cache_clear()


@pytest.mark.parametrize("isolate", [pytest.param(True, marks=needs_root), False])
def test_the_program_dies_with_its_judge(isolate, tmp_path):
    """If the judge is killed (the parent's backstop does that), nothing it started lives on."""
    job = sandbox._job("import time\ntime.sleep(1000)", "", None, isolate=isolate, wall=60, cpu=5, memory=1 << 30)
    job["workdir"] = str(tmp_path)  # unisolated, the parent makes (and removes) the program's folder
    head = marshal.dumps(job)
    judge = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(sandbox._JAIL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=sandbox._ENV,
        start_new_session=True,
    )
    try:
        judge.stdin.write(b"%010d" % len(head) + head)
        judge.stdin.close()
        children = []
        for _ in range(500):  # until the runner has its own session: everything before the program is done
            children = Path(f"/proc/{judge.pid}/task/{judge.pid}/children").read_text().split()
            if children and _stat(children[0])[3] == children[0]:
                break
            time.sleep(0.01)
        assert children, "the judge started no runner"
    finally:
        os.killpg(judge.pid, signal.SIGKILL)
        judge.wait()

    for _ in range(200):
        if _stat(children[0])[0] in ("Z", "gone"):
            break
        time.sleep(0.01)
    assert _stat(children[0])[0] in ("Z", "gone")


def _stat(pid: str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return ["gone", "", "", ""]


# --- hostile programs (tests/hostile/) ------------------------------------------------------


class Listener:
    """A TCP server on the host's loopback that records every connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port, self.connections, self.stop = self.sock.getsockname()[1], [], threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn.recv(100))
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def host(monkeypatch):
    """A victim directory anyone could write, a loopback listener, a marker name and a secret in the environment."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    victim = Path(tempfile.mkdtemp(prefix="corpmerge-victim-", dir="/tmp"))
    (victim / "keep.txt").write_text("precious")
    victim.chmod(0o777)
    (victim / "keep.txt").chmod(0o666)
    listener = Listener()
    marker = f"corpmerge-hostile-{uuid.uuid4().hex}"
    setup = f"TARGET = {str(victim)!r}\nPORT = {listener.port}\nMARKER = {marker!r}"
    yield setup, victim, listener, marker
    listener.close()
    shutil.rmtree(victim, ignore_errors=True)
    for directory in ("/tmp", "/var/tmp", "/dev/shm"):
        Path(directory, marker).unlink(missing_ok=True)


def _host_untouched(victim: Path, listener: Listener, marker: str) -> None:
    assert sorted(os.listdir(victim)) == ["keep.txt"] and (victim / "keep.txt").read_text() == "precious"
    assert listener.connections == []
    assert not any(Path(d, marker).exists() for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"))


@needs_root
@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_program_fails_and_leaves_the_host_alone(path, host):
    setup, victim, listener, marker = host
    result = run_tests(setup, path.read_text(), ADD_TESTS, wall_seconds=1, cpu_seconds=1)
    assert not result.passed, result.reason
    assert SECRET not in result.reason and "precious" not in result.reason
    _host_untouched(victim, listener, marker)


def _bare(setup: str, program: str, workdir: Path, tests: list[str] = ()) -> subprocess.CompletedProcess:
    """The program with its asserts as one plain process, judged by exit status: what a sandbox replaces."""
    (workdir / "program.py").write_text("\n".join([setup, program, *tests]) + "\n")
    return subprocess.run([sys.executable, "program.py"], cwd=workdir, capture_output=True, timeout=30)


FOOL_EXIT_STATUS = [
    "cheat_sys_exit",
    "cheat_os_exit",
    "cheat_exit_in_function",
    "cheat_hooks",
    "cheat_rigged_eq",
    "cheat_rigged_int",
    "cheat_reads_tests",
    "cheat_fake_output",
    "cheat_exec",
]


@pytest.mark.parametrize("name", FOOL_EXIT_STATUS)
def test_control_cheats_fool_exit_status_judging(name, host, tmp_path):
    setup = host[0]
    assert _bare(setup, (HOSTILE[0].parent / f"{name}.py").read_text(), tmp_path, ADD_TESTS).returncode == 0


def test_control_host_attacks_work_without_a_sandbox(host, tmp_path):
    setup, victim, listener, marker = host
    read = _bare(setup, (HOSTILE[0].parent / "host_read_secrets.py").read_text(), tmp_path)
    assert SECRET.encode() in read.stderr and b"precious" in read.stderr
    _bare(setup, (HOSTILE[0].parent / "host_network.py").read_text(), tmp_path)
    _bare(setup, (HOSTILE[0].parent / "host_rm_rf.py").read_text(), tmp_path)
    assert listener.connections and not victim.exists()


@pytest.mark.parametrize("name", [n for n in FOOL_EXIT_STATUS if n != "cheat_reads_tests"] + ["cheat_patch_builtins"])
def test_cheats_fail_without_isolation_too(name, host, opted_in, monkeypatch):
    """The judge does not depend on isolation (reading the tests through /proc does: see the module docstring)."""
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "testing the unisolated path")
    with pytest.warns(RuntimeWarning):
        result = run_tests(host[0], (HOSTILE[0].parent / f"{name}.py").read_text(), ADD_TESTS, wall_seconds=5)
    assert not result.passed, result.reason


# --- what a program leaves behind (issue #13 item 3) ------------------------------------------

LEAVES_TRAPS = ["host_fifo_output", "host_deep_tree", "host_undeletable"]
HANG_GUARD = 20.0  # seconds; these runs take well under one (a hang check, not a benchmark)


@pytest.fixture
def scratch(monkeypatch):
    """The temporary-files folder for this test (on a tmpfs when there is one: removing thousands of
    folders is slow on some disks); asserted empty by the tests, removed afterwards in any case."""
    path = tempfile.mkdtemp(prefix="corpmerge-scratch-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield Path(path)
    remove_tree(path)


def _chattr(path: Path, flag: int) -> bool:
    """Set an inode flag (0x10 immutable, 0x20 append-only) as chattr does; False where not allowed."""
    import fcntl
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, 0x80086601, bytes(4)))[0]
            fcntl.ioctl(fd, 0x40086602, struct.pack("i", flags | flag))
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _deep(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)


def test_remove_tree_removes_traps_without_following_them(scratch):
    top, outside = scratch / "work", scratch / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    top.mkdir()
    _deep(top, 3000)  # deeper than recursion (1000) and PATH_MAX (4096 bytes) allow
    os.mkfifo(top / "fifo")
    (top / "zero").symlink_to("/dev/zero")
    (top / "escape").symlink_to(outside)
    (top / "locked" / "inner").mkdir(parents=True)
    (top / "locked" / "inner" / "file").write_text("x")
    (top / "locked" / "inner").chmod(0)
    (top / "locked").chmod(0)
    (top / ".corpmerge-rm-1" / "x").mkdir(parents=True)  # a folder under the remover's own first name
    (top / "pinned").mkdir()
    for name in ("immutable", "append", "pinned/file"):
        (top / name).write_text("x")
    pinned = _chattr(top / "immutable", 0x10) & _chattr(top / "append", 0x20) & _chattr(top / "pinned", 0x10)
    assert pinned or not ROOT  # root (this tree's owner) can pin files here, so the remover must unpin them
    with hang_guard(HANG_GUARD):
        remove_tree(str(top))
    assert not os.path.lexists(top)
    assert (outside / "keep.txt").read_text() == "precious"


@needs_root
def test_remove_tree_as_an_ordinary_user_gives_folders_back_their_permissions(scratch):
    """Unisolated on a developer machine, the program and the remover share a uid that is not root."""
    os.chown(scratch, sandbox.SANDBOX_UID, sandbox.SANDBOX_UID)
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.setgid(sandbox.SANDBOX_UID)
            os.setuid(sandbox.SANDBOX_UID)
            top = scratch / "work"
            (top / "locked" / "inner" / "deeper").mkdir(parents=True)
            (top / "locked" / "inner" / "deeper" / "file").write_text("x")
            (top / "read-only" / "sub").mkdir(parents=True)
            for path, mode in (("locked/inner/deeper", 0), ("locked/inner", 0), ("locked", 0), ("read-only/sub", 0o500), ("read-only", 0o500), ("", 0o500)):
                (top / path).chmod(mode)
            remove_tree(str(top))
            code = 2 if os.path.lexists(top) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_remove_tree_never_raises_and_never_follows(scratch):
    folder = scratch / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    (scratch / "link").symlink_to(folder)
    os.mkfifo(scratch / "fifo")
    (scratch / "file").write_text("x")
    for name in ("missing", "link", "fifo", "file"):
        remove_tree(str(scratch / name))
        assert not os.path.lexists(scratch / name)
    assert (folder / "keep.txt").read_text() == "precious"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", LEAVES_TRAPS)
def test_unisolated_runs_survive_traps_and_leave_no_folder(name, host, opted_in, scratch, monkeypatch):
    """FIFOs and /dev/zero links where output might be read, 3,000 nested folders, pinned and
    permissionless files: the verdict still comes back, nothing raises, the program's folder is gone."""
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "testing the unisolated path")
    with hang_guard(HANG_GUARD):
        result = run_tests(host[0], (HOSTILE[0].parent / f"{name}.py").read_text(), ADD_TESTS, wall_seconds=5)
    assert not result.passed and result.reason == "test 1 failed"
    assert os.listdir(scratch) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_unisolated_folder_is_removed_when_the_backstop_kills_the_judge(opted_in, scratch, monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "testing the unisolated path")
    monkeypatch.setattr(sandbox, "_GRACE_SECONDS", -4.5)  # the parent gives up 0.5 s in, before the judge does
    result = run_python("import os, time\nos.mkdir('left')\nopen('left/behind', 'w').write('x')\ntime.sleep(100)", wall_seconds=5)
    assert result == sandbox.SandboxResult(False, "timeout")
    assert os.listdir(scratch) == []
