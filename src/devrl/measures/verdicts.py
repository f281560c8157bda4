"""The book's words for judged claims, in one place.

A claim is judged by a fixed rule on the data, which returns a **verdict** (`word`): "held",
"did not hold", or "untested" when the data to judge it is missing. Each rule has a **kind**:
a *test* when the rule, as it stands, was committed before the data it judges was computed,
*exploratory* when it was written or changed after. The findings page gives every claim a
**status** from the two (`status`):

=================  ===============================  =====================
verdict            a test                           exploratory
=================  ===============================  =====================
held               established at this scale        suggested
did not hold       contradicted                     not established
did not hold in    not established                  not established
full, untested
=================  ===============================  =====================

An exploratory rule that held is only a suggestion: the rule could have been bent to the data.
A test that failed contradicts its prediction; an exploratory one that failed, or a test that
failed in part, leaves the claim open. The mapping was written on 2026-12-06, after the verdicts
it maps were known (the findings page says so); it judges no data itself.
"""

from __future__ import annotations

HELD, NOT_HELD, PARTLY, UNTESTED = "held", "did not hold", "did not hold in full", "untested"
VERDICTS = (HELD, NOT_HELD, PARTLY, UNTESTED)
KINDS = ("test", "exploratory")
ESTABLISHED, SUGGESTED, OPEN, CONTRADICTED = (
    "established at this scale", "suggested", "not established", "contradicted")
STATUSES = (ESTABLISHED, SUGGESTED, OPEN, CONTRADICTED)


def word(ok: bool | None) -> str:
    """A rule's verdict: "held" (True), "did not hold" (False), "untested" (None: no data)."""
    return UNTESTED if ok is None else (HELD if ok else NOT_HELD)


def status(verdict: str, kind: str) -> str:
    """The status of a claim whose rule of `kind` returned `verdict` (see the module's table)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: allowed {', '.join(map(repr, VERDICTS))}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: allowed {', '.join(map(repr, KINDS))}")
    if verdict == HELD:
        return ESTABLISHED if kind == "test" else SUGGESTED
    if verdict == NOT_HELD and kind == "test":
        return CONTRADICTED
    return OPEN


def statuses(said: dict[str, str], kinds: dict[str, str]) -> dict[str, str]:
    """{key: status} for every verdict of `said` whose key has a kind in `kinds` (a study's
    `PREDICTION_KIND`); the other keys of `said` (details such as "p1-peak") are left out."""
    return {key: status(verdict, kinds[key]) for key, verdict in said.items() if key in kinds}
