#!/usr/bin/env python
"""Perplexity-evaluation throughput on SmolLM2-135M: jaxfold (jitted, fp32) vs transformers (torch eager, fp32,
loaded from the same GGUF), same process, same windows, alternating runs; prints medians and the ratio.

    .venv/bin/python benchmarks/llm_eval_speed.py [--windows 2] [--seqlen 1024] [--repeats 3] [--only SIDE]

``--only jaxfold`` / ``--only transformers`` times one side alone in this process (run each in its own process to
see them without the other's threads: torch's OpenMP workers spin for a while after each call).
"""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from jaxfold.data.text import read_text_source
from jaxfold.eval.perplexity import perplexity, windows
from jaxfold.llm import load_language_model, logits_fn, smollm2_path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("jaxfold", "transformers"), default=None, help="time one side alone")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    ours = load_language_model("smollm2")  # its tokenizer serves both sides
    path = smollm2_path()
    ids = ours.encode(read_text_source("shakespeare:tempest"))
    w = windows(ids, args.seqlen)[: args.windows]
    fn = logits_fn(ours.config)
    if args.only != "transformers":
        perplexity(fn, ours.variables, ids, args.seqlen, 1, args.windows)  # compile once, not timed
    if args.only != "jaxfold":
        ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    t_ours, t_ref, ppl = [], [], {}
    for _ in range(args.repeats):
        if args.only != "transformers":
            t = time.perf_counter()
            ppl["jaxfold"] = perplexity(fn, ours.variables, ids, args.seqlen, 1, args.windows)["perplexity"]
            t_ours.append(time.perf_counter() - t)
        if args.only == "jaxfold":
            continue
        t = time.perf_counter()
        with torch.inference_mode():
            nll = [torch.nn.functional.cross_entropy(ref(torch.tensor(row[None])).logits[0, :-1].float(),
                                                     torch.tensor(row[1:]).long(), reduction="sum").item()
                   for row in w.astype(np.int64)]
        ppl["transformers"] = math.exp(sum(nll) / (len(w) * (args.seqlen - 1)))
        t_ref.append(time.perf_counter() - t)
    tokens = w.size
    out = {"tokens": int(tokens), "perplexity": ppl, "torch_threads": torch.get_num_threads()}
    for name, times in (("jaxfold", t_ours), ("transformers", t_ref)):
        if times:
            out[f"{name}_tok_s"] = round(tokens / statistics.median(times), 1)
    if t_ours and t_ref:
        out["ratio"] = round(out["jaxfold_tok_s"] / out["transformers_tok_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
