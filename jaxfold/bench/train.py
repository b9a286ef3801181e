"""``jaxfold bench train``: jaxfold vs PyTorch-eager throughput on the same ResNet18, same machine, one process.

Why: a claim like "training ResNet18 on CPU takes ~45 min" only means something next to a baseline. Both models
have identical widths (asserted via the parameter count), see the same fixed random batch (no data pipeline), and
are timed in interleaved rounds so background load hits both frameworks alike; medians are reported.

    jaxfold bench train --width 0.125 --batch 128 --repeats 5 --steps 10 --out benchmarks/resnet18_w0.125_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxfold import models
from jaxfold.bench import emit
from jaxfold.models.resnet import ResNetConfig
from jaxfold.train import make_optimizer, make_train_step

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4  # the paper's recipe, used by both frameworks


def _torch_resnet(cfg: ResNetConfig) -> Any:
    """A torch ResNet (basic blocks) with exactly ``cfg``'s widths and shortcuts, built lazily (torch is optional)."""
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin: int, inner: int, cout: int, stride: int, proj: bool) -> None:
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, inner, 3, stride), nn.ReLU(inplace=True),
                                      *conv_bn(inner, cout, 3, 1))
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if proj else nn.Identity()

        def forward(self, x):
            return (self.body(x) + self.shortcut(x)).relu_()

    if cfg.block != "basic" or cfg.stem != "cifar":
        raise ValueError("the torch baseline covers basic-block ResNets with the CIFAR stem only")
    blocks = [Block(cin, inner[0], cout, stride, proj)
              for (cin, cout, stride, proj), inner in zip(cfg._block_io(), cfg.inner_widths, strict=True)]
    return nn.Sequential(*conv_bn(cfg.in_channels, cfg.stem_width, 3, 1), nn.ReLU(inplace=True), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cfg.stream_widths[-1], cfg.num_classes))


def _timers(args: argparse.Namespace, torch: Any) -> tuple[dict[str, Callable[[], None]], dict[str, Any]]:
    """One zero-argument callable per measured thing, each running ``--steps`` steps and waiting for them."""
    cfg = models.build("resnet18", stem="cifar", in_channels=args.in_channels, num_classes=10, width=args.width,
                       image_size=args.image_size)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((args.batch, *cfg.input_shape), dtype=np.float32)
    y_np = rng.integers(0, cfg.num_classes, args.batch)

    module = cfg.module()
    variables = cfg.init(jax.random.key(0))
    train_cfg = ml_collections.ConfigDict(dict(epochs=1, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY))
    tx = make_optimizer(train_cfg, steps_per_epoch=10**6)  # long cosine: the lr stays ~0.1 while timing
    jax_step = make_train_step(module, tx)
    jax_eval = jax.jit(lambda v, x: jnp.argmax(module.apply(v, x, train=False), -1))
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}
    x, y, key = jax.device_put(x_np), jax.device_put(y_np.astype(np.int32)), jax.random.key(1)

    model = _torch_resnet(cfg)
    n_torch = sum(p.numel() for p in model.parameters())
    assert n_torch == cfg.param_count(), f"torch model has {n_torch} params, jaxfold {cfg.param_count()}"
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y_np)

    def jax_train() -> None:
        nonlocal state
        for _ in range(args.steps):
            state, metrics = jax_step(state, x, y, key)
        jax.block_until_ready((state, metrics))

    def jax_infer() -> None:
        v = {"params": state["params"], "batch_stats": state["batch_stats"]}
        jax.block_until_ready([jax_eval(v, x) for _ in range(args.steps)])

    def torch_train() -> None:
        model.train()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt), yt).backward()
            opt.step()

    def torch_infer() -> None:
        model.eval()
        with torch.no_grad():
            for _ in range(args.steps):
                model(xt).argmax(1)

    return ({"jaxfold_train": jax_train, "torch_train": torch_train, "jaxfold_eval": jax_infer,
             "torch_eval": torch_infer}, {"params": cfg.param_count(), "stream_widths": list(cfg.stream_widths)})


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="jaxfold bench train",
                                description="jaxfold vs PyTorch eager throughput, ResNet18 (CIFAR stem)")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians over these")
    p.add_argument("--steps", type=int, default=10, help="consecutive steps timed per round and thing")
    p.add_argument("--torch-threads", type=int, default=0, help="default (0): os.cpu_count(), as XLA uses all cores")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    if min(args.batch, args.repeats, args.steps, args.image_size, args.in_channels) < 1 or args.width <= 0:
        p.error("--width must be > 0 and --batch/--repeats/--steps/--image-size/--in-channels >= 1")
    try:
        import torch
    except ImportError:
        print("jaxfold bench: PyTorch is needed for the baseline; install it with: pip install -e .[dev]",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    load = os.getloadavg()[0]  # others' work: multi-threaded torch spin-waits collapse (10-50×) on a busy machine
    if load > 0.5:
        print(f"jaxfold bench: warning: 1-min load average is {load:.2f} before starting; other processes will "
              "distort (PyTorch especially) — measure on a quiet machine", file=sys.stderr)
    torch.manual_seed(0)

    timers, info = _timers(args, torch)
    for fn in timers.values():  # warm-up: jit compilation, torch allocator / oneDNN primitive caches
        fn()
    rates: dict[str, list[float]] = {name: [] for name in timers}
    for r in range(args.repeats):
        names = list(timers) if r % 2 == 0 else list(timers)[::-1]  # alternate order: no framework always goes first
        for name in names:
            t0 = time.perf_counter()
            timers[name]()
            rates[name].append(args.batch * args.steps / (time.perf_counter() - t0))

    stats = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v} for k, v in rates.items()}
    result = {
        "benchmark": "train", "model": "resnet18", "stem": "cifar", "width": args.width, "batch": args.batch,
        "image_size": args.image_size, "in_channels": args.in_channels, "repeats": args.repeats, "steps": args.steps,
        **info, "device_kind": jax.devices()[0].device_kind, "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__, "torch_version": torch.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_avg_1min_before": load, "images_per_s": stats,
        "ratio_train": stats["jaxfold_train"]["median"] / stats["torch_train"]["median"],
        "ratio_eval": stats["jaxfold_eval"]["median"] / stats["torch_eval"]["median"],
    }
    print(f"ResNet18 (CIFAR stem) width {args.width}, batch {args.batch}, {args.image_size}×{args.image_size}×"
          f"{args.in_channels}, {info['params']:,} params; {result['device_kind']}, {os.cpu_count()} CPUs, "
          f"torch threads {result['torch_threads']}; {args.repeats}×{args.steps} steps\n")
    print("| what | jaxfold img/s (min–max) | torch img/s (min–max) | jaxfold/torch |\n|---|---|---|---|")
    for kind in ("train", "eval"):
        j, t = stats[f"jaxfold_{kind}"], stats[f"torch_{kind}"]
        print(f"| {kind} | {j['median']:.1f} ({j['min']:.1f}–{j['max']:.1f}) | {t['median']:.1f} "
              f"({t['min']:.1f}–{t['max']:.1f}) | {result[f'ratio_{kind}']:.2f}× |")
    return emit(result, args.out)
