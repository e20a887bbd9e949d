"""ONNX user tower: the export's equality check, onnxruntime vs PyTorch for every model (T2Diff's keyed noise
bit for bit), the onnx runtime of open_retriever, and the CLI."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("faiss")

from conftest import TINY_MODEL  # noqa: E402

from t2diff.batch import Batch  # noqa: E402
from t2diff.cli import main  # noqa: E402
from t2diff.diffusion.keyed_noise import keyed_normal, mix32, mix32_i32, row_keys  # noqa: E402
from t2diff.retrieval import onnx_tower  # noqa: E402
from t2diff.retrieval.export import ExportError, open_retriever  # noqa: E402
from t2diff.retrieval.onnx_tower import (  # noqa: E402
    OnnxError,
    OnnxUserTower,
    export_user_tower,
    load_onnx_tower,
    make_session,
)
from t2diff.retrieval.user_tower import UserTower  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def onnx_export(run: Path) -> Path:
    out = run.parent / "export-onnx"
    assert main(["export", str(run), "--out", str(out), "--onnx"]) == 0
    return out


def _tower(prepared: Path, overrides: list[str]) -> UserTower:
    """An untrained model on the synthetic prepared data (string ids, timestamps) as a UserTower."""
    from t2diff.config import load_config
    from t2diff.data.prepared import PreparedDataset
    from t2diff.run import build_model, data_info

    torch.manual_seed(0)
    cfg = load_config(None, [f"data.path={prepared}", "data.max_len=12", *overrides])
    ds = PreparedDataset.load(prepared)
    return UserTower(build_model(cfg, data_info(ds, cfg)), cfg, ds)


def _histories(tower: UserTower) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Every user's (history, timestamps, request time = last + 1 h): short ones stay shorter than max_len."""
    ds = tower.ds
    hists = [ds.history(u).tolist() for u in range(1, ds.num_users + 1)]
    times = [ds.times[ds.user_ptr[u - 1]: ds.user_ptr[u]].tolist() for u in range(1, ds.num_users + 1)]
    return hists, times, [t[-1] + 3600 for t in times]


def _sample(tower: UserTower, n: int = 16) -> Batch:
    h, t, r = _histories(tower)
    return Batch.from_histories(h[:n], tower.max_len, t[:n], r[:n])


def _onnx_tower(tower: UserTower, out: Path) -> tuple[OnnxUserTower, dict]:
    out.mkdir(parents=True)
    info = export_user_tower(tower, out, _sample(tower), log=lambda s: None)
    return OnnxUserTower(tower, make_session(out / onnx_tower.ONNX_FILE), info), info


# ---- T2Diff's keyed noise: the integer hash must be bit-identical ------------------------------------------
class _Hash(torch.nn.Module):
    def forward(self, x32: torch.Tensor, x64: torch.Tensor, seq: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keys = row_keys(seq, 12345)  # [B] int64, the int64 16-bit-halves path
        return mix32_i32(x32), mix32(x64), keys, x32 >> 7, keyed_normal(keys, 3, (seq.shape[1], 4))


def test_keyed_noise_hash_is_bit_identical_in_onnxruntime(tmp_path):
    """mix32_i32's int32 multiplications wrap mod 2^32 in onnxruntime as in PyTorch; >> floors on negative
    int32 (the default exporter's Div would truncate); the Box-Muller floats agree to an ulp or so."""
    g = torch.Generator().manual_seed(0)
    x32 = torch.cat([torch.tensor([0, 1, -1, 2**31 - 1, -(2**31), 0x7FEB352D, -0x7B93_5975], dtype=torch.int32),
                     torch.randint(-(2**31), 2**31, (4000,), generator=g, dtype=torch.int64).to(torch.int32)])
    x64 = torch.randint(0, 2**32, (4000,), generator=g, dtype=torch.int64)
    seq = torch.randint(0, 10**6, (300, 12), generator=g)
    seq[:50, :6] = 0
    path = tmp_path / "hash.onnx"
    with onnx_tower._hash_symbolics(onnx_tower.OPSET), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation, tracer constants
        torch.onnx.export(_Hash(), (x32[:5], x64[:5], seq[:2]), str(path), dynamo=False, opset_version=onnx_tower.OPSET,
                          input_names=["x32", "x64", "seq"],
                          dynamic_axes={"x32": {0: "n"}, "x64": {0: "n"}, "seq": {0: "b"}})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x32": x32.numpy(), "x64": x64.numpy(), "seq": seq.numpy()})
    want = [t.numpy() for t in _Hash()(x32, x64, seq)]
    for name, a, b in zip(["mix32_i32", "mix32", "row_keys", ">> 7"], got[:4], want[:4], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert np.abs(got[4] - want[4]).max() < 1e-5 and np.abs(want[4]).max() > 2  # same draws, float noise only


# ---- every model: onnxruntime == PyTorch, batch of one == row of a batch --------------------------------------
MODELS = TINY_MODEL


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_exports_and_matches_torch(name, synthetic_prepared, tmp_path):
    tower = _tower(synthetic_prepared, MODELS[name])
    onnx, info = _onnx_tower(tower, tmp_path / "out")
    assert info["check"]["max_abs_diff"] <= ATOL and info["check"]["rows"] == 17
    # time inputs exactly where the model reads time (T2Diff's lag feature and gap sessions)
    want_inputs = ["seq", "seq_time", "target_time"] if name == "t2diff" else ["seq"]
    assert [i["name"] for i in info["inputs"]] == want_inputs
    assert info["diffusion_steps"] == {"t2diff": 3, "t2diff_causal": 2, "diffurec": 3}.get(name)  # reverse steps

    hists, times, req = _histories(tower)
    hists, times, req = [*hists, []], [*times, []], [*req, req[0]]  # + an empty history
    ref = tower.embed(hists, times, req)  # [U + 1, D], histories longer and shorter than max_len
    many = onnx.embed(hists, times, req)
    assert many.dtype == np.float32 and many.shape == ref.shape
    assert np.abs(many - ref).max() <= ATOL
    for u in (0, 7, len(hists) - 1):  # a batch of one gives the row's vector in the batch
        one = onnx.embed([hists[u]], [times[u]], [req[u]])
        assert np.abs(one[0] - many[u]).max() <= 1e-6
    assert onnx.embed([]).shape == (0, ref.shape[1])


def test_t2diff_with_item_features_and_time(tmp_path):
    """Side features (absent from the synthetic log) and the time inputs wired into the graph."""
    from test_t2diff import make_batch, make_info, small_cfg

    from t2diff.models.t2diff import T2Diff

    torch.manual_seed(0)
    model = T2Diff(small_cfg(session_gap=3000, steps=2), make_info(has_time=True, features=True)).eval()
    tower = SimpleNamespace(model=model, uses_time=True, model_name="t2diff")  # the attributes the export reads
    batch = make_batch()
    info = export_user_tower(tower, tmp_path, batch, log=lambda s: None)
    assert info["check"]["max_abs_diff"] <= ATOL and [i["name"] for i in info["inputs"]][1:] == ["seq_time",
                                                                                                 "target_time"]
    sess = make_session(tmp_path / onnx_tower.ONNX_FILE)
    later = onnx_tower.serving_batch(batch.seq, batch.seq_time, batch.target_time + 10**7)
    out, ref = onnx_tower.run_session(sess, later), UserTower.embed_batch(tower, later)
    assert np.abs(out - ref).max() <= ATOL
    assert np.abs(out - onnx_tower.run_session(sess, onnx_tower.serving_batch(batch.seq, batch.seq_time,
                                                                               batch.target_time))).max() > 1e-4


def test_t2diff_without_eval_seed_is_refused(synthetic_prepared, tmp_path):
    tower = _tower(synthetic_prepared, [*MODELS["t2diff"], "model.eval_seed=null"])
    with pytest.raises(OnnxError, match="eval_seed"):
        export_user_tower(tower, tmp_path, _sample(tower), log=lambda s: None)


def test_mismatch_fails_the_export_and_leaves_no_file(synthetic_prepared, tmp_path, monkeypatch):
    tower = _tower(synthetic_prepared, MODELS["sasrec"])
    real = onnx_tower.run_session
    monkeypatch.setattr(onnx_tower, "run_session", lambda s, b: real(s, b) + 1e-4)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OnnxError, match=r"sasrec: onnxruntime's user vectors differ from PyTorch's by 0\.0001"):
        export_user_tower(tower, out, _sample(tower), log=lambda s: None)
    assert list(out.iterdir()) == []


# ---- export folder, retriever, CLI ----------------------------------------------------------------------------
def test_cli_export_writes_and_records_the_onnx_tower(run, onnx_export):
    meta = json.loads((onnx_export / "export.json").read_text())
    info = meta["onnx"]
    assert "user_tower.onnx" in meta["files"] and (onnx_export / "user_tower.onnx").is_file()
    assert info["opset"] == onnx_tower.OPSET and info["output"] == {"name": "user", "dtype": "float32",
                                                                    "shape": ["batch", meta["dim"]]}
    assert info["inputs"] == [{"name": "seq", "dtype": "int64", "shape": ["batch", 12]}]  # SASRec reads no time
    assert info["check"]["rows"] == 61 and info["check"]["batch_sizes"] == [60, 1]  # all 60 test users + 1
    assert 0 <= info["check"]["max_abs_diff"] <= ATOL
    assert info["versions"] == {"torch": torch.__version__, "onnx": __import__("onnx").__version__,
                                "onnxruntime": ort.__version__}
    assert info["sha256"] == onnx_tower.sha256(onnx_export / "user_tower.onnx")

    # exporting again without --onnx drops the graph: export.json never lists a file that is not there
    plain = onnx_export.parent / "export-plain"
    assert main(["export", str(run), "--out", str(plain), "--onnx"]) == 0
    assert main(["export", str(run), "--out", str(plain)]) == 0
    assert json.loads((plain / "export.json").read_text())["onnx"] is None and not (plain / "user_tower.onnx").exists()


def test_onnx_retriever_returns_torch_topk(run, onnx_export):
    torch_r = open_retriever(onnx_export)
    onnx_r = open_retriever(onnx_export, runtime="onnx", onnx_threads=1)
    assert isinstance(onnx_r.tower, OnnxUserTower) and onnx_r.meta["runtime"] == "onnx"
    assert onnx_r.tower.session.get_session_options().intra_op_num_threads == 1
    ds = torch_r.tower.ds
    hists = [ds.history(u).tolist() for u in range(1, ds.num_users + 1)]
    for exclude in (False, True):
        s_t, i_t = torch_r.topk(hists, 10, exclude_seen=exclude)
        s_o, i_o = onnx_r.topk(hists, 10, exclude_seen=exclude)
        np.testing.assert_array_equal(i_o, i_t)
        np.testing.assert_allclose(s_o, s_t, atol=1e-4, rtol=0)
    with pytest.raises(ExportError, match="--onnx"):
        open_retriever(run, runtime="onnx")  # no export folder
    with pytest.raises(ValueError, match="runtime"):
        open_retriever(onnx_export, runtime="tensorrt")


def test_load_refuses_a_stale_or_foreign_graph(run, onnx_export, tmp_path):
    from t2diff.retrieval.export import load_tower

    tower, _, _ = load_tower(run)
    with torch.no_grad():  # other user-tower weights, same items: the load-time probe must notice
        tower.model.ln.bias.add_(0.5)
    with pytest.raises(OnnxError, match="does not reproduce"):
        load_onnx_tower(onnx_export, tower)

    plain = tmp_path / "plain"
    assert main(["export", str(run), "--out", str(plain)]) == 0
    with pytest.raises(OnnxError, match="--onnx"):
        open_retriever(plain, runtime="onnx")
    copy = tmp_path / "copy"
    assert main(["export", str(run), "--out", str(copy), "--onnx"]) == 0
    (copy / "user_tower.onnx").write_bytes((onnx_export / "user_tower.onnx").read_bytes()[:-1])
    with pytest.raises(OnnxError, match="sha256"):
        open_retriever(copy, runtime="onnx")


def test_cli_names_the_missing_package(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install" in err
    assert not (tmp_path / "x" / "export.json").exists()



def test_cli_retrieve_and_serve_with_the_onnx_runtime(run, onnx_export, tmp_path, monkeypatch):
    import pandas as pd
    import pyarrow.parquet as pq

    import t2diff.retrieval.service as service

    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": [f"u{k}" for k in range(12)]}).to_csv(users, index=False)
    out = {}
    for rt in ("torch", "onnx"):
        assert main(["retrieve", str(onnx_export), "--input", str(users), "--out", str(tmp_path / f"{rt}.parquet"),
                     "--k", "5", "--runtime", rt]) == 0
        out[rt] = pq.read_table(tmp_path / f"{rt}.parquet").to_pandas()
    assert out["onnx"][["user", "rank", "item"]].equals(out["torch"][["user", "rank", "item"]])
    np.testing.assert_allclose(out["onnx"]["score"], out["torch"]["score"], atol=1e-4, rtol=0)

    calls = []
    monkeypatch.setattr(service, "serve", lambda *a: calls.append(a))
    assert main(["serve", str(onnx_export), "--runtime", "onnx", "--onnx-threads", "2"]) == 0
    tower = calls[0][0].tower
    assert isinstance(tower, OnnxUserTower) and tower.session.get_session_options().intra_op_num_threads == 2
