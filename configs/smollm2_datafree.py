"""Data-free LLM folding against data-driven pruning on SmolLM2-135M: every method at the same widths, each with and
without the transformer corrections (consumer refit, RMSNorm tuning), each correction fed either real text or
windows sampled from the dense model itself. Perplexity on the held-out test plays.

    jaxfold data fetch smollm2 shakespeare
    jaxfold sweep --config configs/smollm2_datafree.py --workdir workdirs/smollm2_datafree
    python paper_figs/llm.py workdirs/smollm2_datafree --out docs/figures/smollm2_datafree

Variants read ``method:schedule[:correction[:calibration]]``: ``calibration`` is ``self`` (sampled from the dense
model: no external text at all), ``real`` (``lm.calibration``) or absent where nothing reads data. Every row of
results.jsonl names its ``method``, ``schedule``, ``correction`` and ``calibration`` (``real``, ``self`` or
``none``), so "no external text" is one filter: ``calibration in ("self", "none")``. ``--config.lm.text=FILE``
evaluates the same grid on any text. ``:core`` is the 20 % MLP-recipe column with the main rows (run first on a CPU);
``:quick`` the same as a smoke run (2 evaluation windows, 4 calibration windows). ``:extend`` is the other columns
(10 / 30 % and the ``recipe`` schedule) with the rows that decide the comparison: the plain compressions, Wanda-sp
on either calibration, the best data-free fold and Wanda-sp + refit without external text. ``:full`` evaluates
those rows at 20 % (``recipe_mlp``) on every test window (use its own ``--workdir``: the evaluation text differs).
"""

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib


def _base_config() -> ml_collections.ConfigDict:
    """configs/smollm2_shakespeare.py's model, texts and folding settings (configs are files, not a package)."""
    return config_lib.load_module(Path(__file__).with_name("smollm2_shakespeare.py")).get_config()


# (method, corrections): every compression with and without the corrections; Wanda-sp reads calibration itself.
# act_cluster = k-means on activation-scaled weights (fold only); refit = consumer refit; norm_tune = RMSNorm scales;
# act_cluster_select = act_cluster's clusters, each represented by its highest-energy member (the best data-free fold)
_ROWS = (("fold", "none"), ("fold", "refit"), ("fold", "act_cluster"), ("fold", "act_cluster+refit"),
         ("fold", "norm_tune"), ("fold", "refit+norm_tune"), ("magnitude", "none"), ("magnitude", "refit"),
         ("wanda_sp", "none"), ("wanda_sp", "refit"))
# the 20 % column run first (`:core`): each step alone, the best combination, every baseline with the refit
_CORE = (("fold", "none"), ("fold", "refit"), ("fold", "act_cluster"), ("fold", "act_cluster+refit"),
         ("fold", "norm_tune"), ("magnitude", "none"), ("magnitude", "refit"), ("wanda_sp", "none"),
         ("wanda_sp", "refit"))

# the other columns (`:extend`): (method, corrections, calibrations)
_EXTEND = (("fold", "none"), ("magnitude", "none"), ("wanda_sp", "none"), ("fold", "act_cluster+refit", ("self",)),
           ("wanda_sp", "refit", ("self",)), ("fold", "act_cluster_select+refit", ("self",)))

# the full protocol (`:full`, every test window: ~13 min of evaluation per row on an idle 2-core CPU), in the order
# that matters: the data-free fold and Wanda-sp on real text first
_FULL = (("fold", "act_cluster+refit", ("self",)), ("wanda_sp", "none", ("real",)), ("wanda_sp", "none", ("self",)),
         ("wanda_sp", "refit", ("self",)), ("fold", "none"), ("magnitude", "none"),
         ("fold", "act_cluster_select+refit", ("self",)))


def variants(schedules=("recipe_mlp", "recipe"), rows=_ROWS) -> tuple[str, ...]:
    """``method:schedule[:corrections:calibration]`` for every row; a row reading data runs on both calibrations
    unless it names its own (a third element)."""
    out = []
    for schedule in schedules:
        for method, corrections, *only in rows:
            data = method == "wanda_sp" or corrections != "none"
            for calibration in ((only[0] if only else ("self", "real")) if data else ("",)):
                parts = (method, schedule, corrections, calibration) if data else (method, schedule)
                out.append(":".join(p for p in parts if p))
    return tuple(out)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = _base_config()
    # calibration: 64 windows of 512 tokens (32,768 tokens) of real text or of self-generated text
    c.lm.calibration_windows = 64
    c.lm.calibration_batch = 8
    c.lm.self_calibration = dict(seed=0, temperature=1.0, top_p=1.0)
    c.sweep.variants = variants()
    # every option spelled out, so a row's record says what it ran with (override e.g. ...refit.target=dense)
    c.sweep.correction_options = dict(refit=dict(target="residual", which="compressed", ridge=1e-3),
                                      norm_tune=dict(loss="distill", steps=32, lr=1e-2, batch_size=1, progress=False),
                                      act_cluster=dict())
    c.sweep.generate_at = (0.2,)
    if arg in ("quick", "core"):
        c.sweep.variants = variants(("recipe_mlp",), _CORE)
        c.sweep.ratios = (0.2,)
    if arg == "extend":
        c.sweep.variants = variants(("recipe_mlp", "recipe"), _EXTEND)
        c.sweep.ratios = (0.2, 0.1, 0.3)
    if arg == "full":  # the full protocol (every test window) for the 20 % MLP-recipe rows that decide the comparison
        c.lm.max_windows = None
        c.sweep.variants = variants(("recipe_mlp",), _FULL)
        c.sweep.ratios = (0.2,)
    if arg == "quick":
        c.lm.max_windows = 2
        c.lm.calibration_windows = 4
    return c
