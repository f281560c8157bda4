"""Verdicts as strong as their rules: no page types a verdict word about a prediction, a rule or
a limit (they are glued from the functions that judge them), and no notebook makes one up from a
literal (the judging lives in devrl, where tests cover it). The slow check that every built page
states what its functions return on the committed data is `test_pages_state_the_verdicts_their_
functions_return` in test_book.py, which reuses the book built there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([*ROOT.glob("book/*.md"), *ROOT.glob("notebooks/*.md")])
VERDICT = re.compile(
    r"\b(?:predictions?|limits?|rules?|claims?|hypothes[ie]s)\b[^.{}]{0,40}?"
    r"\b(held|holds|hold|did not hold|does not hold|failed|fails|passed|passes)\b", re.IGNORECASE)
# Sentences that use a verdict word without stating a verdict (about what a chapter does, or a
# count whose numbers are glued), each with its reason.
ALLOWED = {
    ("book/diversity.md", "end by saying which predictions held"):
        "says the chapters will judge them",
    ("book/memory.md", "ends by saying whether its prediction held"):
        "says the chapters will judge them",
    ("book/where-behaviour-lives.md", "whether its two limits hold"):
        "says which chapter judges them",
    ("notebooks/llc-validation.md", "of λ) holds"): "'holds in N of M cases', both glued",
    ("notebooks/toy-lagoon.md", "the strict version of the prediction holds"):
        "a limit proved by a unit test, stated as such",
}


def prose(text: str) -> str:
    """The Markdown of a page outside code cells (figure captions count as prose), with every
    glued value replaced by GLUED."""
    kept, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence = "prose" if re.match(r"```\{(glue|admonition|note)", line) else "code"
            else:
                fence = None
            continue
        if fence != "code":
            kept.append(line)
    return re.sub(r"\{glue:text\}`[^`]*`", "GLUED", "\n".join(kept))


def typed_verdicts(text: str) -> list[str]:
    """Each typed verdict with the 40 characters before it, whitespace collapsed."""
    body = prose(text)
    return [" ".join(body[max(0, m.start() - 40):m.end()].split())
            for m in VERDICT.finditer(body)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_types_a_verdict(page):
    name = page.relative_to(ROOT).as_posix()
    found = [v for v in typed_verdicts(page.read_text())
             if not any(name == n and w in v.lower() for n, w in ALLOWED)]
    assert not found, f"{name} types verdicts instead of gluing them: {found}"


def test_the_lint_catches_a_typed_verdict_and_spares_a_glued_one():
    assert typed_verdicts("Memory 256 is slowest, so the prediction held.\n")
    assert typed_verdicts("**Reading.** The prediction holds for the policy.\n")
    assert not typed_verdicts("The prediction {glue:text}`memory-return-verdict`.\n")
    assert not typed_verdicts("```{code-cell} ipython3\n# the prediction held\n```\n")
    assert typed_verdicts("```{glue:figure} fig-x\n:name: fig-x\n\nThe rule passes.\n```\n")


@pytest.mark.parametrize("page", sorted(ROOT.glob("notebooks/*.md")),
                         ids=lambda p: p.stem)
def test_no_notebook_makes_up_a_verdict_word(page):
    """A verdict word in a notebook's code comes from a devrl function, never from a literal."""
    literals = re.findall(r"""["'](held|did not hold[^"']*|holds|not held|did not pass)["']""",
                          page.read_text())
    assert not literals, f"{page.stem} writes verdict words in its code: {literals}"


# ------------------------------------------------------------------ statuses of the findings page
def test_status_follows_the_table_of_verdict_and_kind():
    from devrl.measures import verdicts as v

    table = {("held", "test"): "established at this scale", ("held", "exploratory"): "suggested",
             ("did not hold", "test"): "contradicted",
             ("did not hold", "exploratory"): "not established",
             ("did not hold in full", "test"): "not established",
             ("untested", "test"): "not established",
             ("untested", "exploratory"): "not established"}
    for (verdict, kind), expected in table.items():
        assert v.status(verdict, kind) == expected, (verdict, kind)
    assert [v.word(x) for x in (True, False, None)] == ["held", "did not hold", "untested"]
    assert v.statuses({"p1": "held", "p1-peak": "actor_out", "p2": "did not hold"},
                      {"p1": "test", "p2": "exploratory"}) == {
        "p1": "established at this scale", "p2": "not established"}


@pytest.mark.parametrize("verdict,kind,name", [("held for the gap", "test", "verdict"),
                                               ("held", "preregistered", "kind")])
def test_status_refuses_words_outside_the_vocabulary(verdict, kind, name):
    from devrl.measures import verdicts as v

    with pytest.raises(ValueError, match=rf"^{name} .*allowed"):
        v.status(verdict, kind)


def test_every_study_kind_is_a_kind_and_memory_verdicts_use_the_vocabulary():
    import pandas as pd

    from devrl.measures.output_llc import RULE_KIND as OUTPUT_RULE_KIND
    from devrl.measures.regime import RULE_KIND
    from devrl.measures.verdicts import KINDS, VERDICTS
    from devrl.studies import agent, diversity, grokking, localisation, memory, training
    from devrl.toys.credit import ROUTING_KIND

    kinds = [*diversity.PREDICTION_KIND.values(), *localisation.PREDICTION_KIND.values(),
             *memory.PREDICTION_KIND.values(), *ROUTING_KIND.values(), RULE_KIND,
             training.OVERSHOOT_KIND, *agent.PREDICTION_KIND.values(), OUTPUT_RULE_KIND,
             *grokking.PREDICTION_KIND.values()]
    assert set(kinds) <= set(KINDS)
    # prediction 1 of the memory part: within 10% and the widest the slowest; within only; not
    gaps = pd.DataFrame({"memory": [0, 16, 256], "mean": [10.0, 10.5, 9.5],
                         "relative_gap": [0.0, 0.05, -0.05]})
    judged = memory.return_verdict(gaps)
    assert (judged["word"], judged["verdict"]) == ("held", "held")
    judged = memory.return_verdict(gaps.assign(mean=[10.0, 9.5, 10.5]))
    assert judged["verdict"] == "did not hold in full" and judged["word"] != "held"
    judged = memory.return_verdict(gaps.assign(relative_gap=[0.0, 0.3, -0.05]))
    assert judged["verdict"] == "did not hold"
    assert {judged["verdict"]} <= set(VERDICTS)


def test_the_overshoot_rule_needs_every_seed():
    import pandas as pd

    from devrl.studies.training import overshoot_verdict

    def peaks(plants_peak, attempts_final):
        rows = []
        for seed, (pp, af) in enumerate(zip(plants_peak, attempts_final)):
            rows += [{"seed": seed, "measure": "plants_placed", "peak": pp, "final": 1.0},
                     {"seed": seed, "measure": "place_attempts", "peak": 8.0, "final": af}]
        return pd.DataFrame(rows)

    assert overshoot_verdict(peaks([2.5, 3.0], [4.0, 5.0])) == "held"
    assert overshoot_verdict(peaks([2.5, 1.0], [4.0, 5.0])) == "did not hold"  # one plant only
    assert overshoot_verdict(peaks([2.5, 3.0], [4.0, 8.0])) == "did not hold"  # no narrowing
    assert overshoot_verdict(peaks([2.5], [4.0])[lambda f: f["measure"] == "plants_placed"]) \
        == "untested"
