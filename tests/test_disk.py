"""Disk space, for real: small tmpfs mounts (root only), an output that cannot fit, a disk that fills while writing.

Each mount lives under pytest's temporary folder and is unmounted at teardown.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe

from corpmerge.errors import CorpmergeError
from corpmerge.recipe import parse_recipe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)`` → a fresh tmpfs of ``size`` bytes; every mount is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: int, name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Write a file that leaves about ``leave`` bytes free on ``folder``'s file system."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def sizes_in(line: str) -> tuple[float, float]:
    units = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    need, free = re.findall(r"([\d.]+) (bytes|kB|MB|GB)", line)[:2]
    return float(need[0]) * units[need[1]], float(free[0]) * units[free[1]]


def test_validate_merge_and_run_refuse_an_output_bigger_than_the_free_space(tmp_path, tmpfs, tiny_model, tiny_task):
    disk = tmpfs(1 << 20)  # the tiny model's folder needs ~2.2 MB with the card/report allowance
    recipe = write_recipe(tmp_path, given_rewards_recipe(tiny_model, disk / "out"))
    line = one_error_line(run_cli("-q", "validate", str(recipe)))
    assert "output.path:" in line and "needs about" in line and "are free on" in line and "choose another output.path" in line
    need, free = sizes_in(line)
    assert need > free and abs(free - os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) < 0.1e6
    assert one_error_line(run_cli("-q", "merge", str(recipe))) == line  # before loading weights
    assert sorted(os.listdir(disk)) == []  # nothing was made there

    scored = write_recipe(
        tmp_path, scoring_recipe(tiny_model, tiny_task, disk / "run", output={"path": str(disk / "run"), "work_dir": str(tmp_path / "work")}), "run.yaml"
    )
    assert "needs about" in one_error_line(run_cli("-q", "run", str(scored)))  # before scoring: no store was made
    assert not (tmp_path / "work" / "scores.sqlite").exists() and sorted(os.listdir(disk)) == []

    roomy = tmpfs(16 << 20, "roomy")
    assert run_cli("-q", "validate", str(recipe), "-o", str(roomy / "out")).returncode == 0


def test_a_disk_that_fills_while_writing_leaves_nothing_half_written_and_the_previous_output_intact(tmp_path, tmpfs, tiny_model, monkeypatch):
    import corpmerge.output.space as space
    from corpmerge.merge import merge_recipe

    disk = tmpfs(1 << 20)
    monkeypatch.setattr(space, "free_bytes", lambda folder: 1 << 40)  # the check passes; the disk is still full
    recipe = parse_recipe(given_rewards_recipe(tiny_model, disk / "out"))
    merge_recipe(recipe)
    before = {p.name: p.read_bytes() for p in (disk / "out").iterdir()}
    fill(disk, 16 << 10)
    with pytest.raises(CorpmergeError) as failed:
        merge_recipe(recipe.model_copy(update={"parameters": {"quantile": 0.5, "beta": 1, "alpha": 1}}), overwrite=True)
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message and "nothing was written" in message
    assert sorted(os.listdir(disk)) == ["filler", "out"]  # no staging folder left behind
    assert {p.name: p.read_bytes() for p in (disk / "out").iterdir()} == before


def test_a_store_on_a_disk_that_fills_stops_in_one_line_and_stays_intact(tmp_path, tmpfs, tiny_model, tiny_task):
    disk = tmpfs(4 << 20)
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 24, "sigmas": [0.02, 0.05], "seed": 3})
    data["scoring"]["store"] = str(disk / "scores.sqlite")
    data["scoring"]["racing"] = {"enabled": False}
    recipe = write_recipe(tmp_path, data)
    reference = tmp_path / "reference.sqlite"
    first = run_cli("-q", "score", str(recipe))
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.copy(disk / "scores.sqlite", reference)
    for p in disk.iterdir():
        p.unlink()

    fill(disk, 256 << 10)  # room for the schema and a few units (the write-ahead log takes most of it)
    line = one_error_line(run_cli("-q", "score", str(recipe)))
    assert line.startswith("error: scoring.store: ") and "every evaluation finished before is kept" in line, line
    log = (tmp_path / "out.work" / "corpmerge.log").read_text()
    assert "Traceback" in log and "Traceback" not in line  # the traceback is in the log only
    with sqlite3.connect(disk / "scores.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        partial = dict(con.execute("SELECT subject, COUNT(*) FROM scores GROUP BY subject"))
    assert 0 < len(partial) < 25  # it failed part-way (24 entries and the base)
    (disk / "filler").unlink()
    again = run_cli("-q", "score", str(recipe))  # with space again it resumes: what was stored is kept
    assert again.returncode == 0, again.stderr[-2000:]
    with sqlite3.connect(disk / "scores.sqlite") as con, sqlite3.connect(reference) as ref:
        resumed = dict(con.execute("SELECT subject, COUNT(*) FROM scores GROUP BY subject"))
        rows = set(con.execute("SELECT subject, fold, task, doc_id, value, correct FROM scores"))
        assert rows == set(ref.execute("SELECT subject, fold, task, doc_id, value, correct FROM scores"))
    assert all(resumed[s] >= n for s, n in partial.items())
