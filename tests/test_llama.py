"""LLaMA: analytic counts, greedy generation with a KV cache, fold specs (both GQA modes), and the HF importer and
exporter against transformers' LlamaForCausalLM (skipped without transformers)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import models, tree
from jaxfold.folding import fold
from jaxfold.merge import duplicate_channels, permute_group
from jaxfold.models.llama import (
    LlamaConfig,
    fold_spec,
    fold_within_groups,
    generate,
    permute_heads_within_groups,
)

GQA = models.llama(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   intermediate_size=96, max_position_embeddings=64)
MHA_TIED = models.llama(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=40,
                        tie_word_embeddings=True)
_APPLY = {}


def _random_variables(cfg, seed=0):
    """Random weights without compiling an initialiser: normal(0.02) matrices, norm scales 1 ± 0.1."""
    rng = np.random.default_rng(seed)
    flat = {p: (1 + 0.1 * rng.normal(size=s) if p.endswith("scale") else 0.02 * rng.normal(size=s)).astype(np.float32)
            for p, (s, _) in tree.shapes(cfg.abstract_variables()).items()}
    return tree.unflatten(flat)


def _logits(cfg, variables, ids):
    if cfg not in _APPLY:
        module = cfg.module()
        _APPLY[cfg] = jax.jit(lambda v, x: module.apply(v, x))
    return np.asarray(_APPLY[cfg](variables, jnp.asarray(ids)))


def _ids(cfg, shape=(2, 12), seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


@pytest.fixture(scope="module", params=["gqa", "mha_tied"])
def model(request):
    cfg = GQA if request.param == "gqa" else MHA_TIED
    return cfg, _random_variables(cfg)


# --- config, counts ---------------------------------------------------------------------------------------------
def test_param_tree_counts_and_forward(model):
    cfg, _ = model
    variables = cfg.init(jax.random.key(0))
    shapes = {p: s for p, (s, _) in tree.shapes(variables).items()}
    d, hd, hq, hkv, f = cfg.hidden_size, cfg.head_dim, cfg.num_heads[0], cfg.num_kv_heads[0], cfg.intermediate_sizes[0]
    assert shapes["params/embed/embedding"] == (cfg.vocab_size, d)
    assert shapes["params/block_1/attn/q/kernel"] == (d, hq * hd)
    assert shapes["params/block_1/attn/k/kernel"] == shapes["params/block_1/attn/v/kernel"] == (d, hkv * hd)
    assert shapes["params/block_1/attn/o/kernel"] == (hq * hd, d)
    assert shapes["params/block_0/mlp/down/kernel"] == (f, d) and shapes["params/block_0/mlp_norm/scale"] == (d,)
    assert ("params/lm_head/kernel" in shapes) == (not cfg.tie_word_embeddings)
    assert tree.count(variables["params"]) == cfg.param_count()
    matrices = sum(int(np.prod(s)) for p, s in shapes.items() if p.endswith("kernel"))
    lm_head = 0 if "params/lm_head/kernel" in shapes else cfg.vocab_size * d
    assert cfg.flops() == 2 * (matrices + lm_head)
    assert cfg.flops(context=10) == cfg.flops() + 2 * 2 * hq * hd * 10 * cfg.num_layers
    logits = _logits(cfg, variables, _ids(cfg))
    assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_per_block_widths_and_json_round_trip():
    cfg = GQA.replace(num_heads=(4, 3), num_kv_heads=(2, 1), intermediate_sizes=(96, 17),
                      rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert tree.count(cfg.abstract_variables()["params"]) == cfg.param_count()
    back = models.config_from_dict(json.loads(cfg.to_json()))
    assert back == cfg and hash(back) == hash(cfg) and not back.is_uniform()
    assert models.build("llama", num_layers=1, hidden_size=8, num_heads=2, vocab_size=5, intermediate_size=3) \
        .num_heads == (2,)


@pytest.mark.parametrize(("changes", "match"), [
    (dict(num_heads=(4, 3)), "block 1: num_heads 3 is not a multiple of num_kv_heads 2"),
    (dict(intermediate_sizes=(96,)), "intermediate_sizes needs 2 entries"),
    (dict(num_kv_heads=(2, 0)), "num_kv_heads entries must be ≥ 1"),
    (dict(dtype="float16"), "dtype must be one of"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_type must be one of"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 2.0}), "needs exactly the keys"),
])
def test_bad_configs_fail_clearly(changes, match):
    with pytest.raises(ValueError, match=match):
        GQA.replace(**changes)


# --- generation -------------------------------------------------------------------------------------------------
def _greedy_by_full_forward(cfg, variables, prompt, n, eos=None):
    """Reference: repeated full forward passes (one compile: ids padded to a fixed length; the model is causal)."""
    ids = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, len(prompt) + n), np.int32)
        padded[0, : len(ids)] = ids
        ids.append(int(np.argmax(_logits(cfg, variables, padded)[0, len(ids) - 1])))
        if ids[-1] == eos:
            break
    return np.asarray(ids)


def test_chunked_causal_attention_equals_one_pass():
    """Long inputs without a cache attend in query chunks (keys after a chunk skipped); with a cache the same
    tokens go through one unchunked pass over the masked cache: same logits."""
    from jaxfold.models.llama import init_cache

    cfg, variables = GQA.replace(max_position_embeddings=512), _random_variables(GQA, 4)
    ids = _ids(cfg, shape=(1, 300), seed=5)  # > 128 positions: 3 chunks of 100
    chunked = _logits(cfg, variables, ids)
    one_pass, _ = cfg.module().apply(variables, jnp.asarray(ids), init_cache(cfg, 1, 300), 0)
    np.testing.assert_allclose(chunked, np.asarray(one_pass), atol=2e-5, rtol=0)


def test_generate_with_cache_equals_full_forward_greedy():
    cfg, variables = GQA, _random_variables(GQA, 3)
    prompt = [5, 17, 3, 99, 42]
    expected = _greedy_by_full_forward(cfg, variables, prompt, 8)
    np.testing.assert_array_equal(generate(cfg, variables, prompt, 8), expected)
    eos = int(expected[len(prompt) + 2])  # stops after the third new token, eos included
    stop = list(expected).index(eos, len(prompt))
    np.testing.assert_array_equal(generate(cfg, variables, np.asarray(prompt), 8, eos_id=eos), expected[: stop + 1])
    batch = generate(cfg, variables, np.stack([prompt, prompt[::-1]]), 8)
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1], _greedy_by_full_forward(cfg, variables, prompt[::-1], 8))
    np.testing.assert_array_equal(generate(cfg, variables, prompt, 0), prompt)


# --- fold specs -------------------------------------------------------------------------------------------------
def _assert_close(a, b, what=""):
    diff = float(np.abs(a - b).max())
    assert diff <= 1e-5 * max(1.0, float(np.abs(b).max())), f"{what}: max diff {diff:.3g}"


def test_spec_check_and_permutation_invariance(model):
    cfg, variables = model
    ids = _ids(cfg)
    ref = _logits(cfg, variables, ids)
    rng = np.random.default_rng(0)
    for gqa in ("kv_groups", "within_groups"):
        spec = fold_spec(cfg, gqa)
        spec.check(variables)
        widths = spec.widths(variables)
        names = [g.name for g in spec.groups]
        assert names == [f"block{i}.{k}" for i in range(cfg.num_layers) for k in ("attn", "mlp")
                         if k == "mlp" or gqa == "kv_groups" or cfg.groups_per_kv(i) == 1]
        for group in spec.groups:
            permuted = permute_group(variables, group, rng.permutation(widths[group.name]))
            _assert_close(_logits(cfg, permuted, ids), ref, group.name)
    if cfg.groups_per_kv(0) > 1:  # the within-groups symmetry: reorder query heads inside every KV group
        r, hkv = cfg.groups_per_kv(0), cfg.num_kv_heads[0]
        permuted = permute_heads_within_groups(cfg, variables, 0, [rng.permutation(r) for _ in range(hkv)])
        _assert_close(_logits(cfg, permuted, ids), ref, "within groups")
    assert cfg.fold_spec() == fold_spec(cfg, "kv_groups")


def test_kv_group_fold_rebuilds_at_analytic_size(model):
    cfg, variables = model
    result = fold(variables, cfg.fold_spec(), 0.5, jax.random.key(0), clusterer="ward")
    folded = cfg.with_widths(result.widths)
    r = cfg.groups_per_kv(0)
    assert folded.num_kv_heads == (cfg.num_kv_heads[0] // 2,) * 2
    assert folded.num_heads == (r * folded.num_kv_heads[0],) * 2
    assert folded.intermediate_sizes == (cfg.intermediate_sizes[0] // 2,) * 2
    assert tree.compare(folded.abstract_variables(), result.variables) == []
    assert folded.param_count() == tree.count(result.variables["params"]) < cfg.param_count()
    assert np.isfinite(_logits(folded, result.variables, _ids(cfg))).all()


def test_duplicated_kv_groups_and_neurons_fold_back_losslessly():
    cfg, variables = GQA, _random_variables(GQA, 4)
    spec = cfg.fold_spec()
    widths = spec.widths(variables)
    wide = variables
    for group in spec.groups:  # duplicate KV group 1 and some MLP neurons: the same function, wider
        n = widths[group.name]
        wide = duplicate_channels(wide, group, np.concatenate([np.arange(n), [n - 1, 0]]))
    wide_cfg = cfg.with_widths(spec.widths(wide))
    assert wide_cfg.num_kv_heads == (4, 4) and wide_cfg.num_heads == (8, 8)
    ids = _ids(cfg)
    _assert_close(_logits(wide_cfg, wide, ids), _logits(cfg, variables, ids), "widened")
    back = fold(wide, wide_cfg.fold_spec(), lambda g, n: widths[g], jax.random.key(0), clusterer="ward")
    assert cfg.with_widths(back.widths) == cfg
    _assert_close(_logits(cfg, back.variables, ids), _logits(cfg, variables, ids), "folded back")


def test_fold_within_groups():
    # An MHA model (2 heads) whose query heads are duplicated inside each KV group is GQA with 4 heads / 2 KV heads;
    # folding within groups to one head per group must give the original function back.
    base_cfg = GQA.replace(num_heads=(2, 2), num_kv_heads=(2, 2))
    base = _random_variables(base_cfg, 5)
    hd = GQA.head_dim
    wide = base
    for i in range(GQA.num_layers):
        heads = np.repeat(np.arange(2), 2)  # new heads 0,1 copy head 0 (group 0); 2,3 copy head 1 (group 1)
        cols = (heads[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
        q = np.asarray(tree.get(base, f"params/block_{i}/attn/q/kernel"))
        o = np.asarray(tree.get(base, f"params/block_{i}/attn/o/kernel"))
        wide = tree.set_(wide, f"params/block_{i}/attn/q/kernel", q[:, cols])
        wide = tree.set_(wide, f"params/block_{i}/attn/o/kernel", o[cols, :] / 2)
    ids = _ids(GQA)
    ref = _logits(base_cfg, base, ids)
    _assert_close(_logits(GQA, wide, ids), ref, "widened")
    same_cfg, same = fold_within_groups(GQA, wide, 0.0, jax.random.key(0))
    assert same_cfg == GQA and tree.compare(same.variables, wide) == []
    new_cfg, result = fold_within_groups(GQA, wide, 0.5, jax.random.key(0), clusterer="ward")
    assert new_cfg.num_heads == (2, 2) and new_cfg.num_kv_heads == (2, 2) and new_cfg.intermediate_sizes == (48, 48)
    assert new_cfg.param_count() == tree.count(result.variables["params"]) == result.report["params_after"]
    assert tree.compare(new_cfg.abstract_variables(), result.variables) == []
    assert result.widths["block0.attn"] == 1 and result.labels["block0.attn"].tolist() == [0, 0, 1, 1]
    heads_only = fold_within_groups(GQA, wide, {"block0.attn": 0.5, "block1.attn": 0.5}, jax.random.key(0),
                                    clusterer="ward")
    assert heads_only[0] == base_cfg.replace(num_kv_heads=(2, 2))
    _assert_close(_logits(base_cfg, heads_only[1].variables, ids), ref, "heads folded back")


# --- Hugging Face import / export -------------------------------------------------------------------------------
TINY_HF = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=64)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def _hf_model(tie, rope_scaling=None, seed=0):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**TINY_HF, tie_word_embeddings=tie,  # (it mutates rope_scaling)
                                      rope_scaling=None if rope_scaling is None else dict(rope_scaling))
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm scales, so a mis-mapped norm shows up
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize(("tie", "sharded", "rope_scaling"), [
    (False, False, None), (True, True, None), (False, True, LLAMA3)])
def test_load_hf_dir_matches_transformers(tmp_path, tie, sharded, rope_scaling):
    from jaxfold.io.hf_import import load_hf_dir

    model = _hf_model(tie, rope_scaling)
    model.save_pretrained(tmp_path, **({"max_shard_size": "50KB"} if sharded else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded
    cfg, variables = load_hf_dir(tmp_path)
    assert cfg.num_heads == (4, 4) and cfg.num_kv_heads == (2, 2) and cfg.tie_word_embeddings == tie
    assert cfg.rope_scaling == (None if rope_scaling is None else tuple(sorted(rope_scaling.items())))
    ids = _ids(cfg, (2, 40 if rope_scaling else 12))
    diff = np.abs(_logits(cfg, variables, ids) - _torch_logits(model, ids)).max()
    assert diff <= 1e-4, diff


def test_hf_config_forms_and_refusals():
    from jaxfold.io.hf_import import llama_config_from_hf

    v5 = {**TINY_HF, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16",
          "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
          "attention_dropout": 0.0, "pretraining_tp": 1, "use_cache": True, "transformers_version": "5.0.0"}
    del v5["rope_theta"]
    v5["rope_parameters"] = {"rope_theta": 500000.0, **LLAMA3}
    v4 = {**v5, "rope_theta": 500000.0, "rope_scaling": LLAMA3}
    del v4["rope_parameters"], v4["head_dim"]
    a, b = llama_config_from_hf(v5), llama_config_from_hf(v4)
    assert a == b and a.rope_theta == 500000.0 and dict(a.rope_scaling)["factor"] == 8.0 and a.head_dim == 16
    assert llama_config_from_hf(v5, dtype="bfloat16").dtype == "bfloat16"
    plain = llama_config_from_hf({**v4, "rope_scaling": None})
    assert plain.rope_scaling is None and plain.rope_theta == 500000.0
    refused = [({"attention_bias": True}, "attention_bias"), ({"mlp_bias": True}, "mlp_bias"),
               ({"hidden_act": "gelu"}, "hidden_act"), ({"sliding_window": 4096}, "sliding_window"),
               ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
               ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "rope_type='dynamic'"),
               ({"model_type": "mistral"}, "model_type"), ({"qk_layernorm": True}, r"\['qk_layernorm'\]"),
               ({"rope_scaling": {**LLAMA3, "attention_factor": 2.0}}, "attention_factor"),
               ({"quantization_config": {"bits": 4}}, "quantization_config")]
    for change, match in refused:
        with pytest.raises(ValueError, match=match):
            llama_config_from_hf({**v4, **change})


def test_convert_state_dict_is_strict():
    from jaxfold.io.hf_import import convert_state_dict

    cfg = GQA
    rng = np.random.default_rng(0)
    d, v = cfg.hidden_size, cfg.vocab_size
    tensors = {"model.embed_tokens.weight": rng.normal(size=(v, d)), "model.norm.weight": np.ones(d),
               "lm_head.weight": rng.normal(size=(v, d))}
    for i in range(2):
        p = f"model.layers.{i}"
        tensors.update({f"{p}.input_layernorm.weight": np.ones(d), f"{p}.post_attention_layernorm.weight": np.ones(d),
                        f"{p}.self_attn.q_proj.weight": rng.normal(size=(64, d)),
                        f"{p}.self_attn.k_proj.weight": rng.normal(size=(32, d)),
                        f"{p}.self_attn.v_proj.weight": rng.normal(size=(32, d)),
                        f"{p}.self_attn.o_proj.weight": rng.normal(size=(d, 64)),
                        f"{p}.mlp.gate_proj.weight": rng.normal(size=(96, d)),
                        f"{p}.mlp.up_proj.weight": rng.normal(size=(96, d)),
                        f"{p}.mlp.down_proj.weight": rng.normal(size=(d, 96))})
    variables = convert_state_dict(cfg, tensors)
    np.testing.assert_array_equal(variables["params"]["block_1"]["attn"]["o"]["kernel"],
                                  tensors["model.layers.1.self_attn.o_proj.weight"].T.astype(np.float32))
    missing = {k: a for k, a in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight: expected shape \(96, 64\)"):
        convert_state_dict(cfg, missing)
    with pytest.raises(ValueError, match=r"unexpected model\.layers\.0\.self_attn\.q_proj\.bias"):
        convert_state_dict(cfg, {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(64)})
    with pytest.raises(ValueError, match=r"k_proj\.weight: expected shape \(32, 64\).*got \(64, 64\)"):
        convert_state_dict(cfg, {**tensors, "model.layers.0.self_attn.k_proj.weight": np.zeros((64, 64))})
    tied = cfg.replace(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        convert_state_dict(tied, tensors)
    same = convert_state_dict(tied, {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]})
    assert "lm_head" not in same["params"]


def test_load_hf_dir_errors(tmp_path):
    from jaxfold.io.hf_import import load_hf_dir

    with pytest.raises(FileNotFoundError, match="no HF checkpoint directory"):
        load_hf_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"neither model\.safetensors.*convert them to safetensors"):
        load_hf_dir(tmp_path)


def test_save_hf_dir_round_trip_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from jaxfold.io.hf_import import load_hf_dir, save_hf_dir

    cfg = GQA.replace(rope_scaling=LLAMA3, rope_theta=500000.0)
    variables = _random_variables(cfg, 6)
    folded = fold(variables, cfg.fold_spec(), 0.5, jax.random.key(0), n_init=2)  # a uniformly folded model
    small = cfg.with_widths(folded.widths)
    save_hf_dir(small, folded.variables, tmp_path, extra_config={"eos_token_id": 7})
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert model.config.eos_token_id == 7
    ids = _ids(cfg, (2, 40))
    diff = np.abs(_logits(small, folded.variables, ids) - _torch_logits(model, ids)).max()
    assert diff <= 1e-4, diff
    back_cfg, back = load_hf_dir(tmp_path)
    assert back_cfg == small
    for path, a in tree.flatten(folded.variables).items():
        np.testing.assert_array_equal(np.asarray(a), tree.get(back, path))
    uneven = cfg.with_widths({"block0.mlp": 10})
    with pytest.raises(ValueError, match="same widths in every block"):
        save_hf_dir(uneven, _random_variables(uneven), tmp_path / "x")


def test_hf_bfloat16_checkpoint(tmp_path):
    import torch

    from jaxfold.io.hf_import import load_hf_dir

    model = _hf_model(tie=True, seed=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path)  # bf16 tensors on disk
    model = model.float()  # the same (bf16-representable) weights in float32
    ids = _ids(GQA)
    cfg, variables = load_hf_dir(tmp_path)
    assert np.abs(_logits(cfg, variables, ids) - _torch_logits(model, ids)).max() <= 1e-4
    cfg16, variables16 = load_hf_dir(tmp_path, dtype="bfloat16")
    assert cfg16.dtype == "bfloat16" and variables16["params"]["embed"]["embedding"].dtype == jnp.bfloat16
    logits = _logits(cfg16, variables16, ids)
    assert logits.dtype == np.float32 and np.abs(logits - _torch_logits(model, ids)).max() < 0.05


def test_llama_config_type():
    assert isinstance(GQA, LlamaConfig) and GQA.arch == "llama" and "llama" in models.known_archs()
