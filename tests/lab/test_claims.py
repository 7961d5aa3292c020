"""The paper suite's claims: held, did not hold, or not checked, with the reason."""

from __future__ import annotations

from gradwise.lab.claims import BELIEF_TOYS, verdicts
from gradwise.lab.problems import SUITES

from .test_analysis import results


def by_name(r):
    return {c.name: (v, e) for c, v, e in verdicts(r)}


def test_adabelief_claim_holds_only_when_faster_on_every_toy():
    fast = {"adamw": [[9, 5, 1.0]] * 3, "adabelief": [[9, 1.0, 1.0]] * 3}
    verdict, evidence = by_name(results(fast, problems=BELIEF_TOYS))["adabelief-toys"]
    assert verdict == "held" and "adabelief 1 vs adamw 2 steps" in evidence
    slow = {"adamw": [[9, 5, 1.0]] * 3, "adabelief": [[9, 5, 9.0]] * 3}
    assert by_name(results(slow, problems=BELIEF_TOYS))["adabelief-toys"][0] == "did not hold"


def test_claims_without_their_optimizer_or_feature_are_not_checked():
    r = results({"adamw": [[9, 5, 1.0]] * 3}, problems=BELIEF_TOYS)
    found = by_name(r)
    assert found["adabelief-toys"] == ("not checked", "needs adabelief in the run")
    assert found["grokfast-grokking"][0] == "not checked" and "grokking" in found["grokfast-grokking"][1]


def test_paper_suite_holds_every_checkable_claims_problems():
    from gradwise.lab.claims import CLAIMS

    for claim in CLAIMS:
        if not claim.missing:
            assert set(claim.problems) <= set(SUITES["paper"].problems)
