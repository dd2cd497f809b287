"""The command line a user meets: --version, list, --help, and an example in every command's help."""
import json
import subprocess
import sys

import pytest

import sknet
from sknet.cli import COMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sknet {sknet.__version__}"


def test_list_filters_names_and_aliases(capsys):
    assert main(["list", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in every] == sknet.list_models()
    assert all(m["description"] and "\n" not in m["description"] for m in every)
    assert main(["list", "skresnext*", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["skresnext101_32x4d", "skresnext50_32x4d"]
    assert main(["list", "sknet50"]) == 0  # by alias
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("skresnext50_32x4d ") and "(sknet50)" in line
    assert main(["list", "nothing*"]) == 0 and capsys.readouterr().out == ""


def test_help_is_for_users_and_every_command_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "sknet.commands" not in text and "--version" in text
    for name in COMMANDS:
        assert f"\n    {name}" in text, name
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert f"examples:\n  " in capsys.readouterr().out, name


@pytest.mark.parametrize("argv", [["list"], ["--version"]])
def test_version_and_list_import_no_framework(argv):
    code = (f"import sys\nfrom sknet.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'mindspore', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
