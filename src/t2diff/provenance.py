"""Where a results file came from: the command, commit and machine that made it, written into the file itself.

Every report committed under benchmarks/results/ must be regenerable from the repository, so each writer calls
:func:`provenance` once, at start (before it writes anything: its own output files are tracked, and would
otherwise mark the tree dirty), and writes through :func:`write_markdown` / :func:`write_json` /
:func:`write_csv`, which put that record at the top of the file::

    prov = provenance()                        # the command line is sys.orig_argv
    ...measure...
    write_json(out / "x.json", {"results": rows}, prov)
    write_markdown(out / "x.md", "# Title\\n\\n| table |", prov)

Only the standard library is imported: a benchmark's measurements must not change because provenance was
recorded (importing torch next to faiss, for one, changes which OpenMP runtime is loaded).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

VENV_PYTHON = ".venv/bin/python"  # how the repository's commands name the interpreter (README, benchmarks)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def repo_root(start: str | Path | None = None) -> Path:
    """The git work tree holding ``start`` (default: the current directory), else ``start`` itself."""
    start = Path(start or Path.cwd()).resolve()
    top = _git(["rev-parse", "--show-toplevel"], start)
    return Path(top) if top else start


def git_commit(repo: str | Path | None = None) -> str:
    """``git rev-parse --short HEAD``, with "+dirty" when tracked files have uncommitted changes (staged or not;
    untracked files do not count). "unknown" outside a git work tree."""
    root = repo_root(repo)
    head = _git(["rev-parse", "--short", "HEAD"], root)
    if head is None:
        return "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    return head + ("+dirty" if status else "")


def _rel(arg: str, root: Path) -> str:
    """An absolute path inside the repository -> relative to its root (so the command runs in any checkout)."""
    if not os.path.isabs(arg):
        return arg
    try:
        return str(Path(arg).resolve().relative_to(root))
    except ValueError:
        return arg


def command_line(argv: Sequence[str] | None = None, script: str | Path | None = None,
                 repo: str | Path | None = None) -> str:
    """The command that is running, as one shell line to type at the repository root.

    Default: ``sys.orig_argv`` (interpreter options, ``-m module`` and all). A ``main(argv)`` called from Python
    passes its ``argv`` and ``script`` (``__file__``), since sys.argv is then some other program's. The
    interpreter is written as ``.venv/bin/python``; a console script of the environment (``.venv/bin/t2diff``)
    is written as itself; absolute paths inside the repository become relative to its root. Run from another
    directory, the line starts with ``cd DIR &&``."""
    root = repo_root(repo)
    if argv is None and script is None:
        words = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])[1:]
    else:
        words = [str(script if script is not None else sys.argv[0]),
                 *(list(argv) if argv is not None else sys.argv[1:])]
    # abspath, not resolve: .venv/bin/python is usually a symlink out of the environment
    console = bool(words) and not words[0].startswith("-") and (
        Path(os.path.abspath(words[0])).parent == Path(os.path.abspath(sys.executable)).parent)
    words = [_rel(w, root) for w in words]
    cwd = Path.cwd().resolve()
    inside = cwd == root or root in cwd.parents
    # the environment's bin folder, as seen from where the command runs (the repository root, normally)
    bin_dir = os.path.relpath(root / Path(VENV_PYTHON).parent, cwd) if inside else str(root / ".venv" / "bin")
    if console:  # e.g. the `t2diff` entry point: run by name, not as `python .venv/bin/t2diff`
        line = shlex.join([f"{bin_dir}/{Path(words[0]).name}", *words[1:]])
    else:
        line = shlex.join([f"{bin_dir}/python", *words])
    if cwd != root:
        line = f"cd {shlex.quote(os.path.relpath(cwd, root) if inside else str(cwd))} && {line}"
    return line


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU count and model, platform, Python and torch versions, load average now; the GPU when this process
    already imported torch and CUDA is available (torch is never imported here)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": _version("torch"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def provenance(argv: Sequence[str] | None = None, script: str | Path | None = None,
               repo: str | Path | None = None) -> dict[str, Any]:
    """{command, commit, machine, date (UTC)} of the running program; call it before writing any output."""
    return {"command": command_line(argv, script, repo), "commit": git_commit(repo), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine_line(m: Mapping[str, Any]) -> str:
    load = m.get("load_avg_at_start")
    parts = [f"{m.get('cpus')} CPUs ({m.get('cpu_model')})", *([f"GPU {m['gpu']}"] if m.get("gpu") else []),
             str(m.get("platform")), f"Python {m.get('python')}", f"torch {m.get('torch')}"]
    return ", ".join(parts) + (f"; load average {' / '.join(map(str, load))} (1/5/15 min) at start" if load else "")


def _code(s: str) -> str:
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def markdown_header(prov: Mapping[str, Any]) -> str:
    """The provenance block a Markdown report starts with (after its title)."""
    return "\n".join([
        f"> **Command:** {_code(prov['command'])}",
        f"> commit `{prov['commit']}`, {prov['date']}; {machine_line(prov['machine'])}",
    ]) + "\n"


def render_markdown(body: str, prov: Mapping[str, Any]) -> str:
    """``body`` with the provenance block after its first line when that is a "# " title, else on top."""
    head, sep, rest = body.partition("\n")
    if head.startswith("# "):
        return f"{head}\n\n{markdown_header(prov)}\n{rest.lstrip(chr(10))}".rstrip("\n") + "\n"
    return f"{markdown_header(prov)}\n{body}".rstrip("\n") + "\n"


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: one header row, then one row per sequence of cells (rendered with str)."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: str | Path, body: str, prov: Mapping[str, Any]) -> Path:
    p = _mkdir(Path(path))
    p.write_text(render_markdown(body, prov))
    return p


def write_json(path: str | Path, data: Mapping[str, Any], prov: Mapping[str, Any]) -> Path:
    """``{"provenance": prov, **data}``, indented; ``data`` must not have its own "provenance" key."""
    if "provenance" in data:
        raise ValueError("data already has a 'provenance' key")
    p = _mkdir(Path(path))
    p.write_text(json.dumps({"provenance": dict(prov), **data}, indent=2) + "\n")
    return p


def csv_comment_lines(prov: Mapping[str, Any]) -> list[str]:
    """The provenance as "# key: value" lines (read back with pandas.read_csv(..., comment="#"))."""
    return [f"# command: {prov['command']}", f"# commit: {prov['commit']}", f"# date: {prov['date']}",
            f"# machine: {machine_line(prov['machine'])}"]


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], prov: Mapping[str, Any],
              fieldnames: Sequence[str] | None = None) -> Path:
    """The rows as CSV under "# " provenance lines; columns: ``fieldnames``, else every key in first-seen order."""
    rows = list(rows)
    keys = list(fieldnames) if fieldnames is not None else list(dict.fromkeys(k for r in rows for k in r))
    p = _mkdir(Path(path))
    with p.open("w", newline="") as f:
        f.write("\n".join(csv_comment_lines(prov)) + "\n")
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return p
