"""``t2diff compare``: train and evaluate several models on one dataset and protocol; a table of the results.

Train and evaluate each model (<config-dir>/<model>[-<protocol>].yaml, or --configs) on ONE prepared dataset and
protocol with the same seeds; data.path must agree (or be overridden); protocol, split, seeds, max_len and eval.ks
are forced to the first model's. Writes OUT/compare.md and OUT/compare.csv; each run goes to OUT/runs/<model>.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from t2diff.commands.common import add_progress_arg, command_parser, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "compare", "train several models under one protocol and tabulate them", __doc__)
    p.add_argument("--models", nargs="+", default=[], help="registered model names")
    p.add_argument("--configs", nargs="+", default=[], type=Path, help="explicit config files instead of --models")
    p.add_argument("--config-dir", type=Path, default=Path("configs/ml-1m"),
                   help="where --models' configs are (default: %(default)s)")
    p.add_argument("--protocol", choices=["paper", "loo"],
                   help="force this protocol (prefer <model>-<protocol>.yaml); default: the first config's")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--paper", action="store_true", help="add the paper's Table 2 numbers beside ours")
    p.add_argument("--paper-dataset", choices=["ml-1m", "kuairand"],
                   help="which Table 2 columns --paper uses (default: the prepared dataset's name)")
    p.add_argument("--max-over-epochs", action="store_true",
                   help="paper protocol: also report the max over epochs of the test metric (the authors' "
                   "reporting, selected on the test set)")
    p.add_argument("--resume", action="store_true",
                   help="skip models whose run holds metrics.json; continue interrupted ones")
    p.add_argument("--only", nargs="+", default=[], metavar="RUN",
                   help="train only these runs (labels as in OUT/runs/) with the settings forced over the whole "
                   "list, and write no table: start one such job per model (e.g. on several GPUs), then tabulate "
                   "with --no-train")
    p.add_argument("--no-train", action="store_true",
                   help="only tabulate: reuse finished runs in OUT/runs as they are, leave unfinished ones out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--infer-batch", type=int, default=256, help="batch size for the inference timing")
    p.add_argument("--infer-repeats", type=int, default=5, help="timed repeats (median is reported)")
    add_progress_arg(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied to every model; MODEL:KEY=VALUE to one (sasrec:train.epochs=6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.compare import CompareOptions, compare
    from t2diff.config import ConfigError
    from t2diff.data.errors import DataError
    from t2diff.train import TrainingError

    # nargs="+" swallows KEY=VALUE written right after --models / --configs: give them back to the overrides
    models = [m for m in args.models if "=" not in m]
    configs = [c for c in args.configs if "=" not in str(c)]
    overrides = [*(m for m in args.models if "=" in m), *(str(c) for c in args.configs if "=" in str(c)),
                 *(o for o in args.only if "=" in o), *args.overrides]
    opts = CompareOptions(
        out=args.out, models=models, configs=configs, config_dir=args.config_dir, protocol=args.protocol,
        overrides=overrides, paper=args.paper, paper_dataset=args.paper_dataset,
        max_over_epochs=args.max_over_epochs, resume=args.resume, progress=not args.no_progress,
        device=args.device, infer_batch=args.infer_batch, infer_repeats=args.infer_repeats,
        only=[o for o in args.only if "=" not in o], no_train=args.no_train,
    )
    try:
        report = compare(opts)
    except (ConfigError, DataError, TrainingError, FileNotFoundError) as e:
        return fail(str(e))
    if opts.only:
        print(f"trained {opts.only} in {args.out / 'runs'}; tabulate with --no-train")
        return 0
    print((args.out / "compare.md").read_text())
    print(f"wrote {args.out / 'compare.md'} and {args.out / 'compare.csv'} ({len(report.results)} models)")
    return 0
