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


def test_official_metric_per_task_and_format() -> None:
    from circuitlab.cot.evaluate import official_metric

    assert official_metric("arithmetic", "cot") == "answer"
    assert official_metric("equation", "cot") == "answer"
    assert official_metric("lis", "cot") == "sequence"
    assert official_metric("ed", "cot") == "sequence"
    assert official_metric("arithmetic", "direct") == "sequence"


def test_lis_official_accuracy_is_whole_sequence_exact_match(monkeypatch) -> None:
    """Greedy outputs: the reference, a right answer after a wrong dp step, and the
    reference without <eos> (cut at max_new): answer 2/3 right, official 1/3."""
    import numpy as np
    import torch

    import circuitlab.cot.evaluate as ev
    from circuitlab.cot.sequences import build_sequences
    from circuitlab.cot.tasks.common import EOS_ID, TokenBatch

    lis = get_task("lis")
    vocab = lis.vocab(5, 0)
    batch = lis.generate(np.random.default_rng(0), 5, 3, 0)
    test = build_sequences(lis, batch, vocab, "cot")
    assert isinstance(batch, TokenBatch) and len(set(test.prompt.tolist())) == 1
    plen = int(test.prompt[0])
    outputs = []
    for row in range(3):
        ref = test.ids[row, plen : test.lengths[row]].copy()  # chain, answer, <eos>
        if row == 1:
            ref[0] = vocab.ids(["5"])[0]  # the first dp value is always 1: now wrong
        if row == 2:
            ref[-1] = ref[-2]  # no <eos>: the continuation never ends
        outputs.append(ref)
    width = max(len(o) for o in outputs)
    canned = torch.tensor(
        np.stack([np.pad(o, (0, width - len(o)), constant_values=EOS_ID) for o in outputs])
    )
    canned[2, len(outputs[2]) - 1 :] = canned[2, len(outputs[2]) - 2]
    monkeypatch.setattr(ev, "greedy_generate", lambda *a, **k: canned)
    model = torch.nn.Identity()  # generation is canned; only train/eval mode is touched
    result = ev.evaluate_model(model, lis, vocab, test, "cot", 0)  # type: ignore[arg-type]
    assert result.official_metric == "sequence"
    assert result.sequence_accuracy == result.official_accuracy == 1 / 3
    assert result.answer_accuracy == 2 / 3
    assert result.to_dict()["official_accuracy"] == 1 / 3
