"""Real DDP: a 2-process torchrun (gloo, CPU) on the real KuaiRand subset matches a single-process run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from t2diff.distributed import DistContext, shard

# dropout off so the only differences left are floating-point summation order and per-rank loss averaging
CFG = ["data.max_len=20", "model.hidden=32", "model.num_blocks=1", "model.ffn_dim=64", "model.dropout=0.0",
       "model.emb_dropout=0.0", "train.epochs=2", "train.batch_size=256", "train.lr=0.003", "train.threads=1",
       "eval.ks=[10,50]"]
# stated tolerance: absolute difference of Recall@50 / NDCG@10 between 1 and 2 processes
TOLERANCE = 0.01


def test_shard_covers_and_pads_evenly():
    n = 11
    parts = [shard(n, DistContext(rank=r, world=3)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    assert set(sum((p.tolist() for p in parts), [])) == set(range(n))
    # batch k across ranks is batch k of one process: interleaved indices
    assert parts[0][:2].tolist() == [0, 3] and parts[1][:2].tolist() == [1, 4]


def _torchrun(args: list[str], run_dir: Path, env: dict[str, str], timeout: int) -> None:
    """``torchrun --nproc_per_node=2 -m t2diff.cli ARGS --run-dir RUN_DIR`` on a free port, with one retry: a rank
    has aborted at exit under a loaded 2-core machine ("terminate called without an active exception", seen in CI
    and in a local run beside three trainings, never on a quiet one); a second failure is a real one."""
    for _attempt in range(2):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        shutil.rmtree(run_dir, ignore_errors=True)
        ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              f"--master_port={port}", "-m", "t2diff.cli", *args, "--run-dir", str(run_dir)],
                             env=env, capture_output=True, text=True, timeout=timeout)
        if ddp.returncode == 0:
            return
    assert ddp.returncode == 0, ddp.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes_matches_single(kuairand_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = sys.executable
    prep = [py, "-m", "t2diff.cli", "prepare", "kuairand", "--data-dir", str(kuairand_dir.parents[2]),
            "--out", str(tmp_path / "kr")]
    subprocess.run(prep, check=True, env=env, capture_output=True)
    common = ["train", "--no-progress", f"data.path={tmp_path / 'kr'}", *CFG]
    single = subprocess.run([py, "-m", "t2diff.cli", *common, "--run-dir", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    _torchrun(common, tmp_path / "two", env, timeout=600)
    one = json.loads(Path(tmp_path / "one" / "metrics.json").read_text())
    two = json.loads(Path(tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["test"]["num_examples"] == two["test"]["num_examples"] == 6441
    for k in ("recall@50", "ndcg@10"):
        assert abs(one["test"][k] - two["test"][k]) <= TOLERANCE, (k, one["test"][k], two["test"][k])
    # learned something real (random would be about 50 / 3991 for recall@50)
    assert two["test"]["recall@50"] > 3 * 50 / 3991
    # rank 0 alone wrote the log: one line per epoch
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_torchrun_two_processes_with_sparse_item_updates(synthetic_prepared, tmp_path):
    """Row-sparse item gradients go through DDP's allreduce (gloo) and LazyAdam: the 2-process run trains and
    ends close to the 1-process run with the same negatives (ranks draw from the same seeded stream)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = sys.executable
    common = ["train", "--no-progress", f"data.path={synthetic_prepared}", *CFG, "train.batch_size=32",
              "train.epochs=3", "train.loss=sampled", "train.negative_sampler=uniform", "train.num_negatives=16",
              "train.item_updates=sparse"]
    single = subprocess.run([py, "-m", "t2diff.cli", *common, "--run-dir", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    _torchrun(common, tmp_path / "two", env, timeout=300)
    one = json.loads(Path(tmp_path / "one" / "metrics.json").read_text())
    two = json.loads(Path(tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["item_updates"] == one["item_updates"] == "train.item_updates=sparse"
    assert abs(one["test"]["ndcg@10"] - two["test"]["ndcg@10"]) <= 0.05
