"""docs/verdicts.json is a real run's, and docs/study.md's prose quotes only its numbers.

docs/verdicts.json is the ``verdicts.json`` of the default study run the documents describe (written by
``labelsmooth study`` and ``python -m labelsmooth.study.findings``). tests/test_readme.py checks that the
generated blocks of README.md and docs/study.md are what it says; here, that the file's outcomes are what
the verdict engine makes of its values, and that the hand-written discussion above docs/study.md's
generated block quotes no effect the run did not produce.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labelsmooth.study import findings as FND
from labelsmooth.study import verdicts as V

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["verdicts.json", "verdicts-full.json"])
def payload(request) -> dict:
    return json.loads((ROOT / "docs" / request.param).read_text(encoding="utf-8"))


def test_the_committed_verdicts_are_a_real_run(payload):
    verdicts = FND.load_verdicts(payload)
    assert payload["meta"]["command"].startswith("labelsmooth study")
    assert not payload["meta"].get("quick")
    assert len(verdicts) > 20
    # Every claim has verdicts, and the adjustment the file records is the one the engine makes.
    assert {v.claim for v in verdicts} >= {"noise", "overfitting", "calibration", "binary"}
    for fam in {v.claim for v in verdicts}:
        family = [v for v in verdicts if v.claim == fam]
        raw = [
            V.Verdict(**{**v.__dict__, "p": None, "p_holm": None, "p_bh": None, "low": None, "high": None})
            for v in family
        ]
        again = V.adjust(raw)
        assert [a.outcome for a in again] == [v.outcome for v in family]
        for a, v in zip(again, family, strict=True):
            if v.p_holm is not None:
                assert a.p_holm == pytest.approx(v.p_holm) and a.low == pytest.approx(v.low)


@pytest.mark.parametrize(
    ("page", "source", "heading"),
    [
        ("study.md", "verdicts.json", "## What the default grid showed"),
        ("study-full.md", "verdicts-full.json", "## What the full design showed"),
    ],
)
def test_prose_numbers_in_the_study_pages_come_from_their_verdicts(page, source, heading):
    # Every signed three-decimal effect quoted in the discussion above the generated block is one of the
    # verdicts' own values or interval ends: prose cannot carry a number the run did not produce.
    payload = json.loads((ROOT / "docs" / source).read_text(encoding="utf-8"))
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    start = text.index(heading)
    prose = text[start : text.index(FND.START, start)]
    known = set()
    for v in FND.load_verdicts(payload):
        for x in (v.mean, v.low, v.high):
            if x is not None:
                known.add(f"{x:+.3f}")
    quoted = re.findall(r"[+\u2212-]\d\.\d{3}", prose)
    for q in quoted:
        assert q.replace("\u2212", "-") in known, f"{q} in docs/{page} is not a value of docs/{source}"
