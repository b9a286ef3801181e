"""Language models from any source, one way: ``load_language_model(source)`` → config, variables, tokenizer.

``source`` is ``smollm2`` (the fetched SmolLM2-135M GGUF), a ``.gguf`` file, a Hugging Face checkpoint directory
(config.json + safetensors [+ tokenizer.json]) or a jaxfold checkpoint directory (e.g. a folded model; its
metadata names where its tokenizer comes from).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from jaxfold.data import fetch
from jaxfold.errors import MissingFile, UserError
from jaxfold.io import checkpoint

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    config: Any  # LlamaConfig
    variables: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_source: str  # a .gguf or tokenizer.json path, stored with folded checkpoints

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens (the perplexity protocol tokenises the raw text once)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def smollm2_path() -> Path:
    path = fetch.dataset_dir("smollm2") / SMOLLM2_FILE
    if not path.exists():
        raise MissingFile(f"SmolLM2 is not fetched ({path} missing): run `jaxfold data fetch smollm2`")
    return path


def load_tokenizer(source: str | os.PathLike) -> Any:
    """A ``tokenizers.Tokenizer`` from a GGUF file's metadata or a tokenizer.json."""
    source = Path(source)
    if source.suffix == ".gguf":
        from jaxfold.io.gguf_import import gguf_tokenizer

        return gguf_tokenizer(source)
    from tokenizers import Tokenizer

    if not source.exists():
        raise MissingFile(f"tokenizer file {source} does not exist")
    return Tokenizer.from_file(str(source))


def load_language_model(source: str | os.PathLike, dtype: str = "float32") -> LanguageModel:
    """See the module docstring for what ``source`` may be; a clear error names what is missing."""
    if str(source) == "smollm2":
        source = smollm2_path()
    path = Path(source)
    if path.suffix == ".gguf" and path.is_file():
        from jaxfold.io.gguf_import import load_gguf

        config, variables, tokenizer = load_gguf(path, dtype)
        return LanguageModel(config, variables, tokenizer, str(path))
    if path.is_dir() and (path / "config.json").exists():
        from jaxfold.io.hf_import import load_hf_dir

        config, variables = load_hf_dir(path, dtype)
        if not (path / "tokenizer.json").exists():
            raise MissingFile(f"{path} has no tokenizer.json (needed to tokenise text)")
        return LanguageModel(config, variables, load_tokenizer(path / "tokenizer.json"), str(path / "tokenizer.json"))
    if checkpoint.exists(path):
        variables, config, meta = checkpoint.restore(path)
        if "tokenizer" not in meta:
            raise UserError(f"checkpoint {path} records no tokenizer (metadata key 'tokenizer'); it was not "
                            "written by jaxfold's LLM commands")
        return LanguageModel(config, variables, load_tokenizer(meta["tokenizer"]), meta["tokenizer"])
    raise MissingFile(f"{source}: not 'smollm2', a .gguf file, an HF checkpoint directory (config.json) or a "
                      "jaxfold checkpoint")


@functools.cache
def logits_fn(config: Any) -> Any:
    """A stable ``(variables, ids) -> logits`` per config, so jitted evaluators compile once per model shape."""
    module = config.module()
    return lambda variables, ids: module.apply(variables, ids)
