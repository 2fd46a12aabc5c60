"""A metric that explains itself: the score plus one line of feedback, which FlowBot feeds into the
textual loss (so the optimizer learns *why* a label was wrong, not only that it was)."""

CONFUSIONS = {
    ("bug", "billing"): "the ticket mentions money, but it reports something the software does wrong",
    ("billing", "bug"): "the ticket is about a charge, payment or invoice, not a software fault",
    ("account", "bug"): "the ticket is about access to or settings of an account, not a software fault",
    ("feature_request", "bug"): "the ticket asks for something new; nothing is broken",
    ("bug", "feature_request"): "something that exists is broken; the ticket does not ask for a new feature",
    ("feature_request", "billing"): "the ticket asks for a new capability even if it mentions payments",
}


def score(example, prediction):
    predicted = str(prediction.get("label") or "").strip().lower()
    gold = example["label"]
    if predicted == gold:
        return 1.0, ""
    why = CONFUSIONS.get((gold, predicted), "")
    return 0.0, f"expected '{gold}', got '{predicted or 'nothing'}'" + (f": {why}" if why else "")
