"""``t2diff evaluate``: full-ranking evaluation of a checkpoint on its protocol's test (or valid) examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2diff.commands.common import add_progress_arg, add_sampler_args, apply_sampler, fail, metrics_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="full-ranking evaluation of a checkpoint",
                       description="Rank every item for every evaluated example; Recall/MRR/NDCG at each K. "
                       "Results are added under 'evaluate' in the run directory's metrics.json.")
    p.add_argument("checkpoint", help="a run directory (its selected checkpoint) or a .pt file")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--ks", type=int, nargs="+", help="cut-offs (default: the run's eval.ks)")
    p.add_argument("--mask-seen", action=argparse.BooleanOptionalAction, default=None,
                   help="exclude items seen before the target (default: as the run evaluated, eval.mask_seen)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--data", help="prepared dataset (default: the one in the checkpoint's config)")
    p.add_argument("--index", help="approximate evaluation through this exported ANN index (a `t2diff export` "
                   "folder or its index/): top-K retrieval instead of the exact full ranking, labelled as approximate, "
                   "with the index's measured recall@K against exact search")
    p.add_argument("--ann-recall-examples", type=int, default=1000,
                   help="--index: examples on which the index's recall against exact search is measured")
    add_sampler_args(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.evaluate import evaluate
    from t2diff.metrics import TIE_RULE
    from t2diff.run import build_from_checkpoint, build_split

    path = Path(args.checkpoint)
    try:
        model, cfg, ds = build_from_checkpoint(path, args.data)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    if (err := apply_sampler(model, args)) is not None:
        return fail(err)
    split = build_split(cfg, ds)
    ex = split.test if args.split == "test" else split.valid
    if ex is None:
        return fail(f"protocol {cfg.data.protocol!r} has no {args.split} split")
    ks = args.ks or cfg.eval.ks
    masked = cfg.eval.mask_seen if args.mask_seen is None else args.mask_seen
    approx = None
    if args.index:
        from t2diff.retrieval.approx_eval import evaluate_with_index
        from t2diff.retrieval.index import load_index

        folder = Path(args.index)
        try:
            index = load_index(folder / "index" if (folder / "index").is_dir() else folder)
            approx = evaluate_with_index(model, ds, ex, cfg.data.max_len, ks, index, masked, args.batch_size,
                                         args.ann_recall_examples)
        except (FileNotFoundError, ValueError) as e:
            return fail(str(e))
        m = approx["metrics"]
    else:
        m = evaluate(model, ds, ex, cfg.data.max_len, ks, args.batch_size, masked, not args.no_progress)
    label = f"{cfg.model['name']} {args.split}{' (seen items masked)' if masked else ''}"
    if approx is not None:
        label += " APPROXIMATE (ANN index)"
    print(metrics_table({label: m}))
    if approx is not None:
        rk = next(k for k in approx if k.startswith("ann_recall@"))
        print(f"{approx['ranking']}\nindex {rk} against exact search: {approx[rk]:.4f} "
              f"(on {approx['ann_recall_examples']} examples)")
    run_dir = path if path.is_dir() else path.parent
    out_file = run_dir / "metrics.json"
    data = json.loads(out_file.read_text()) if out_file.exists() else {}
    # masked and unmasked results side by side: each has its own key
    entry = {"checkpoint": str(path), "split": args.split, "mask_seen": masked, "protocol": cfg.data.protocol,
             "tie_rule": TIE_RULE, "metrics": m}
    key = "evaluate_mask_seen" if masked else "evaluate"
    if approx is not None:  # never in the exact keys
        entry.update({k: v for k, v in approx.items() if k != "metrics"}, index=str(args.index))
        key = key.replace("evaluate", "evaluate_approximate")
    if getattr(model, "sampler", None) is not None:  # the chain the numbers came from
        entry["sampler"] = {"name": model.sampler.name, "steps": model.reverse_steps}
        if args.sampler is not None or args.steps is not None:  # another chain than the run's: its own key
            key += f"_{model.sampler.name}{model.reverse_steps}"
    data[key] = entry
    out_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return 0
