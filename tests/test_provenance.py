"""t2diff.provenance: the command line, commit (+dirty) and machine written into every results file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from t2diff import provenance as pv


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                   cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    r = tmp_path / "repo"
    (r / "benchmarks").mkdir(parents=True)
    (r / "tracked.txt").write_text("a\n")
    _git(r, "init", "-q")
    _git(r, "add", "tracked.txt")
    _git(r, "commit", "-q", "-m", "first")
    monkeypatch.chdir(r)
    return r


def _prov(**machine: object) -> dict:
    m = {"cpus": 2, "cpu_model": "Test CPU", "platform": "Linux-x", "python": "3.11.7", "torch": "2.0",
         "load_avg_at_start": [0.5, 0.25, 0.1], **machine}
    return {"command": ".venv/bin/python benchmarks/b.py --k 5", "commit": "abc1234+dirty", "machine": m,
            "date": "2026-01-02T03:04:05Z"}


def test_command_from_argv_and_script(repo: Path) -> None:
    cmd = pv.command_line(["--n", "5", "--out", str(repo / "benchmarks" / "results"), "a b", "/elsewhere/x"],
                          script=repo / "benchmarks" / "bench.py")
    # interpreter as .venv/bin/python, repository paths relative to its root, others kept, shell quoting
    assert cmd == ".venv/bin/python benchmarks/bench.py --n 5 --out benchmarks/results 'a b' /elsewhere/x"


def test_command_from_orig_argv(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["/usr/local/bin/python3.11", "-u", "benchmarks/b.py", "--k", "5"])
    assert pv.command_line() == ".venv/bin/python -u benchmarks/b.py --k 5"
    monkeypatch.setattr(sys, "orig_argv", ["/x/python", "-m", "t2diff.cli", "compare", "--out", "runs/c"])
    assert pv.command_line() == ".venv/bin/python -m t2diff.cli compare --out runs/c"
    console = str(Path(sys.executable).parent / "t2diff")  # an entry point of the running environment
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, console, "train", "-c", "configs/x.yaml"])
    assert pv.command_line() == ".venv/bin/t2diff train -c configs/x.yaml"


def test_command_from_a_subfolder_says_where(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo / "benchmarks")
    monkeypatch.setattr(sys, "orig_argv", ["/x/python", "b.py"])
    assert pv.command_line() == "cd benchmarks && ../.venv/bin/python b.py"


def test_commit_and_dirty_flag(repo: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True).stdout.strip()
    assert pv.git_commit(repo) == head
    (repo / "new_untracked.txt").write_text("x")  # untracked files do not make the tree dirty
    assert pv.git_commit(repo) == head
    (repo / "tracked.txt").write_text("b\n")
    assert pv.git_commit(repo) == head + "+dirty"
    _git(repo, "add", "tracked.txt")  # staged but not committed: still dirty
    assert pv.git_commit(repo) == head + "+dirty"
    _git(repo, "commit", "-q", "-m", "second")
    assert pv.git_commit(repo) not in (head, head + "+dirty") and not pv.git_commit(repo).endswith("+dirty")


def test_commit_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above tmp_path
    (tmp_path / "plain").mkdir()
    assert pv.git_commit(tmp_path / "plain") == "unknown"


def test_provenance_record(repo: Path) -> None:
    p = pv.provenance(["--k", "5"], script=repo / "benchmarks" / "b.py")
    assert set(p) == {"command", "commit", "machine", "date"}
    assert p["command"] == ".venv/bin/python benchmarks/b.py --k 5" and not p["commit"].endswith("+dirty")
    m = p["machine"]
    assert m["cpus"] >= 1 and m["cpu_model"] and m["python"] == ".".join(map(str, sys.version_info[:3]))
    assert len(m["load_avg_at_start"]) == 3 and p["date"].endswith("Z")
    json.dumps(p)  # plain JSON


def test_markdown_header_after_the_title(tmp_path: Path) -> None:
    body = "# Title\n\n| a |\n|---|\n| 1 |"
    text = pv.write_markdown(tmp_path / "r.md", body, _prov()).read_text()
    lines = text.splitlines()
    assert lines[0] == "# Title" and lines[1] == ""
    assert lines[2] == "> **Command:** `.venv/bin/python benchmarks/b.py --k 5`"
    assert lines[3].startswith("> commit `abc1234+dirty`, 2026-01-02T03:04:05Z; 2 CPUs (Test CPU), Linux-x, ")
    assert "Python 3.11.7, torch 2.0; load average 0.5 / 0.25 / 0.1" in lines[3]
    assert text.endswith("| a |\n|---|\n| 1 |\n")
    untitled = pv.render_markdown("| a |", _prov(gpu="NVIDIA H200"))
    assert untitled.startswith("> **Command:**") and "GPU NVIDIA H200" in untitled and untitled.endswith("| a |\n")
    assert "`` echo `x` ``" in pv.markdown_header({**_prov(), "command": "echo `x`"})


def test_json_and_csv_reports(tmp_path: Path) -> None:
    d = json.loads(pv.write_json(tmp_path / "r.json", {"rows": [1, 2]}, _prov()).read_text())
    assert list(d) == ["provenance", "rows"] and d["provenance"]["commit"] == "abc1234+dirty"
    with pytest.raises(ValueError, match="provenance"):
        pv.write_json(tmp_path / "bad.json", {"provenance": 1}, _prov())
    rows = [{"run": "a", "x": 0.5}, {"run": "b", "y": 2}]
    path = pv.write_csv(tmp_path / "sub" / "r.csv", rows, _prov())
    assert path.read_text().startswith("# command: .venv/bin/python benchmarks/b.py --k 5\n# commit: abc1234+dirty\n")
    df = pd.read_csv(path, comment="#")
    assert list(df.columns) == ["run", "x", "y"] and df["run"].tolist() == ["a", "b"]


def test_markdown_table():
    from t2diff.provenance import markdown_table

    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"
