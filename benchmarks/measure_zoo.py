#!/usr/bin/env python
"""Measured size and FLOPs of the zoo vs the analytic counts: parameters from the (abstract) arrays, conv/dense
FLOPs traced from the forward pass (with and without the taps on zero padding), and XLA's cost analysis of the
compiled forward pass at batch 1, per example (per token for LLaMA, one token: context 1). Nothing is allocated.

    .venv/bin/python benchmarks/measure_zoo.py            # the table of docs/benchmarks.md
    .venv/bin/python benchmarks/measure_zoo.py --no-7b    # without the LLaMA-7B row (its compile takes ~20 s)
"""
import argparse
import time

import jax

from jaxfold import measure, models

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
               intermediate_size=1536, tie_word_embeddings=True)  # SmolLM2-135M's shapes


def zoo(with_7b: bool) -> list[tuple[str, models.ModelConfig]]:
    rows = [
        ("MLP 1× (32×32×3)", models.mlp()),
        ("LeNet5 (28×28×1)", models.lenet5()),
        ("VGG11-BN CIFAR head (32 px)", models.vgg11_bn(head="cifar", num_classes=10)),
        ("VGG11-BN w0.25 F-MNIST (28 px)", models.vgg11_bn(head="cifar", in_channels=1, width=0.25, image_size=28)),
        ("VGG11-BN ImageNet (224 px)", models.vgg11_bn(head="imagenet", num_classes=1000)),
        ("ResNet18 CIFAR stem (32 px)", models.resnet18(stem="cifar", num_classes=10)),
        ("ResNet18 w0.125 F-MNIST (28 px)", models.resnet18(stem="cifar", in_channels=1, width=0.125, image_size=28)),
        ("ResNet18 ImageNet (224 px)", models.resnet18(stem="imagenet", num_classes=1000)),
        ("ResNet50 CIFAR stem (32 px)", models.resnet50(stem="cifar", num_classes=10)),
        ("ResNet50 ImageNet (224 px)", models.resnet50(stem="imagenet", num_classes=1000)),
        ("SmolLM2-135M shapes (GQA, tied), per token", models.llama(**SMOLLM2)),
    ]
    if with_7b:
        rows.append(("LLaMA-7B shapes (MHA, untied), per token", models.llama()))
    return rows


def measure_row(cfg: models.ModelConfig) -> dict:
    apply_fn, args = measure.config_forward(cfg)
    variables = cfg.abstract_variables()
    t0 = time.perf_counter()
    traced = measure.matmul_flops(apply_fn, variables, *args)
    off_padding = measure.matmul_flops(apply_fn, variables, *args, padding_taps=False)
    t1 = time.perf_counter()
    xla = measure.flops(apply_fn, variables, *args)
    t2 = time.perf_counter()
    return {"params": cfg.param_count(), "params_measured": measure.param_count(variables), "flops": cfg.flops(),
            "traced": traced, "off_padding": off_padding, "xla": xla, "trace_s": t1 - t0, "compile_s": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-7b", dest="with_7b", action="store_false")
    args = p.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; FLOPs per example (LLaMA: per token), batch 1\n")
    print("| model | analytic params | measured params | analytic FLOPs | traced conv/dense | off padding | "
          "XLA FLOPs | XLA / analytic | trace s | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, cfg in zoo(args.with_7b):
        r = measure_row(cfg)
        print(f"| {name} | {r['params']:,} | {r['params_measured']:,} | {r['flops']:,} | {r['traced']:,.0f} | "
              f"{r['off_padding']:,.0f} | {r['xla']:,.0f} | {r['xla'] / r['flops']:.3f} | {r['trace_s']:.2f} | "
              f"{r['compile_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
