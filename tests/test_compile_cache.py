"""The CLI's persistent compilation cache: on by default under the cache root, off with JAXFOLD_COMPILE_CACHE=0,
a directory of its own when the variable names one, never fatal; a fresh process really writes compiled
executables there. (conftest.py turns it off for the test session, so tests never write into the user's home.)"""

import os
import subprocess
import sys

from jaxfold import cli, compile_cache


def test_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXFOLD_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path / "data"))
    assert compile_cache.cache_dir() == tmp_path / "data" / "xla-cache"  # on by default, beside the datasets
    monkeypatch.setenv("JAXFOLD_COMPILE_CACHE", str(tmp_path / "xla"))
    assert compile_cache.cache_dir() == tmp_path / "xla"
    monkeypatch.setenv("JAXFOLD_COMPILE_CACHE", "0")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None


def test_an_unusable_directory_is_a_warning_not_a_failure(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert compile_cache.enable(tmp_path / "file" / "xla") is None
    assert "no compilation cache" in capsys.readouterr().err


def test_every_compiling_command_turns_it_on(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(compile_cache, "enable", lambda: calls.append(1))
    cli.main(["fold", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "w"),
              "--config.fold.correction=fold_xx"])
    cli.main(["sweep", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "s"),
              "--config.sweep.ratios=1.5"])
    assert len(calls) == 2 and capsys.readouterr().err.count("error:") == 2


def test_a_fresh_process_writes_compiled_executables(tmp_path):
    script = ("import jax, jax.numpy as jnp\nfrom jaxfold import compile_cache\ncompile_cache.enable()\n"
              "print(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum())")
    env = {**os.environ, "JAXFOLD_COMPILE_CACHE": str(tmp_path / "xla"), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)
    assert any(p.is_file() for p in (tmp_path / "xla").rglob("*"))
