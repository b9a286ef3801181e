"""SmolLM2-135M (the real pretrained LLaMA-architecture model reachable here) folded on held-out Shakespeare:
folding vs magnitude pruning vs Wanda-sp at ≈ 10/20/30 % of parameters removed, with the paper's block recipe
(as fractions of depth) and a uniform schedule; perplexity on the test plays; greedy generations.

    jaxfold data fetch smollm2 shakespeare
    jaxfold sweep --config configs/smollm2_shakespeare.py --workdir workdirs/sweep_smollm2
    jaxfold ppl --model smollm2 --text shakespeare:test --seqlen 1024 --max-windows 8   # dense only
    jaxfold fold --config configs/smollm2_shakespeare.py --workdir workdirs/smollm2_uniform20 \
        --config.fold.schedule=uniform --config.fold.target=0.2          # W/checkpoint, and W/hf for transformers
    jaxfold ppl --model workdirs/smollm2_uniform20/checkpoint --text shakespeare:test --seqlen 1024 --max-windows 8

`:quick` evaluates 2 windows and calibrates Wanda-sp on 2 (a smoke run); on a GPU raise lm.max_windows (None = all).
`--config.lm.calibration=self` calibrates on windows sampled from the dense model itself instead of the train plays
(options in an optional `lm.self_calibration` dict: temperature, top_p, seed; see docs/self_calibration.md).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # text: the held-out test plays (jaxfold.data.text.SHAKESPEARE_TEST); calibration (Wanda-sp): the train works
    c.lm = dict(source="smollm2", dtype="float32", text="shakespeare:test", seqlen=1024, max_windows=8,
                calibration="shakespeare:train", calibration_seqlen=512, calibration_windows=16, calibration_batch=8)
    c.sweep = dict(variants=("fold:recipe", "fold:uniform", "magnitude:recipe", "magnitude:uniform",
                             "wanda_sp:recipe", "wanda_sp:uniform"),
                   ratios=(0.1, 0.2, 0.3), seeds=(0,), imports=(),
                   # take no key: with several seeds they run at the first only (jaxfold.sweep.variant_seeds)
                   deterministic=("magnitude", "wanda_sp"),
                   # one k-means restart: with the Hartigan refinement it already beats the official PCA + Ward on
                   # every group of the recipe at 4.5x its speed on this CPU (docs/benchmarks.md); each restart
                   # more costs about as much again (n_init=10: ~95 s per fold here)
                   clusterer="kmeans", n_init=1, max_iter=300,
                   generate_prompts=("The capital of France is", "To be, or not to be,"),
                   generate_at=(0.2,), max_new_tokens=24)
    # `jaxfold fold`: lm.source folded with a per-block schedule (recipe, uniform, recipe_mlp) calibrated to remove
    # `target` of the parameters, as the sweep folds; writes W/checkpoint and, when every block keeps the same
    # widths (uniform), an HF directory W/hf; evaluate=True adds the perplexity on lm.text to the report
    # correction: a transformer correction or a chain (act_cluster+refit); one that reads data calibrates on
    # lm.calibration (a text source, or "self": windows sampled from the dense model, no external text)
    c.fold = dict(schedule="recipe", target=0.2, correction="none", clusterer="kmeans", n_init=1, max_iter=300,
                  seed=0, evaluate=False, hf_dir=True, imports=(),
                  correction_options=dict(refit=dict(target="residual", which="compressed", ridge=1e-3),
                                          norm_tune=dict(loss="distill", steps=32, lr=1e-2, batch_size=1,
                                                         progress=False)))
    if arg == "demo":  # `make demo`: fold vs magnitude with the paper's recipe at 10 and 20 % (~3 min CPU)
        c.lm.max_windows = 4
        c.sweep.variants = ("fold:recipe", "magnitude:recipe")
        c.sweep.ratios = (0.1, 0.2)
        c.sweep.seeds = (0, 1, 2)  # the fold's mean ± std over 3 clusterings; magnitude runs once
        c.sweep.generate_prompts = ("The capital of France is",)
    if arg == "quick":
        c.lm.max_windows = 2
        c.lm.calibration_windows = 2
        c.sweep.ratios = (0.2,)
    return c
