"""Sweeps: the grid (method × correction × ratio × seed) of a config's ``sweep`` section, one point at a time.

Every finished point is appended as one JSON line to ``W/results.jsonl`` (a single ``write`` on an ``O_APPEND``
descriptor, so concurrent shards never interleave and a kill loses at most the point in flight); a rerun skips
the points already there. ``W/manifest.json`` records the config, versions, device and git revision, and a
workdir refuses a sweep of a different model. Folding work is shared where it can be: one Fold-Naive fold per
(ratio, seed) serves every correction that does not change what is clustered, and evaluation compiles once per
set of widths.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxfold import __version__
from jaxfold.baselines import BASELINES
from jaxfold.compress import CompressedModel, correct, fold_model
from jaxfold.corrections import get_correction
from jaxfold.data.pipeline import normalize, subset_batches
from jaxfold.diagnostics import variance_ratios
from jaxfold.eval.classification import check_model_fits_data, evaluate_model
from jaxfold.files import write_json_atomic, write_text_atomic
from jaxfold.io import checkpoint

METHODS = ("fold", *BASELINES)
RESULTS, MANIFEST, SUMMARY = "results.jsonl", "manifest.json", "summary.md"
_GRID_FIELDS = ("variants", "ratios", "seeds", "imports")  # may grow between runs of one workdir


@dataclasses.dataclass(frozen=True)
class Point:
    method: str
    correction: str
    ratio: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}:{self.correction}:{self.ratio:g}:{self.seed}"


def grid(sweep: ml_collections.ConfigDict) -> list[Point]:
    """The sweep's points, validated: ``variants`` are "method:correction" pairs."""
    points = []
    for variant in sweep.variants:
        method, sep, corr = str(variant).partition(":")
        if not sep:
            raise ValueError(f"sweep variant {variant!r} must look like method:correction, e.g. fold:fold_ar")
        if method not in METHODS:
            raise ValueError(f"sweep variant {variant!r}: unknown method {method!r}; valid: {list(METHODS)}")
        fix = get_correction(corr)
        if method != "fold" and fix.prepare is not None:
            raise ValueError(f"sweep variant {variant!r}: {corr} changes what is clustered, so it only applies to "
                             "fold (use none or repair with baselines)")
        for ratio in sweep.ratios:
            for seed in sweep.seeds:
                points.append(Point(method, corr, float(ratio), int(seed)))
    return points


def read_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of ``W/results.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(workdir) / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _terminate_torn_line(workdir: Path) -> None:
    """A kill mid-append can leave a last line without its newline: end it, so the next record starts clean."""
    path = workdir / RESULTS
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            _append_bytes(path, b"\n")


def _append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {path}")
    finally:
        os.close(fd)


def append_result(workdir: str | os.PathLike, record: dict[str, Any]) -> None:
    _append_bytes(Path(workdir) / RESULTS, (json.dumps(record, sort_keys=True) + "\n").encode())


def _git_revision() -> str | None:
    """HEAD of the checkout jaxfold runs from, with ``+dirty`` when tracked files have uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return (head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _comparable(config: dict) -> dict:
    sweep = {k: v for k, v in config.get("sweep", {}).items() if k not in _GRID_FIELDS}
    return {**config, "sweep": sweep}


def write_manifest(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Record what produced the results; refuse a workdir that holds a sweep of a different config."""
    path = workdir / MANIFEST
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        old = json.loads(path.read_text())["config"]
        if _comparable(old) != _comparable(current):
            a, b = _comparable(old), _comparable(current)
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"{workdir} holds a sweep of a different config (sections differing: {changed}); "
                             "use a new --workdir, or change only sweep.variants/ratios/seeds/imports to extend it")
    device = jax.devices()[0]
    write_json_atomic(path, {"config": current, "jaxfold": __version__, "jax": jax.__version__,
                             "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
                             "devices": jax.device_count(), "git": _git_revision(),
                             "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})


class _Runner:
    """Holds what points share: the original model, data, repair batches, and the last Fold-Naive folds."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from jaxfold.train import load_data

        sc = config.sweep
        self.config, self.sweep = config, sc
        self.variables, self.model, _ = checkpoint.restore(sc.checkpoint)
        self.data = load_data(config)
        check_model_fits_data(self.model, self.data)
        self.batches = subset_batches(self.data, sc.repair_examples, seed=0)
        n = min(sc.variance_batch, len(self.data.test_images))
        self.probe = normalize(self.data.test_images[:n], self.data.mean, self.data.std)
        self.options = {k: v for k, v in sc.items() if k.startswith("di_")}
        self._naive: dict[tuple[float, int], CompressedModel] = {}

    def compress(self, p: Point) -> CompressedModel:
        key = jax.random.key(p.seed)
        fix = get_correction(p.correction)
        if p.method == "fold" and fix.prepare is not None:
            return fold_model(self.model, self.variables, p.ratio, key, correction=fix, data=self.batches,
                              correction_options=self.options, n_init=self.sweep.n_init)
        if p.method == "fold":
            if (p.ratio, p.seed) not in self._naive:
                self._naive = {(p.ratio, p.seed): fold_model(self.model, self.variables, p.ratio, key,
                                                             n_init=self.sweep.n_init)}
            base = self._naive[(p.ratio, p.seed)]
        else:
            t0 = time.perf_counter()
            base = BASELINES[p.method](self.model, self.variables, p.ratio)
            base = dataclasses.replace(base, report={**base.report, "fold_seconds": time.perf_counter() - t0})
        return correct(self.model, self.variables, base, fix, key=key, data=self.batches, options=self.options)

    def run(self, p: Point) -> dict[str, Any]:
        out = self.compress(p)
        t0 = time.perf_counter()
        metrics = evaluate_model(out.config, out.variables, self.data)
        r = out.report
        record = {"id": p.id, "model": self.config.model.name, "dataset": self.data.name, "method": p.method,
                  "correction": p.correction, "ratio": p.ratio, "seed": p.seed,
                  "param_sparsity": r["param_sparsity"], "params": r["params_after"], "params_before":
                  r["params_before"], "flops": r["flops_after"], "flops_before": r["flops_before"],
                  "metric": "accuracy", "value": metrics["accuracy"], "loss": metrics["loss"],
                  "fold_seconds": round(float(r.get("fold_seconds", 0.0)), 4),
                  "correction_seconds": round(float(r.get("correction_seconds", 0.0)), 4),
                  "eval_seconds": round(time.perf_counter() - t0, 4)}
        if any(abs(p.ratio - float(a)) < 1e-9 for a in self.sweep.variance_ratio_at):
            record["variance_ratio"] = variance_ratios(self.model, self.variables, out.config, out.variables,
                                                       out.channel_map, self.probe)
        return record

    def dense(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics = evaluate_model(self.model, self.variables, self.data)
        params, flops = self.model.param_count(), self.model.flops()
        return {"id": "dense", "model": self.config.model.name, "dataset": self.data.name, "method": "dense",
                "correction": "none", "ratio": 0.0, "seed": 0, "param_sparsity": 0.0, "params": params,
                "params_before": params, "flops": flops, "flops_before": flops, "metric": "accuracy",
                "value": metrics["accuracy"], "loss": metrics["loss"], "fold_seconds": 0.0,
                "correction_seconds": 0.0, "eval_seconds": round(time.perf_counter() - t0, 4)}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n with 0 ≤ i < n, e.g. 0/2; got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 ≤ i < n")
    return i, n


def _ensure_checkpoint(config: ml_collections.ConfigDict) -> None:
    sc = config.sweep
    if checkpoint.exists(sc.checkpoint):
        return
    if not sc.get("train_if_missing", False):
        raise FileNotFoundError(f"no checkpoint at {sc.checkpoint}: train one (jaxfold train --config … "
                                f"--workdir {Path(sc.checkpoint).parent}) or set --config.sweep.checkpoint")
    from jaxfold.train import train

    print(f"no checkpoint at {sc.checkpoint}: training it first ({config.train.epochs} epochs)")
    train(config, Path(sc.checkpoint).parent)


def run_sweep(config: ml_collections.ConfigDict, workdir: str | os.PathLike, shard: tuple[int, int] = (0, 1),
              progress: bool = True) -> list[dict[str, Any]]:
    """Run this shard's unfinished points; returns every record in the workdir afterwards."""
    if "sweep" not in config:
        raise ValueError("the config has no `sweep` section (checkpoint, variants, ratios, seeds, …)")
    for module in config.sweep.get("imports", ()):  # user modules that register corrections or baselines
        importlib.import_module(module)
    points = grid(config.sweep)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(workdir, config)
    _ensure_checkpoint(config)
    _terminate_torn_line(workdir)
    done = {r["id"] for r in read_results(workdir)}
    index, count = shard
    todo = [p for i, p in enumerate(points) if i % count == index and p.id not in done]
    runner = _Runner(config)
    if index == 0 and "dense" not in done:
        append_result(workdir, runner.dense())
    for p in tqdm(todo, desc=f"sweep {workdir.name}", disable=not progress, unit="point"):
        append_result(workdir, runner.run(p))
    records = read_results(workdir)
    write_text_atomic(workdir / SUMMARY, summary_table(records))
    return records


def summary_table(records: Iterable[dict[str, Any]]) -> str:
    """Markdown: one row per method+correction, one column per ratio; cells are the metric in % (mean over
    seeds) and the header gives each ratio's parameter sparsity."""
    records = list(records)
    dense = [r for r in records if r["method"] == "dense"]
    rows: dict[str, dict[float, list[float]]] = {}
    sparsity: dict[float, float] = {}
    for r in records:
        if r["method"] == "dense":
            continue
        rows.setdefault(f"{r['method']}:{r['correction']}", {}).setdefault(r["ratio"], []).append(r["value"])
        if r["method"] == "fold":
            sparsity[r["ratio"]] = r["param_sparsity"]
    ratios = sorted({ratio for cells in rows.values() for ratio in cells})
    known = {v: i for i, v in enumerate(PAPER_CV_VARIANTS)}
    rows = dict(sorted(rows.items(), key=lambda item: (known.get(item[0], len(known)), item[0])))
    head = ["method:correction"] + [f"r={x:g} ({100 * sparsity[x]:.1f} %)" if x in sparsity else f"r={x:g}"
                                    for x in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in rows.items():
        vals = [f"{100 * np.mean(cells[x]):.2f}" if x in cells else "" for x in ratios]
        lines.append("| " + " | ".join([name, *vals]) + " |")
    note = f"\nDense: {100 * dense[0]['value']:.2f} % ({dense[0]['params']:,} params).\n" if dense else "\n"
    return "\n".join(lines) + "\n" + note


PAPER_CV_VARIANTS = ("fold:none", "fold:fold_ar", "fold:fold_ar_fused", "fold:fold_dir", "fold:repair", "sp_l1:none",
                     "sp_l2:none", "sp_l2:repair", "ifm:none")
PAPER_CV_RATIOS = (0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75)


def cv_sweep_section(checkpoint: str, **changes: Any) -> dict[str, Any]:
    """The ``sweep`` section of the image-classification configs: the paper's CV methods (Fig. 6) over its
    channel ratios, per-layer variance ratios recorded at r = 0.5 (Fig. 4)."""
    section = dict(checkpoint=checkpoint, train_if_missing=True, imports=(), variants=PAPER_CV_VARIANTS,
                   ratios=PAPER_CV_RATIOS, seeds=(0,), n_init=10, repair_examples=10_000,
                   variance_ratio_at=(0.5,), variance_batch=500, di_steps=2000, di_batch_size=256)
    section.update(changes)
    return section
