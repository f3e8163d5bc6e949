"""The README's Python examples run as written, and its set-up block names the commands CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

README = (ROOT / "README.md").read_text(encoding="utf-8")
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_python_examples():
    assert len(PY_BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(PY_BLOCKS)))
def test_readme_python_example_runs(i, capsys):
    exec(compile(PY_BLOCKS[i], f"README.md python block {i}", "exec"), {})
    assert capsys.readouterr().out.strip(), "the example prints its result"


def test_setup_block_tags_install_main_job_and_tests():
    for tag in ("install", "main job", "tests"):
        assert re.search(rf"^[^#\n].*# {tag}$", README, re.M), tag


def test_readme_shows_a_screenshot_of_every_app_page():
    """Each page's screenshot (written by the browser test) exists and the README links it."""
    from lmetric_theory.app.main import PAGES

    images = set(re.findall(r"\(docs/img/([\w-]+\.png)\)", README))
    for script, _title, _url in PAGES:
        assert script.replace(".py", ".png") in images, script
    for name in images:
        assert (ROOT / "docs" / "img" / name).is_file(), name


def test_readme_cli_table_lists_every_sub_command():
    from lmetric_theory.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"`lmetric-theory {name}" in README, name
