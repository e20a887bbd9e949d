"""The popularity floor of a protocol (``t2diff.popularity``): every test target ranked by its item's count in the
training part of the split, one list for every user, ties pessimistic as the evaluator's.

    .venv/bin/python benchmarks/popularity_floor.py -c configs/ml-1m/paper-scale/sasrec.yaml --name pop_ml1m_paper

Only the config's data, protocol, cut-offs and eval settings are read (its model is not). Writes
``benchmarks/results/<name>.md`` and ``.json`` with the command, commit and machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2diff.config import load_config
from t2diff.popularity import popularity_floor
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.run import load_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, as for t2diff train")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="popularity_floor")
    args = p.parse_args(argv)
    prov = provenance(argv, __file__)
    cfg = load_config(args.config, args.overrides)
    metrics = tuple(f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg"))
    res = popularity_floor(cfg, load_dataset(cfg.data.path), metrics)
    n = int(res.pop("num_test")["n"])
    sample = f"a sample of {cfg.eval.max_users} users" if cfg.eval.max_users else "all test users"
    md = "\n".join([
        f"# Popularity floor: {cfg.data.path}, protocol `{cfg.data.protocol}`", "",
        f"{n} test examples ({sample}); items ranked by their count in the training part of the split, the same "
        f"list for every user; ties pessimistic, as the evaluator. The config's own eval.mask_seen is "
        f"{cfg.eval.mask_seen}.", "",
        markdown_table(["seen items", *metrics], [[k, *[f"{v[m]:.4f}" for m in metrics]] for k, v in res.items()])])
    write_json(args.out / f"{args.name}.json", {"config": args.config, "num_test": n, **res}, prov)
    write_markdown(args.out / f"{args.name}.md", md + "\n", prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
