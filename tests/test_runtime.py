"""t2diff.runtime: the allocator setting is applied once, can be switched off, and says what it did."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = ("from t2diff import runtime; print(runtime.allocator_state()); print(runtime.tune_allocator()); "
        "print(runtime.tune_allocator()); print(runtime.allocator_state())")


def _run(env_value: str | None) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "T2DIFF_ALLOCATOR"}
    if env_value is not None:
        env["T2DIFF_ALLOCATOR"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_once_and_reported() -> None:
    before, first, second, after = _run(None)
    assert before.startswith("default (tune_allocator not called)")
    assert first == second == "True"  # idempotent
    assert after.startswith("tuned")


def test_switched_off_by_the_environment() -> None:
    _, first, _, after = _run("default")
    assert first == "False" and after == "default (T2DIFF_ALLOCATOR=default)"
