"""`mdt` and each `mdt <command>` answer --help; an unknown command is a one-line usage error."""

import pytest

from mdt import cli


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
