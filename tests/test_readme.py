"""The README is the front door: it must stay true."""

import pathlib
import re

import gradwise as gw

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def test_every_registered_optimizer_has_a_row_in_the_readme_table():
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \|", README, flags=re.M))
    assert rows == set(gw.available())


def test_ci_runs_exactly_the_readme_test_command():
    ci = (pathlib.Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "make test" in README
    commands = [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]
