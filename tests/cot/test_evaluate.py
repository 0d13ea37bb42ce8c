from __future__ import annotations

from circuitlab.cot.evaluate import score, summarise
from circuitlab.cot.tasks import get_task

ARITH = get_task("arithmetic")
Q = "( 2 + 3 ) * 4"  # = 5 * 4 = 9 (mod 11)


def test_right_chain_right_answer() -> None:
    s = score(ARITH, Q, "5 * 4 = 9", "9", "cot", 11)
    assert s.answer_correct and s.chain_valid and s.first_error is None


def test_wrong_chain_with_right_answer_counts_as_answer_right_chain_wrong() -> None:
    # 2 + 3 is not 6, yet the final answer happens to be right
    s = score(ARITH, Q, "6 * 4 = 9", "9", "cot", 11)
    assert s.answer_correct
    assert not s.chain_valid
    assert s.first_error == 0
    result = summarise([s, score(ARITH, Q, "5 * 4 = 9", "9", "cot", 11)])
    assert result.answer_accuracy == 1.0
    assert result.chain_accuracy == 0.5
    assert result.right_answer_wrong_chain == 1
    assert result.first_error == {"step 0": 1}


def test_right_chain_wrong_answer_fails_at_the_answer() -> None:
    s = score(ARITH, Q, "5 * 4 = 3", "9", "cot", 11)
    assert not s.answer_correct and not s.chain_valid
    assert summarise([s]).first_error == {"answer": 1}


def test_direct_scoring_and_lis_chain() -> None:
    assert score(ARITH, Q, "9", "9", "direct", 11).answer_correct
    assert not score(ARITH, Q, "8", "9", "direct", 11).answer_correct
    lis = get_task("lis")
    q = "30 10 40 20 50"
    good = score(lis, q, "1 1 2 2 3 <sep> 3", "3", "cot", 11)
    assert good.chain_valid
    bad = score(lis, q, "1 1 2 3 3 <sep> 3", "3", "cot", 11)
    assert bad.answer_correct and not bad.chain_valid and bad.first_error == 3
