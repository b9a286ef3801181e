"""The command's error contract: a user's mistake (jaxfold.errors.UserError) is one line on stderr and exit code
2; any other exception is a bug or an unexpected condition and propagates with its traceback."""

import pytest

from jaxfold import cli, fold_run
from jaxfold.errors import MissingFile, UserError


def _fold(tmp_path, *overrides):
    return cli.main(["fold", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "w"),
                     f"--config.fold.checkpoint={tmp_path / 'missing'}", *overrides])


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert _fold(tmp_path, "--config.fold.correction=fold_xx") == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxfold fold: error: unknown correction 'fold_xx'") and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "w").exists()

    assert _fold(tmp_path) == 2  # a missing file is a UserError too (and still a FileNotFoundError)
    assert "no jaxfold checkpoint at" in capsys.readouterr().err
    assert issubclass(MissingFile, FileNotFoundError) and issubclass(UserError, ValueError)

    assert _fold(tmp_path, "--config.fold.ratios=0.5") == 2  # an unknown config key names the valid ones
    assert "unknown config key 'fold.ratios'; valid keys:" in capsys.readouterr().err


@pytest.mark.parametrize("error", [KeyError("groups"), ValueError("a library bug"), FileNotFoundError("/tmp/x")])
def test_unexpected_exceptions_keep_their_traceback(tmp_path, monkeypatch, error):
    def broken(config, workdir):
        raise error

    monkeypatch.setattr(fold_run, "run_fold", broken)
    with pytest.raises(type(error)) as caught:
        _fold(tmp_path)
    assert caught.value is error
