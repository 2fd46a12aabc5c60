"""Official benchmark metrics: pure functions on strings, and pass@1 for code (run in the sandbox).

| benchmark | functions |
| --- | --- |
| SQuAD-style QA | :func:`exact_match`, :func:`f1`, :func:`max_over_golds`, :func:`contains` |
| TriviaQA | :func:`triviaqa_exact_match`, :func:`triviaqa_f1` (max over aliases with ``max_over_golds``) |
| HotpotQA | :func:`hotpot_exact_match`, :func:`hotpot_f1` (official yes/no/noanswer rule) |
| DROP | :func:`drop_metrics`, :func:`drop_score` (max over ``|`` alternatives), :func:`aflow_drop_f1` |
| MATH | :func:`math_score` (reply vs solution), :func:`math_equiv` (answer vs answer) |
| GSM8K | :func:`gsm8k_score` |
| FEVER | :func:`fever_score`, :func:`label_accuracy` |
| numbers | :func:`numeric_equal`, :func:`parse_number` |
| HumanEval, MBPP | :func:`run_tests` (pass@1: the code against the example's unit tests, in the sandbox) |

>>> max_over_golds(triviaqa_f1, "the onion", ["Allium cepa", "Onion"])
1.0
"""

from flowbot.tasks.metrics.drop import aflow_drop_f1, drop_em, drop_f1, drop_metrics, drop_score
from flowbot.tasks.metrics.hotpotqa import aflow_hotpot_f1, hotpot_exact_match, hotpot_f1
from flowbot.tasks.metrics.labels import FEVER_LABELS, fever_score, label_accuracy
from flowbot.tasks.metrics.math_answer import math_equiv, math_gold, math_score, normalize_math_answer
from flowbot.tasks.metrics.code_tests import run_tests
from flowbot.tasks.metrics.numeric import gsm8k_gold, gsm8k_score, numeric_equal, parse_number
from flowbot.tasks.metrics.squad import (
    contains, exact_match, f1, max_over_golds, normalize_answer, triviaqa_exact_match, triviaqa_f1,
    triviaqa_normalize,
)

__all__ = [
    "FEVER_LABELS", "aflow_drop_f1", "aflow_hotpot_f1", "contains", "drop_em", "drop_f1", "drop_metrics",
    "drop_score", "exact_match", "f1", "fever_score", "gsm8k_gold", "gsm8k_score", "hotpot_exact_match",
    "hotpot_f1", "label_accuracy", "math_equiv", "math_gold", "math_score", "max_over_golds", "normalize_answer",
    "normalize_math_answer", "numeric_equal", "parse_number", "run_tests", "triviaqa_exact_match", "triviaqa_f1",
    "triviaqa_normalize",
]
