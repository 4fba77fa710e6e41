"""The template-family split of the function-calling generator: which phrasing families are training, validation
(the fold) and test families. Fixed by the family ids alone, so every seed, the ICL prompt and every sweep setting see
the same split; the rows themselves are drawn in :mod:`llamatune.data.funccall_rows`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from llamatune.data import funccall_foreign as foreign
from llamatune.data import funccall_templates as phrasebook

# families that are always training families: those added after the split was frozen, and the foreign tools'
TRAIN_ONLY = (*phrasebook.TRAIN_ONLY, *foreign.families())
# the breadth families (llamatune.data.funccall_breadth, README part 9): never test families, and placed in the fold
# apart from the older ones, so that the older families' split is what it was
BREADTH = frozenset(phrasebook.BREADTH)


def family_groups() -> dict[str, str]:
    """Every template family id → its group (the split takes a share of each group)."""
    groups = {f: tool for tool, fams in phrasebook.SINGLE.items() for f in fams}
    groups.update({f: spec[0] for f, spec in phrasebook.CLARIFY.items()})
    groups.update({f: spec[0] for f, spec in phrasebook.NO_TOOL.items()})
    groups.update({f: "follow-up" for f in phrasebook.FOLLOW_UPS})
    groups.update({f: "foreign" for f in foreign.families()})
    for book in (phrasebook.NEAR_MISS, phrasebook.PARALLEL, phrasebook.INJECTIONS):
        groups.update({f: spec[0] for f, spec in book.items()})
    return groups


def _concept(fam: str) -> str | None:
    """What a family teaches beyond its phrasing: a clarify family's reason, a follow-up family's kind."""
    if fam in phrasebook.CLARIFY_REASONS:
        return "clarify:" + phrasebook.CLARIFY_REASONS[fam]
    if fam in phrasebook.FOLLOW_UPS:
        return "follow-up:" + phrasebook.FOLLOW_UPS[fam][1]
    return None


def split_families(test_fraction: float = 0.2, val_fraction: float = 0.0) -> dict[str, str]:
    """Family id → ``"train"``, ``"val"`` or ``"test"``. ~``test_fraction`` of each group (at least one, never all)
    goes to test; the :data:`TRAIN_ONLY` families (added after the split was frozen, and the foreign tools') never
    do. Then, with ``val_fraction`` > 0, ~``val_fraction`` of each group's remaining families (at least one) forms
    the *validation fold*, held out of training as the test's are, so that settings are chosen on transfer to new
    phrasings, as the test measures it. A family goes to the fold only where two training families of its group stay
    and its concept (a clarify reason, a follow-up kind) keeps a training family; never a foreign tool's. The test
    families are the same whatever ``val_fraction``. Fixed by the family ids alone, so every seed (and the ICL
    prompt) sees the same split."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    every = family_groups()
    by_group = defaultdict(list)
    for fam, group in every.items():
        if fam not in TRAIN_ONLY and fam not in BREADTH:
            by_group[group].append(fam)
    split = dict.fromkeys((*TRAIN_ONLY, *sorted(BREADTH)), "train")
    order = lambda f: hashlib.sha256(f.encode()).hexdigest()  # noqa: E731
    for fams in by_group.values():
        fams.sort(key=order)
        k = 0 if test_fraction == 0 else min(len(fams) - 1, max(1, round(len(fams) * test_fraction)))
        split.update({f: "test" if i < k else "train" for i, f in enumerate(fams)})
    if val_fraction:
        foreign_fams = set(foreign.families())
        groups = {f: g for f, g in every.items() if f not in BREADTH}
        rest = defaultdict(list)
        for fam, group in groups.items():
            if split[fam] == "train" and fam not in foreign_fams:
                rest[group].append(fam)
        for fams in rest.values():
            fams.sort(key=order)
            want = max(1, round(len(fams) * val_fraction))
            for fam in fams:
                if want == 0 or len([f for f in fams if split[f] == "train"]) <= 2:
                    break
                if not _concept_kept(fam, groups, split):
                    continue
                split[fam] = "val"
                want -= 1
        _breadth_fold(split, val_fraction, order, every)
    return split


def split_for(test_fraction: float = 0.2, val_fraction: float = 0.0, breadth: bool = False) -> dict[str, str]:
    """:func:`split_families` as rows are drawn: without ``breadth``, the breadth families that would be training
    families are left out (they are in no split); fold and test families are the same either way."""
    split = split_families(test_fraction, val_fraction)
    return split if breadth else {f: s for f, s in split.items() if s != "train" or f not in BREADTH}


def _concept_kept(fam: str, groups, split: dict) -> bool:
    """Whether ``fam``'s concept (if it has one) keeps a training family among ``groups`` without it."""
    c = _concept(fam)
    return not c or any(split[g] == "train" and g != fam and _concept(g) == c for g in groups)


def _breadth_fold(split: dict, val_fraction: float, order, groups: dict[str, str]) -> None:
    """The breadth families' share of the fold: ``round(val_fraction × n)`` of each group's ``n`` new families (none
    where that rounds to 0), in the split's hash order, a family only where its concept keeps a training family
    (``groups``: :func:`family_groups`)."""
    new = defaultdict(list)
    for fam in BREADTH:
        new[groups[fam]].append(fam)
    for fams in new.values():
        want = round(len(fams) * val_fraction)
        for fam in sorted(fams, key=order):
            if want == 0:
                break
            if _concept_kept(fam, groups, split):
                split[fam] = "val"
                want -= 1
