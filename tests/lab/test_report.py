"""The HTML report: exists, is self-contained, embeds every figure, names every optimizer."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from gradwise.lab import PROTOCOL, runner
from gradwise.lab.report import write_report
from gradwise.lab.runner import Plan, open_storage, run_lab, storage_url


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    names = runner.benchmarkable()[0]
    optimizers = ["adamw", *[n for n in names if n != "adamw"][:2]]
    plan = Plan.make("quick", problems=["belief-abs", "logreg-cancer"], optimizers=optimizers, trials=2, seeds=2)
    run_lab(plan, storage_url(out))
    path, results = write_report(open_storage(storage_url(out)), out)
    return plan, path, results


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag in ("link", "script") or (tag == "a" and "href" in attrs):
            self.links.append(attrs)


def test_report_is_one_self_contained_page_with_every_figure(lab):
    plan, path, _ = lab
    assert path.exists() and path.name == "report.html" and path.parent == path.parent
    text = path.read_text(encoding="utf-8")
    parser = Images()
    parser.feed(text)
    assert not parser.links, "the page must not load anything from elsewhere"
    # performance profile + curves of both problems + trajectories of the 2-D function
    assert len(parser.sources) == 4
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in plan.optimizers:
        assert len(re.findall(rf"<td>{name}</td>", text)) >= 1 + len(plan.problems)  # leaderboard + tables
    for needed in ("Leaderboard", "Protocol", "Environment", "belief-abs", "logreg-cancer", "torch threads"):
        assert needed in text
    assert PROTOCOL.splitlines()[0] in text


def test_report_numbers_match_the_stored_runs(lab):
    plan, _, results = lab
    for p in plan.problems:
        for o in plan.optimizers:
            cell = results.cell(p, o)
            assert len(cell.tuning) == plan.trials and len(cell.runs) == plan.seeds
            assert cell.best is not None and plan.trials >= 1
    # AdamW sets the target, so at least half its seeds reach it on every problem
    from gradwise.lab import analysis

    for p in plan.problems:
        assert analysis.time_to_target(results, p, "adamw")[2] >= 1
