"""The cut rule itself, with no server: CloseProbe answers in, the Cut out (end-to-end runs reach it
through the real engine in test_correctness and test_probe_route)."""

from __future__ import annotations

import pytest

from splitcli.contexts import Contexts
from splitcli.probing import CloseProbe, Cut, CutFinder, ProbeBudget
from splitcli.profiles import PromptConfig

NO = CloseProbe(False)


def test_no_close_decides_every_prefix_and_cuts_nowhere() -> None:
    finder = CutFinder()
    assert finder.feed([NO, NO, NO], "abc") is None
    assert finder.decided == 3 and not finder.waiting
    assert finder.finish() is None


def test_a_bare_close_cuts_after_its_prefix_and_ignores_later_ones() -> None:
    finder = CutFinder()
    assert finder.feed([NO, CloseProbe(True), CloseProbe(True)], "abc") == Cut(2)


def test_the_cut_does_not_depend_on_where_chunks_end() -> None:
    probes = [NO, NO, CloseProbe(True, " "), CloseProbe(True), NO]
    whole = CutFinder().feed(probes, "abcde")
    one_by_one = CutFinder()
    cuts = [one_by_one.feed([probe], "abcde") for probe in probes]
    assert whole == Cut(4)
    assert [cut for cut in cuts if cut is not None] == [Cut(4)]


def test_whitespace_then_the_tag_waits_for_the_next_prefix() -> None:
    finder = CutFinder()
    assert finder.feed([NO, CloseProbe(True, "\n")], "ab") is None
    assert finder.waiting and finder.decided == 1
    # The next prefix does not close at once: the small model's whitespace stands, cut at 2.
    assert finder.feed([NO], "abc") == Cut(2, "\n")


def test_whitespace_close_at_the_end_of_the_segment_keeps_the_small_models_whitespace() -> None:
    finder = CutFinder()
    assert finder.feed([CloseProbe(True, " ")], "a") is None
    assert finder.finish() == Cut(1, " ")


def test_a_tag_merged_with_the_big_models_next_text_cuts_inside_its_token() -> None:
    finder = CutFinder()
    # After prefix 1 ("is 5", 4 characters) the small model writes ".</bigmodel>": the cut lands after
    # the big model's own "." once its text is known.
    assert finder.feed([CloseProbe(True, ".", 4)], "is 5") is None
    assert finder.waiting
    assert finder.feed([], "is 5. Then") == Cut(1, end=5)


def test_a_merged_close_the_big_model_does_not_write_is_no_close() -> None:
    finder = CutFinder()
    assert finder.feed([CloseProbe(True, ".", 4), NO], "is 5, so") is None
    assert not finder.waiting and finder.decided == 2


def test_offsets_count_from_where_the_probed_text_starts() -> None:
    finder = CutFinder()
    assert finder.feed([CloseProbe(True, ",", 2)], "xx", offset=10) is None
    assert finder.feed([], "0123456789xx, y") == Cut(1, end=13)


def _contexts(shared: bool) -> Contexts:
    contexts = Contexts(("small", "big"), {"small": None, "big": None}, PromptConfig())  # type: ignore[dict-item]  # no client is asked
    contexts.shared_tokenizer = shared
    contexts.open_ids, contexts.close_ids = [7, 8], [9, 8]
    return contexts


def test_the_big_model_sees_small_text_without_tags_as_ids_when_they_come_off_exactly() -> None:
    contexts, tags = _contexts(shared=True), PromptConfig()
    text = f"{tags.close_tag} so 5{tags.open_tag}"
    assert contexts.for_big([9, 8, 1, 2, 7, 8], text) == ([1, 2], " so 5")
    # A tag merged with its neighbour (other ids at the end): only the text crosses, re-tokenised.
    assert contexts.for_big([9, 8, 1, 3], text) == (None, " so 5")


def test_with_another_tokenizer_only_text_crosses() -> None:
    contexts, tags = _contexts(shared=False), PromptConfig()
    assert contexts.piece_for("big", [1, 2], f"a{tags.open_tag}") == (None, "a")
    assert contexts.piece_for("small", [1, 2], "a") == (None, "a")
    assert _contexts(shared=True).piece_for("small", [1, 2], "a") == ([1, 2], "a")


def test_the_probe_budget_lets_probes_take_their_share_of_the_streaming_time() -> None:
    budget = ProbeBudget(0.25)
    assert budget.allows(0)  # nothing known yet of what a request costs: each bucket is probed
    budget.accrue(0.1)
    budget.spend(0.05)  # a request costs 50 ms; credit -0.025 s
    assert not budget.allows(0)
    budget.accrue(0.5)  # +0.125 s: 0.1 s of credit covers this probe and the segment's last one
    assert budget.allows(0) and not budget.allows(1)  # ... but not with one more still out
    budget.spend(0.2)  # the last probe of a segment always goes, even into debt ...
    assert budget.credit < 0 and not budget.allows(0)  # ... which the next segments pay back
    budget.accrue(100.0)
    assert budget.credit == pytest.approx(0.6)  # credit is kept for three requests at most: no burst after a long stretch


def test_the_credit_kept_covers_the_most_probes_a_stream_may_have_out() -> None:
    budget = ProbeBudget(0.25, most_in_flight=4)
    budget.spend(0.1)
    budget.accrue(100.0)
    assert budget.allows(3)  # 3 out, this one and the segment's last: 0.5 s, kept for five requests
    assert ProbeBudget(0.25, most_in_flight=4).allows(0)  # nothing known yet of a request: allowed


def test_a_zero_share_probes_every_bucket() -> None:
    budget = ProbeBudget(0.0)
    budget.spend(10.0)
    assert budget.allows(5)
