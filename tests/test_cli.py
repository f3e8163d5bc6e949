"""The CLI registry: ``--help`` lists every sub-command without importing any of them, and a
command imports only its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmetric_theory.cli import COMMANDS, build_parser, main


def _subparsers(parser):
    return next(a for a in parser._actions if a.dest == "command")


def test_placeholder_help_equals_the_modules_own() -> None:
    # the one-line help of COMMANDS is what each module's register() says
    full, lazy = build_parser(), build_parser([])
    assert lazy.format_help() == full.format_help()
    helps = {a.dest: a.help for a in _subparsers(full)._choices_actions}
    assert helps == {name: text for name, (_, text) in COMMANDS.items()}
    assert list(_subparsers(full).choices) == list(COMMANDS)


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from lmetric_theory.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stderr.split())


def test_help_imports_no_command_and_no_library() -> None:
    mods = _modules_after(["--help"])
    assert not {m for m, _ in COMMANDS.values()} & mods
    assert "numpy" not in mods and "lmetric_theory.detector" not in mods


def test_a_command_imports_only_its_own_module() -> None:
    mods = _modules_after(["simulate", "--list-policies"])
    assert {m for m, _ in COMMANDS.values()} & mods == {"lmetric_theory.cli.simulate"}
    assert "scipy" not in mods and "sympy" not in mods


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "counterfactual" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bogus"])
    assert exc.value.code == 2
