"""Seed pairs that meet across sessions: save a trained run's test ranks, then compare two models as the mean over
seeds of the paired per-example difference (t2diff.paired; the statistic issue 14 pre-states).

    .venv/bin/python benchmarks/seed_pairs.py dump runs/sasrec-200-s2026 \\
        --out benchmarks/results/ranks/sasrec-200-s2026.npz
    .venv/bin/python benchmarks/seed_pairs.py mean --a benchmarks/results/ranks/t2diff-causal-200-s*.npz \\
        --b benchmarks/results/ranks/sasrec-200-s*.npz --name seed_mean_loo

``dump`` ranks the run's test split over all items with its selected checkpoint and its own inference settings
(for T2DiffCausal its default chain), seen items masked and not, and writes users, target positions and ranks
(a few tens of kB). ``mean`` pairs the A and B runs by ``train.seed``, checks every run holds the same test
examples, and writes benchmarks/results/<name>.{md,json} with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from t2diff.paired import RunRanks, load_ranks, save_ranks, seed_mean
from t2diff.provenance import markdown_table, provenance, write_json, write_markdown
from t2diff.run_ranks import run_test_ranks


def dump(run: Path, out: Path, batch_size: int) -> RunRanks:
    r = run_test_ranks(run, batch_size=batch_size)
    save_ranks(out, r)
    return r


def render(a: list[RunRanks], b: list[RunRanks], res: dict[bool, dict[str, dict[str, float]]],
           names: tuple[str | None, str | None] = (None, None)) -> str:
    rows = []
    for masked, per in res.items():
        for m, x in per.items():
            rows.append(["yes" if masked else "no", m, f"{x['a']:.4f}", f"{x['b']:.4f}",
                         f"{x['diff']:+.4f} ± {x['se']:.4f}", f"{x['z']:+.2f}", "yes" if x["z"] >= 2 else "no"])
    runs = [[r.model, r.seed, f"`{r.label}`"] for r in [*a, *b]]
    return "\n".join([
        f"# {names[0] or a[0].model} (A) against {names[1] or b[0].model} (B): mean over {len(a)} seed pairs", "",
        f"{len(a[0].users)} test examples, the same in every run. Per example, the A - B difference is averaged "
        "over the seed pairs; SE = std over examples of that mean / sqrt(n); z = mean / SE. "
        "A wins by 2 SE when z >= 2.", "",
        markdown_table(["seen masked", "metric", "A (seed mean)", "B (seed mean)", "A - B", "z", "z >= 2"], rows), "",
        "Runs:", "", markdown_table(["model", "train.seed", "run"], runs)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="save one run's test ranks")
    d.add_argument("run", type=Path)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--batch-size", type=int, default=512)
    d.add_argument("--threads", type=int, default=2)
    m = sub.add_parser("mean", help="A against B, the mean over seed pairs")
    m.add_argument("--a", type=Path, nargs="+", required=True)
    m.add_argument("--b", type=Path, nargs="+", required=True)
    m.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    m.add_argument("--name", default="seed_mean")
    m.add_argument("--label-a", help="A's name in the report (default: its model name)")
    m.add_argument("--label-b", help="B's name in the report (default: its model name)")
    args = p.parse_args(argv)
    if args.cmd == "dump":
        torch.set_num_threads(args.threads)
        r = dump(args.run, args.out, args.batch_size)
        print(f"{args.out}: {r.model} seed {r.seed}, {len(r.users)} test examples")
        return 0
    a, b = [load_ranks(f) for f in args.a], [load_ranks(f) for f in args.b]
    res = {masked: seed_mean(a, b, masked) for masked in (True, False)}
    prov = provenance(argv, __file__)
    write_json(args.out / f"{args.name}.json", {"a": [r.label for r in a], "b": [r.label for r in b],
                                                 "masked": res[True], "unmasked": res[False]}, prov)
    md = render(a, b, res, (args.label_a, args.label_b))
    write_markdown(args.out / f"{args.name}.md", md, prov)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
