"""`mdt` and each `mdt <command>` answer --help; an unknown command is a one-line usage error."""

import pytest

from mdt import cli, errors


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(([command] if command else []) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mdt {command or ''}".rstrip())
    if command == "train":
        for option in ("--model", "--data", "--fused", "--no-fused", "--precision", "--compile", "--resume",
                       "--ema-decay", "--ckpt-every", "--seed", "--out", "--batch-size", "--steps", "--lr"):
            assert option in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fly"])
    assert e.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("error,user_mistake", [
    (errors.UsageError("--steps must be >= 1"), True),
    (errors.MissingInputError("data path 'x' does not exist"), True),
    (ValueError("operands could not be broadcast together"), False),  # a bug deep inside: keep the traceback
    (FileNotFoundError("/tmp/internal.tmp"), False),
    (ImportError("cannot import name 'x'"), False),
])
def test_only_mdts_own_errors_are_one_line_user_errors(error, user_mistake, monkeypatch, capsys):
    def run(args):
        raise error
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["train"].set_defaults(_run=run)
    monkeypatch.delenv("MDT_DEBUG", raising=False)
    if user_mistake:
        with pytest.raises(SystemExit) as e:
            cli.main(["train"])
        assert e.value.code == 2 and capsys.readouterr().err == f"mdt train: error: {error}\n"
    else:
        with pytest.raises(type(error)):
            cli.main(["train"])
