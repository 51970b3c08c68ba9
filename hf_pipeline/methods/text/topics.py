"""Keyword filters for the topic of an instruction-answer pair: math, code, or other (paper §3.3).

"We ensure these ~100K new examples are also well stratified in length, complexity (number of template
variables), and in topic using keyword-based filters to identify instruction-answer pairs related to math and
code to ensure balanced representation in the distillation examples."

The paper does not publish its keyword lists; these are ours. They favour precision: words that are mostly
technical ("python", "integral", "regex") count alone, while words with everyday senses ("function", "program",
"react", "flask", "solve", "proof", "return", "remainder") do not count at all, or only in a technical pattern
("f(x)", "print(", "def name(", "3 + 4"; not "2020-2021" or "24/7"). Code wins over math when both match: a
question asking for a program that computes an integral is a code example.
"""

from __future__ import annotations

import re
from typing import Literal

Topic = Literal["math", "code", "other"]
TOPICS: tuple[Topic, ...] = ("math", "code", "other")

_CODE_WORDS = (
    r"python|javascript|typescript|java|c\+\+|c#|golang|kotlin|php|perl|powershell|bash script|shell script|"
    r"sql|mysql|postgres(?:ql)?|sqlite|html|css|json|yaml|regex|regular expressions?|programming|coding|"
    r"source code|code snippet|compiler|debug(?:ging)?|stack ?trace|segfault|rest api|api endpoint|numpy|pandas|"
    r"pytorch|tensorflow|node\.?js|django|docker|kubernetes|github|unit tests?|algorithms?|data structures?|"
    r"recursion|runtime error|syntax error|linux command|command line"
)
_CODE = re.compile(
    rf"(?<![\w+#])(?:{_CODE_WORDS})(?![\w+#])"  # a technical word on its own (c++ and c# end in symbols)
    r"|```"  # a fenced code block
    r"|\bdef \w+\(|\bclass \w+\s*[:(]|#include\b|\bpublic static\b"  # definitions
    r"|\b\w+\([^()\n]*\)\s*[;{]"  # a call or definition ending a statement: foo(x); bar() {
    r"|\bprint\(|console\.log|=>|!=|==",
    re.IGNORECASE,
)
_MATH_WORDS = (
    r"math(?:s|ematics|ematical)?|algebra(?:ic)?|geometry|trigonometry|calculus|arithmetic|integrals?|"
    r"derivatives?|equations?|inequalit(?:y|ies)|polynomials?|quadratic|logarithms?|exponents?|fractions?|"
    r"denominator|numerator|theorem|lemma|matri(?:x|ces)|eigen\w*|probability|statistics|standard deviation|"
    r"variance|factorial|prime numbers?|square roots?|hypotenuse|perimeter|circumference|sine|cosine|"
    r"divisible|divided by|times table"
)
_MATH = re.compile(
    rf"\b(?:{_MATH_WORDS})\b"
    r"|\d\s*[+*×÷^=]\s*\d|\d\s+[-/]\s+\d"  # arithmetic between numbers (3 + 4, 2^10, 6 / 3; not 2020-21)
    r"|\b[a-z]\s*\^\s*\d|\b[fgh]\([a-z]\)|\\frac|\\sqrt|√|∫|∑|π",  # x^2, f(x), LaTeX, symbols
    re.IGNORECASE,
)


def topic_of(*texts: str | None) -> Topic:
    """The topic of an instruction-answer pair (or of any texts, e.g. a template): code, math, or other."""
    text = "\n".join(t for t in texts if t)
    if _CODE.search(text):
        return "code"
    if _MATH.search(text):
        return "math"
    return "other"
