"""Shared fixtures: the real data folder (tests needing it skip without it) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("T2DIFF_DATA_DIR", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present: {path} (set T2DIFF_DATA_DIR to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def ml1m_dir(data_dir: Path) -> Path:
    return _need(data_dir / "ml-1m")


@pytest.fixture(scope="session")
def kuairand_dir(data_dir: Path) -> Path:
    return _need(data_dir / "kuairand" / "KuaiRand-Pure" / "data")


def write_synthetic_log(path: Path, num_users: int = 60, num_items: int = 40, seed: int = 0,
                        min_len: int = 6, max_len: int = 30) -> Path:
    """A CSV log with string user ids and learnable structure (users walk through items in order)."""
    rng = np.random.default_rng(seed)
    rows = ["user,item,ts"]
    for u in range(num_users):
        n = int(rng.integers(min_len, max_len))
        start = int(rng.integers(0, num_items))
        step = 1 + u % 3
        t0 = 1_600_000_000 + int(rng.integers(0, 10_000))
        for k in range(n):
            item = (start + k * step) % num_items
            rows.append(f"u{u},i{item},{t0 + 60 * k}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory) -> Path:
    """The synthetic log prepared once per session through ``t2diff prepare`` (so its meta records the recipe).
    Read-only: a test that changes or deletes it must copy it first."""
    from t2diff.cli import main

    d = tmp_path_factory.mktemp("synthetic")
    log = write_synthetic_log(d / "log.csv")
    assert main(["prepare", "generic", "--input", str(log), "--user-col", "user", "--item-col", "item",
                 "--time-col", "ts", "--out", str(d / "prepared")]) == 0
    return d / "prepared"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test tensors are tiny: extra intra-op threads only wait at OpenMP barriers on a loaded 2-core machine
    (a 201x32 @ 32x8 matmul measured 17 ms with 2 threads vs 0.04 ms with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One tiny model per registered model (dotted overrides): small enough for a CPU test, every code path on.
TINY_MODEL: dict[str, list[str]] = {
    "sasrec": ["model.hidden=16", "model.num_blocks=1", "model.ffn_dim=32"],
    "t2diff": ["model.name=t2diff", "model.hidden=16", "model.diffusion.steps=3", "model.unet.levels=3",
               "model.attention.session_len=4", "model.attention.heads=2", "model.attention.ffn_dim=32",
               "model.attention.din_hidden=16", "model.attention.time_emb_dim=4", "model.attention.session_gap=30"],
    "caser": ["model.name=caser", "model.hidden=16", "model.window=4", "model.use_user=true"],
    "gru4rec": ["model.name=gru4rec", "model.embedding=16", "model.hidden=24"],
    "bert4rec": ["model.name=bert4rec", "model.hidden=16", "model.num_blocks=1", "model.ffn_dim=32"],
    "dat": ["model.name=dat", "model.embedding=16", "model.out_dim=16", "model.mlp_hidden=[24]"],
    "mamba4rec": ["model.name=mamba4rec", "model.hidden=16", "model.d_state=8"],
    "stosa": ["model.name=stosa", "model.hidden=16", "model.num_blocks=1", "model.num_heads=2", "model.ffn_dim=32"],
    "contrastvae": ["model.name=contrastvae", "model.hidden=16", "model.num_heads=2", "model.ffn_dim=32"],
    "diffurec": ["model.name=diffurec", "model.hidden=16", "model.num_blocks=1", "model.num_heads=2",
                 "model.ffn_dim=32", "model.steps=3"],
    "t2diff_causal": ["model.name=t2diff_causal", "model.hidden=16", "model.num_blocks=1", "model.num_heads=2",
                      "model.ffn_dim=32", "model.session_len=4", "model.steps=5", "model.denoiser_hidden=32"],
}
TINY_TRAIN = ["data.max_len=12", "train.batch_size=16", "train.lr=0.005", "eval.ks=[5,10]", "train.epochs=1",
              "train.threads=1"]
TINY_SASREC = [*TINY_MODEL["sasrec"], *TINY_TRAIN]  # a SASRec that trains in about a second on the synthetic log


def load_benchmark(name: str):  # -> the module benchmarks/<name>.py (scripts, not a package)
    """Import a script under benchmarks/ by its file name, for tests of its functions and its ``main``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_config(prepared: Path, model: str = "sasrec", *extra: str):  # -> ExperimentConfig
    """The tiny config of ``model`` on a prepared dataset; ``extra`` overrides come last."""
    from t2diff.config import load_config

    return load_config(None, [f"data.path={prepared}", *TINY_MODEL[model], *TINY_TRAIN, *extra])


def train_tiny_run(folder: Path) -> Path:
    """Prepare the synthetic log (string ids, timestamps) under ``folder`` and train TINY_SASREC; the run dir."""
    from t2diff.data.generic import ColumnSpec, read_interactions
    from t2diff.data.prepare import FilterSpec, prepare
    from t2diff.train import Trainer

    log = write_synthetic_log(folder / "log.csv")
    prepare(read_interactions(log, ColumnSpec(user="user", item="item", time="ts")), folder / "prepared",
            FilterSpec(), "generic")
    Trainer(tiny_config(folder / "prepared"), folder / "run", progress=False, log=lambda s: None).fit()
    return folder / "run"



@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained SASRec run (TINY_SASREC on the synthetic log), one per test module that asks for it."""
    return train_tiny_run(tmp_path_factory.mktemp("tinyrun"))
