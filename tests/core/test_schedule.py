from __future__ import annotations

import itertools

import pytest

from circuitlab.core.schedule import lr_at


def test_warmup_ramps_to_the_peak_then_cosine_decays_towards_zero() -> None:
    lrs = [lr_at(s, 100, peak=1e-3, warmup=0.1, schedule="cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs.index(max(lrs)) == 9
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 1e-5


# Values of the two schedules this one replaced (cot/train.py's and analog/nsc_sft.py's
# lr_at, identical but for where the peak came from), printed before they were removed.
@pytest.mark.parametrize(
    ("total", "peak", "warmup", "schedule", "steps", "expected"),
    [
        (20, 1e-3, 0.1, "cosine", (0, 1, 2, 5, 10, 19),
         (5e-4, 1e-3, 1e-3, 9.330127018922195e-4, 5.868240888334653e-4, 7.59612349389599e-6)),
        (10, 1e-3, 0.0, "linear", (0, 5, 9), (1e-3, 5e-4, 9.999999999999998e-5)),
        (4, 1e-3, 0.5, "constant", (0, 1, 2, 3), (5e-4, 1e-3, 1e-3, 1e-3)),
        (100, 2e-4, 0.03, "cosine", (0, 1, 2, 3, 50, 99),
         (6.666666666666667e-5, 1.3333333333333334e-4, 2e-4, 2e-4, 1.0485622221144484e-4,
          5.2443095448506674e-8)),
        (3, 1e-5, 0.03, "cosine", (0, 1, 2), (1e-5, 7.500000000000001e-6, 2.5000000000000015e-6)),
    ],
)  # fmt: skip
def test_same_rates_as_the_schedules_it_replaced(
    total: int,
    peak: float,
    warmup: float,
    schedule: str,
    steps: tuple[int, ...],
    expected: tuple[float, ...],
) -> None:
    got = [lr_at(s, total, peak=peak, warmup=warmup, schedule=schedule) for s in steps]
    assert got == pytest.approx(list(expected), rel=1e-12)


def test_epoch_schedule_is_transformers_linear_warmup_stepped_per_epoch() -> None:
    """The official train.py: get_scheduler('linear', num_warmup_steps=5,
    num_training_steps=100), stepped after each epoch, so epoch e trains at lambda(e)."""
    from circuitlab.core.schedule import lr_at_epoch

    def hf_linear(e: int) -> float:  # transformers' lr_lambda, written out
        return e / 5 if e < 5 else max(0.0, (100 - e) / 95)

    got = [lr_at_epoch(e, 100, peak=1e-4, warmup=0.05, schedule="linear") for e in range(100)]
    assert got == pytest.approx([1e-4 * hf_linear(e) for e in range(100)], rel=1e-12)
    assert got[0] == 0.0 and got[5] == pytest.approx(1e-4)
    assert lr_at_epoch(3, 10, peak=1.0, warmup=0.0, schedule="constant") == 1.0
