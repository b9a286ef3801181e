"""LLaMA-2-7B (meta-llama/Llama-2-7b-hf) on WikiText-2 — the paper's Table 4.

Weights and data are paths you provide (an HF checkpoint directory with tokenizer.json; WikiText-2 raw's
wiki.test.raw / wiki.train.raw). On a GPU with ≥ 40 GB:

    jaxfold sweep --config configs/llama2_7b.py --workdir workdirs/sweep_llama2_7b \
        --config.lm.source=/path/to/llama2_7b --config.lm.text=wikitext:/path/to/wiki.test.raw \
        --config.lm.calibration=wikitext:/path/to/wiki.train.raw
    jaxfold fold --config configs/llama2_7b.py --workdir workdirs/llama2_7b_recipe20 \
        --config.lm.source=/path/to/llama2_7b
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lm = dict(source="/path/to/llama2_7b", dtype="bfloat16", text="wikitext:/path/to/wiki.test.raw", seqlen=4096,
                max_windows=None, calibration="wikitext:/path/to/wiki.train.raw", calibration_seqlen=4096,
                calibration_windows=128, sparsity_tolerance=0.01)
    # Wanda's protocol: seqlen = max_position_embeddings, all windows; 128 calibration sequences for Wanda-sp
    c.sweep = dict(variants=("fold:recipe", "magnitude:recipe", "wanda_sp:recipe", "fold:uniform"),
                   ratios=(0.2,), seeds=(0,), imports=(), clusterer="kmeans", n_init=10, max_iter=300,
                   generate_prompts=("The capital of France is",), generate_at=(0.2,), max_new_tokens=100)
    # `jaxfold fold --config.lm.source=…`: the paper's recipe at 20 % of the parameters (no HF directory: the recipe's
    # widths differ between blocks; --config.fold.schedule=uniform gets one)
    c.fold = dict(schedule="recipe", target=0.2, correction="none", clusterer="kmeans", n_init=10, max_iter=300,
                  seed=0, evaluate=False, hf_dir=True, imports=())
    return c
