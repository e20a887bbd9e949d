"""``t2diff reproduce ml-1m|kuairand``: the paper's Table 2 (nine baselines, T2Diff and its two ablations, and our
working variant T2DiffCausal), Table 3 (beta linear / log / exp), Table 4 (T = 10 / 50 / 200 with inference time)
and Figure 4, under the paper protocol and leave-one-out, at our scale (d = 64) and the authors' (4-d), in one
report: OUT/REPORT.md with PNG plots, our numbers beside the paper's, every protocol and data difference stated,
unfinished runs listed as such.

Each study is one `t2diff compare` in OUT/<study>/ (its configs, runs, compare.md). Interrupted anywhere, the same
command with --resume continues: finished runs are reused, interrupted and budget-stopped ones resume.
--budget-minutes B shares B training minutes equally among the runs this invocation trains (a run stops after the
epoch that crosses its share); without it every run gets its config's own epochs, patience and budget.
Needs the prepared data set (t2diff prepare ml-1m --out cache/ml-1m, or --data).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from t2diff.commands.common import add_progress_arg, command_parser, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    from t2diff.reproduce import KINDS, PROTOCOLS, SCALES

    p = command_parser(sub, "reproduce", "the paper's Tables 2-4 and Figure 4 in one report", __doc__)
    p.add_argument("dataset", choices=["ml-1m", "kuairand"])
    p.add_argument("--out", type=Path, help="output folder (default: runs/reproduce-<dataset>)")
    p.add_argument("--budget-minutes", type=float, help="training minutes for this invocation, shared by its runs")
    p.add_argument("--epochs", type=int, help="cap every run's train.epochs (a quick pass)")
    p.add_argument("--resume", action="store_true", help="continue: reuse finished runs, resume the others")
    p.add_argument("--only", nargs="+", default=[], metavar="STUDY",
                   help="train only these: a table (table2), a study (table2-paper-ours) or a run "
                   "(table2-paper-ours/sasrec); the others are tabulated from their finished runs")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--scales", nargs="+", choices=SCALES, default=list(SCALES))
    p.add_argument("--tables", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--no-ours", action="store_true", help="leave our variant (T2DiffCausal) out of Table 2")
    p.add_argument("--config-root", type=Path, default=Path("configs"),
                   help="where <dataset>/<model>*.yaml live (default: %(default)s)")
    p.add_argument("--data", help="prepared data set for every run (default: the configs' data.path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--figure4-users", type=int, default=256, help="test examples traced for Figure 4")
    p.add_argument("--infer-repeats", type=int, default=5)
    p.add_argument("--eval-users", type=int, metavar="N",
                   help="a reduced pass: validate and test every run on the same seeded sample of N test users "
                        "(eval.max_users; labelled in the report); default every user")
    add_progress_arg(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.config import ConfigError
    from t2diff.data.errors import DataError
    from t2diff.reproduce import ReproduceOptions, reproduce
    from t2diff.train import TrainingError

    if args.epochs is not None and args.epochs < 1:
        return fail(f"--epochs must be >= 1, got {args.epochs}")
    opts = ReproduceOptions(
        dataset=args.dataset, out=args.out or Path(f"runs/reproduce-{args.dataset}"), config_root=args.config_root,
        protocols=args.protocols, scales=args.scales, tables=args.tables, budget_minutes=args.budget_minutes,
        epochs=args.epochs, resume=args.resume, only=args.only, data=args.data, overrides=args.overrides,
        device=args.device, figure4_users=args.figure4_users, with_ours=not args.no_ours,
        progress=not args.no_progress, infer_repeats=args.infer_repeats,
        eval_users=args.eval_users)
    try:
        reproduce(opts)
    except (ConfigError, DataError, TrainingError, FileNotFoundError) as e:
        return fail(str(e))
    print((opts.out / "REPORT.md").read_text())
    return 0
