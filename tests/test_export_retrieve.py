"""Export (embeddings with original ids, index, ANN report) and batch retrieval, on a tiny SASRec run trained on
the synthetic log (string ids "u<k>" / "i<k>")."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("faiss")


from t2diff.batch import Batch  # noqa: E402
from t2diff.cli import main  # noqa: E402
from t2diff.retrieval.export import ExportError, open_retriever  # noqa: E402
from t2diff.retrieval.index import ItemIndex  # noqa: E402
from t2diff.retrieval.requests import InputError  # noqa: E402
from t2diff.retrieval.user_tower import UserTower  # noqa: E402
from t2diff.run import build_from_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def flat_export(run: Path) -> Path:
    out = run.parent / "export-flat"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def _brute_topk(model, items: torch.Tensor, hists: list[list[int]], max_len: int, k: int,
                exclude_seen: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reference: scores of every real item, top-k by sort (internal ids)."""
    with torch.no_grad():
        s = model.user_embeddings(Batch.from_histories(hists, max_len)) @ items.T  # [B, I+1]
    s[:, 0] = -torch.inf
    if exclude_seen:
        for r, h in enumerate(hists):
            s[r, h] = -torch.inf
    top = torch.topk(s, k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def test_export_files_and_flat_index_is_exact(run, flat_export):
    model, cfg, ds = build_from_checkpoint(run)
    with torch.no_grad():
        items = model.item_embeddings().detach()
    meta = json.loads((flat_export / "export.json").read_text())
    assert meta["model"] == "sasrec" and meta["num_items"] == ds.num_items and meta["index"]["config"]["kind"] == "flat"
    assert Path(meta["checkpoint"]["path"]) == (run / "best.pt").resolve() and len(meta["checkpoint"]["sha256"]) == 64
    assert meta["report"] is None  # flat is exact: no recall report

    vecs = np.load(flat_export / "items.npy")
    assert vecs.dtype == np.float32 and vecs.shape == (ds.num_items, items.shape[1])
    np.testing.assert_allclose(vecs, items[1:].numpy(), rtol=0, atol=0)
    ids = (flat_export / "item_ids.txt").read_text().splitlines()
    assert ids == ds.item_ids[1:] and all(i.startswith("i") for i in ids)  # original ids, not internal
    tab = pq.read_table(flat_export / "items.parquet")
    assert tab.column_names == ["item_id", "embedding"]
    assert tab.column("item_id").to_pylist() == ids
    np.testing.assert_array_equal(np.stack(tab.column("embedding").to_numpy(zero_copy_only=False)), vecs)

    # the saved index's top-K == brute force over the exported vectors, for real user embeddings
    index = ItemIndex.load(flat_export / "index")
    hists = [ds.history(u).tolist() for u in range(1, ds.num_users + 1)]
    with torch.no_grad():
        q = model.user_embeddings(Batch.from_histories(hists, cfg.data.max_len)).numpy()
    k = 10
    scores, got = index.search(q, k)
    ref = np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :k] + 1  # row r = internal id r + 1
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vecs.T, ref - 1, axis=1), rtol=1e-5, atol=1e-5)


def test_export_hnsw_writes_recall_report(run, tmp_path):
    out = tmp_path / "hnsw"
    assert main(["export", str(run), "--out", str(out), "--index", "hnsw", "--report-k", "10",
                 "--ef-search", "64", "--copy-checkpoint"]) == 0
    meta = json.loads((out / "export.json").read_text())
    rep = json.loads((out / meta["report"]).read_text())
    assert rep["kind"] == "hnsw" and rep["k"] == 10 and rep["params"]["ef_search"] == 64
    assert rep["num_queries"] == 60  # one loo test example per synthetic user
    assert rep["recall_at_k"] >= 0.95  # 40 items: HNSW is exact here
    assert (out / "model.pt").is_file() and meta["checkpoint"]["copy"] == "model.pt"
    r = open_retriever(out)  # an export folder alone: its copied checkpoint + its index
    assert r.index.kind == "hnsw" and r.meta["checkpoint"] == str(out / "model.pt")


def test_export_ivfpq_fastscan(run, tmp_path):
    out = tmp_path / "ivfpq"
    assert main(["export", str(run), "--out", str(out), "--index", "ivfpq", "--nlist", "2", "--nprobe", "2",
                 "--pq-m", "4", "--refine", "4", "--fastscan", "probe_parallel", "--report-k", "10"]) == 0
    meta = json.loads((out / "export.json").read_text())
    rep = json.loads((out / meta["report"]).read_text())
    assert rep["kind"] == "ivfpq" and rep["params"]["fastscan"] == "probe_parallel" and rep["params"]["pq_m"] == 4
    assert rep["recall_at_k"] >= 0.95  # 40 items, every list probed, 40 candidates re-ranked exactly
    assert open_retriever(run, out).index.cfg.fastscan == "probe_parallel"


def test_retrieve_users_matches_bruteforce_and_excludes_seen(run, flat_export, tmp_path):
    model, cfg, ds = build_from_checkpoint(run)
    with torch.no_grad():
        items = model.item_embeddings().detach()
    users = ["u3", "u0", "u17"]
    pd.DataFrame({"user_id": users}).to_parquet(tmp_path / "users.parquet")
    hists = [ds.history(ds.user_ids.index(u)).tolist() for u in users]
    k = 7
    for exclude in (False, True):
        out = tmp_path / f"out-{exclude}.parquet"
        args = ["retrieve", str(flat_export), "--input", str(tmp_path / "users.parquet"), "--out", str(out),
                "--k", str(k)] + (["--exclude-seen"] if exclude else [])
        assert main(args) == 0
        df = pd.read_parquet(out)
        assert list(df.columns) == ["user", "rank", "item", "score"]
        assert df["user"].tolist() == [u for u in users for _ in range(k)]
        assert df["rank"].tolist() == list(range(1, k + 1)) * len(users)
        ref_s, ref_i = _brute_topk(model, items, hists, cfg.data.max_len, k, exclude)
        for r, u in enumerate(users):
            rows = df[df["user"] == u]
            assert rows["item"].tolist() == [ds.item_ids[i] for i in ref_i[r]]  # original ids
            np.testing.assert_allclose(rows["score"].to_numpy(), ref_s[r], rtol=1e-5, atol=1e-5)
            assert (np.diff(rows["score"].to_numpy()) <= 0).all()
            seen = {ds.item_ids[i] for i in hists[r]}
            if exclude:
                assert not seen & set(rows["item"])
            else:
                assert seen & set(rows["item"])  # the synthetic walks revisit items: exclusion is visible


def test_retrieve_histories_list_and_string_forms_agree(run, tmp_path):
    _, _, ds = build_from_checkpoint(run)
    h = [ds.item_ids[i] for i in ds.history(5).tolist()]
    pd.DataFrame({"user_id": ["a", "b"], "history": [h, h[:3]]}).to_parquet(tmp_path / "h.parquet")
    (tmp_path / "h.csv").write_text(f'user_id,history\na,"{" ".join(h)}"\nb,"{",".join(h[:3])}"\n')
    outs = []
    for f in ("h.parquet", "h.csv"):
        assert main(["retrieve", str(run), "--input", str(tmp_path / f), "--out", str(tmp_path / f"{f}.out"),
                     "--k", "5"]) == 0
        outs.append(pd.read_parquet(tmp_path / f"{f}.out"))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    # a history row equals the user row of the same user (its full prepared history)
    pd.DataFrame({"user_id": [ds.user_ids[5]]}).to_parquet(tmp_path / "u.parquet")
    assert main(["retrieve", str(run), "--input", str(tmp_path / "u.parquet"), "--out", str(tmp_path / "u.out"),
                 "--k", "5"]) == 0
    u = pd.read_parquet(tmp_path / "u.out")
    assert u["item"].tolist() == outs[0]["item"][:5].tolist()


def test_retrieve_unknown_ids_are_clear_errors_or_skipped(run, tmp_path, capsys):
    (tmp_path / "bad.csv").write_text('user_id,history\na,"i1 i2"\nb,"i3 nope i4 zz"\n')
    out = tmp_path / "o.parquet"
    assert main(["retrieve", str(run), "--input", str(tmp_path / "bad.csv"), "--out", str(out), "--k", "3"]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "'nope'" in err and "'zz'" in err and not out.exists()
    assert main(["retrieve", str(run), "--input", str(tmp_path / "bad.csv"), "--out", str(out), "--k", "3",
                 "--skip-unknown"]) == 0
    assert "dropped 2 unknown item id(s)" in capsys.readouterr().err
    assert pd.read_parquet(out)["user"].tolist() == ["a"] * 3 + ["b"] * 3

    (tmp_path / "users.csv").write_text("user_id\nu1\nghost\n")
    assert main(["retrieve", str(run), "--input", str(tmp_path / "users.csv"), "--out", str(out)]) == 2
    assert "row 1: unknown user id 'ghost'" in capsys.readouterr().err
    assert main(["retrieve", str(run), "--input", str(tmp_path / "users.csv"), "--out", str(out), "--k", "0"]) == 2
    assert "k must be an integer between 1 and 40" in capsys.readouterr().err
    (tmp_path / "nocol.csv").write_text("items\ni1\n")
    assert main(["retrieve", str(run), "--input", str(tmp_path / "nocol.csv"), "--out", str(out)]) == 2
    assert "needs a 'user_id' or a 'history' column" in capsys.readouterr().err


def test_retrieve_jsonl_with_timestamps_and_malformed_cells(run, tmp_path, capsys):
    rows = [{"history": ["i1", "i2", "i3"], "timestamps": [1_600_000_000, 1_600_000_060, 1_600_000_120]},
            {"history": '["i4", "i5"]'}]
    (tmp_path / "h.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o.parquet"
    assert main(["retrieve", str(run), "--input", str(tmp_path / "h.jsonl"), "--out", str(out), "--k", "4"]) == 0
    df = pd.read_parquet(out)
    assert df["user"].tolist() == [0] * 4 + [1] * 4  # no user_id column: rows are labelled by number
    (tmp_path / "bad.jsonl").write_text(json.dumps({"history": ["i1", "i2"], "timestamps": [1]}) + "\n"
                                        + json.dumps({"history": '["i4", '}) + "\n")
    assert main(["retrieve", str(run), "--input", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "row 0: timestamps has 1 entries but history has 2" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text(json.dumps({"history": '["i4", '}) + "\n")
    assert main(["retrieve", str(run), "--input", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "row 0: cannot parse" in capsys.readouterr().err


def test_export_from_other_weights_is_rejected(run, flat_export, tmp_path):
    bad = tmp_path / "bad-export"
    shutil.copytree(flat_export, bad)
    np.save(bad / "items.npy", np.load(bad / "items.npy") + 1.0)
    with pytest.raises(ExportError, match="different weights"):
        open_retriever(run, export=bad)


def test_item_ids_accept_ints_and_strings(run):
    """Ids are compared as strings; datasets with integer ids answer with integers."""
    model, cfg, ds = build_from_checkpoint(run)
    num = dataclasses.replace(ds, item_ids=["<pad>"] + [str(100 + i) for i in range(ds.num_items)],
                              meta={**ds.meta, "id_type": {"item": "int", "user": "str"}})
    tower = UserTower(model, cfg, num)
    assert tower.to_internal([100, "101", np.int64(102), 7.0 + 96]) == ([1, 2, 3, 4], [])
    assert tower.to_internal(["100", "999", 999]) == ([1], ["999", 999])
    assert tower.original_item(1) == 100
    with pytest.raises(InputError, match="boolean"):
        tower.to_internal([True])


def test_time_aware_model_receives_timestamps(run, tmp_path):
    """T2Diff on timestamped data: the request's timestamps and request time reach the time-lag feature, and
    the served embedding equals the model's on the same Batch."""
    from t2diff.config import load_config
    from t2diff.train import Trainer

    prepared = run.parent / "prepared"
    cfg = load_config(None, [f"data.path={prepared}", "model.name=t2diff", "model.hidden=16", "model.steps=5",
                             "model.unet_levels=3", "model.session_len=4", "model.num_heads=2",
                             "model.session_ffn_dim=32", "data.max_len=12", "train.batch_size=64", "train.epochs=1",
                             "train.threads=1", "eval.ks=[5]", "train.select_metric=ndcg@5"])
    Trainer(cfg, tmp_path / "t2d", progress=False, log=lambda s: None).fit()
    r = open_retriever(tmp_path / "t2d")
    assert r.tower.uses_time and r.tower.model_name == "t2diff"
    ds = r.tower.ds
    h = ds.history(3).tolist()[-12:]
    ts = ds.times[ds.user_ptr[2]: ds.user_ptr[3]].tolist()[-12:]
    now = ts[-1] + 3600
    with_t = r.tower.embed([h], [ts], [now])
    ref = r.tower.model.user_embeddings(Batch.from_histories([h], 12, [ts], [now])).detach().numpy()
    np.testing.assert_allclose(with_t, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(with_t, r.tower.embed([h], [ts], [now]))  # eval noise is seeded per call
    assert not np.allclose(with_t, r.tower.embed([h]))  # no timestamps -> the "unknown lag" bucket
    assert not np.allclose(with_t, r.tower.embed([h], [ts], [now + 10**7]))  # the lag to the request matters


def test_ties_evaluator_retrieve_and_service_agree(run):
    """Items with identical embeddings tie for every user. The evaluator counts ties against the model (rank =
    the last place of the target's tie group), the index lists a tie group by ascending id, so a target's
    place in the retrieved list is its rank minus the tied items listed after it; retrieve and the service
    return the same lists."""
    import asyncio

    import httpx

    from t2diff.data.protocols import leave_one_out
    from t2diff.evaluate import rank_examples
    from t2diff.retrieval.index import IndexConfig
    from t2diff.retrieval.service import create_app
    from t2diff.retrieval.user_tower import Retriever

    model, cfg, ds = build_from_checkpoint(run)
    groups = [[2, 3], [5, 9, 17], [10, 11, 12, 13]]  # each group: one embedding
    with torch.no_grad():
        for g in groups:
            model.item_emb.weight[g[1:]] = model.item_emb.weight[g[0]].clone()
    tied_of = {i: set(g) for g in groups for i in g}
    ex = leave_one_out(ds).test
    res = rank_examples(model, ds, ex, cfg.data.max_len)
    items = model.item_embeddings().detach()[1:]
    retriever = Retriever(UserTower(model, cfg, ds),
                          ItemIndex.build(items, np.arange(1, ds.num_items + 1), IndexConfig(kind="flat")),
                          {"checkpoint": "in memory"})
    hists = [ds.history(int(u))[:j].tolist() for u, j in zip(ex.users, ex.positions, strict=True)]
    _, ids = retriever.topk(hists, ds.num_items)
    n_tied = 0
    for r, (u, j) in enumerate(zip(ex.users, ex.positions, strict=True)):
        target = int(ds.history(int(u))[j])
        place = int(np.flatnonzero(ids[r] == target)[0]) + 1
        group = tied_of.get(target, {target})
        assert res.tied[r] == (len(group) > 1)
        # the evaluator's rank is the last place of the target's tie group; the list orders the group by id
        assert res.ranks[r] == place + sum(1 for i in group if i > target)
        block = ids[r][place - 1 - sum(1 for i in group if i < target): res.ranks[r]]
        assert block.tolist() == sorted(group)
        n_tied += len(group) > 1
    assert n_tied > 0 and res.metrics([10])["num_tied_targets"] == n_tied

    async def ask() -> list[dict]:
        app = create_app(retriever)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            rs = [await client.post("/recommend", json={"history": [ds.item_ids[i] for i in h], "k": 20})
                  for h in hists[:10]]
        return [r.json() for r in rs]

    for r, body in enumerate(asyncio.run(ask())):
        assert [x["item_id"] for x in body["items"]] == [ds.item_ids[i] for i in ids[r][:20]]


@pytest.mark.parametrize("masked", [False, True])
def test_evaluate_through_the_index_is_labelled_and_measured(run, flat_export, tmp_path, masked):
    """The approximate evaluation: through a flat index it is the exact ranking's Recall/NDCG (no ties among
    real-valued scores here) with recall 1; through an IVF index probing one of 4 lists it reports recall < 1;
    both under their own metrics.json key, never the exact one."""
    rd = tmp_path / "run"
    shutil.copytree(run.parent if run.is_file() else run, rd)
    flag = ["--mask-seen" if masked else "--no-mask-seen"]
    assert main(["evaluate", str(rd), "--ks", "5", "10", "--no-progress", *flag]) == 0
    assert main(["evaluate", str(rd), "--ks", "5", "10", "--no-progress", "--index", str(flat_export), *flag]) == 0
    data = json.loads((rd / "metrics.json").read_text())
    key = "evaluate_mask_seen" if masked else "evaluate"
    exact, approx = data[key], data[key.replace("evaluate", "evaluate_approximate")]
    assert approx["ranking"].startswith("approximate") and approx["ann_recall@10"] == 1.0
    for k in ("recall@5", "recall@10", "ndcg@10", "mrr@10"):
        assert approx["metrics"][k] == pytest.approx(exact["metrics"][k], abs=1e-12), k
    ivf = tmp_path / "ivf"
    assert main(["export", str(rd), "--out", str(ivf), "--index", "ivf", "--nlist", "4", "--nprobe", "1"]) == 0
    assert main(["evaluate", str(rd), "--ks", "10", "--no-progress", "--index", str(ivf), *flag]) == 0
    approx = json.loads((rd / "metrics.json").read_text())[key.replace("evaluate", "evaluate_approximate")]
    assert approx["ann_recall@10"] < 1.0 and approx["ann_recall_examples"] == 60


def test_evaluate_through_another_models_index_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other.pt"
    ck = torch.load(run / "best.pt" if run.is_dir() else run, weights_only=False)
    ck["model_state"]["item_emb.weight"] = ck["model_state"]["item_emb.weight"] + 0.1
    torch.save(ck, other)
    exp = tmp_path / "exp"
    assert main(["export", str(other), "--out", str(exp)]) == 0
    assert main(["evaluate", str(run), "--index", str(exp), "--no-progress"]) != 0
    assert "another model" in capsys.readouterr().err
