from core.status_metrics import PrecisionRecall, status_precision_recall

# expected and decided, item by item: R refused, A answered, E escalate
EXPECTED = ["refused", "refused", "refused", "refused", "answered", "escalate"]
DECIDED = ["refused", "refused", "answered", "answered", "refused", "escalate"]


def test_precision_is_hits_over_decided_and_recall_hits_over_expected_rounded_to_4_places():
    # refused: decided 3 times, right 2 of them; expected 4 times, found 2
    assert status_precision_recall(EXPECTED, DECIDED, "refused") == PrecisionRecall(0.6667, 0.5)
    assert status_precision_recall(EXPECTED, DECIDED, "escalate") == (1.0, 1.0)
    # answered: decided twice, never right; expected once, missed
    assert status_precision_recall(EXPECTED, DECIDED, "answered") == (0.0, 0.0)


def test_a_status_never_decided_or_never_expected_has_no_precision_or_no_recall():
    assert status_precision_recall(["escalate"], ["answered"], "escalate") == (None, 0.0)
    assert status_precision_recall(["answered"], ["escalate"], "escalate") == (0.0, None)
    assert status_precision_recall(["answered"], ["answered"], "refused") == (None, None)
    assert status_precision_recall([], [], "refused") == (None, None)


def test_the_figures_read_by_name():
    pr = status_precision_recall(EXPECTED, DECIDED, "refused")
    assert (pr.precision, pr.recall) == (0.6667, 0.5) and list(pr) == [0.6667, 0.5]
