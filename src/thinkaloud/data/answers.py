"""Answer extraction: the final answer a completion states, and where its statement begins.

Strict by default: only an explicit answer marker counts, so a truncated "… 12 = 17 and then" has
no answer (the task scores it 0, and RL's format penalty fires). The markers:

- `<answer>…</answer>` (closed tags; the last pair wins over every other marker),
- `\\boxed{…}` (balanced braces),
- "Answer:" / "Final answer:" (the text after it up to the next empty line, so that multi-line
  answers such as grids survive),
- "The answer is" / "answer is" (the rest of its line; the next non-empty line when the marker
  ends its line),
- for numbers only: a `#### <number>` line, the GSM8K dataset's own answer line. The number must be
  alone on its line (`#### 72`, `#### $1,200.00`, `#### 7.`): a markdown heading such as
  `#### Step 2: Double 7` or `#### 1. Compute` is not an answer.

Otherwise the last marker in the text that yields an answer wins. `lenient=True` adds the old
fallback when no marker yields one: the last number in the text (numbers) or the last non-empty
line (free text).

Before any of this, everything from a line starting with "Question:" on (after some text) is
dropped: that is a base model starting a new example. `<think>` / `</think>` tags are blanked
(positions are kept): a marker inside an unfinished `<think>` still counts, which is what lets an
answer cue appended to truncated reasoning be read.

Numbers (`parse_number`, for GSM8K). In the marker's text, LaTeX is simplified first (`\\text{}`,
`$`, `\\$`, `\\,`, `{,}` and braces dropped; `\\frac{a}{b}` read as a/b; `\\times`, `\\cdot` as
operators), then the first number is taken: thousands separators ("1,234.50" → 1234.5), a bare
decimal (".75" → 0.75), a sign ("-5", "−5"), units and words after it ("18 dollars", "25%").
A fraction a/b is its exact decimal when it has one (3/4 → 0.75) and "p/q" in lowest terms
otherwise (never equal to a GSM8K reference, which is a decimal). A number followed by an operator
and another number ("12-5", "12 - 15", "3 * 6") is an expression or a range, not a final number,
as a human grader would read it: the answer is then what follows an "=" on that line
("3 * 6 = 18" → 18), else there is none (so "The answer is 12-5" is None, not 12 or -5). After
"answer is" / "Answer:" the number must come within 40 characters and before any punctuation
(`.,;!?`) or line break: "The answer is that she has 18" counts, "what the answer is, we add 3"
does not.
Numbers are normalised (commas, `$`, trailing zeros after the decimal point, a trailing period
removed), as is the reference.

Free text (`find_final_answer`, for reasoning-gym and ToM): the marker's text is stripped of
markdown emphasis, a surrounding `$…$` and `\\boxed{}` / `\\text{}` wrappers.

`find_number` / `find_final_answer` return `(start, answer)`: `start` is where the statement of the
final answer begins, i.e. the marker that was used or, when it directly continues an earlier marker
("The answer is $\\boxed{17}$", "Answer:\\n\\boxed{17}"), that earlier marker, with the markdown that opens its line
("**Final Answer:**", "### Answer:"). The text before it is the reasoning (`Task.split_answer`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NEW_QUESTION = re.compile(r"^\s*Question:", re.M)
_THINK_TAG = re.compile(r"</?think>", re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_COLON = re.compile(r"(?:\bfinal\s+)?\banswer\s*:", re.I)
_ANSWER_IS = re.compile(r"(?:\bthe\s+)?(?:\bfinal\s+)?\banswer\s+is\b\s*:?", re.I)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_HASH_LINE = re.compile(rf"^[ \t]*####[ \t]*(\**[ \t]*\$?[ \t]*-?(?:{_NUM})\.?[ \t]*\**)[ \t]*$", re.M)
_NUMBER = re.compile(rf"(?<![\w.])-?(?:{_NUM})")  # a sign only where no word or digit precedes it
_LOOSE_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")  # lenient fallback (the old rule)
_OPERATOR = re.compile(r"\s*(?:[-–+*/×÷^])\s*-?[\d.(]")
_PHRASE_LEAD = re.compile(r"[^.,;!?\n]{0,40}")  # what may precede the number after "answer is" / "Answer:"
_FRACTION_TAIL = re.compile(rf"\s*/\s*({_NUM})")
_CHAIN_GAP = re.compile(r"[\s*$`]*(?:\\[(\[])?[\s*$`]*")  # what may separate chained markers
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_SUBS = [
    ("\\left", ""),
    ("\\right", ""),
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\\div", "/"),
    ("\\boxed", ""),
    ("{,}", ","),
    ("\\,", ""),
    ("\\!", ""),
    ("\\;", " "),
    ("\\ ", " "),
    ("\\$", "$"),
    ("\\%", "%"),
    ("\\(", " "),
    ("\\)", " "),
    ("\\[", " "),
    ("\\]", " "),
    ("−", "-"),
    ("**", ""),
]
_BOXED = "\\boxed{"


@dataclass(frozen=True)
class Marker:
    """One answer marker in a text: `text[start:end]` is the marker, `content` the answer after it."""

    kind: str  # "tag" | "boxed" | "colon" | "is" | "hash"
    start: int
    end: int
    content: str


# ---------------------------------------------------------------- finding markers


def prepare(completion: str) -> str:
    """Cut a base model's next "Question:" and blank `<think>` tags; positions are unchanged."""
    for match in _NEW_QUESTION.finditer(completion):
        if completion[: match.start()].strip():
            completion = completion[: match.start()]
            break
    return _THINK_TAG.sub(lambda m: "\n" + " " * (len(m.group()) - 1), completion)


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every balanced `\\boxed{...}` in `text`."""
    spans = []
    start = text.find(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((start, i, text[start + len(_BOXED) : i - 1]))
        start = text.find(_BOXED, start + 1)
    return spans


def _line_after(text: str, pos: int) -> str:
    """The rest of the line from `pos`, or the next non-empty line when that rest is blank."""
    line, _, after = text[pos:].partition("\n")
    if line.strip():
        return line
    return next((ln for ln in after.split("\n") if ln.strip()), "")


def markers(text: str, hash_lines: bool = False) -> list[Marker]:
    """Every answer marker in `text` (already `prepare`d), sorted by position."""
    found = [Marker("tag", m.start(), m.start(1), m.group(1)) for m in _ANSWER_TAG.finditer(text)]
    found += [Marker("boxed", s, s + len(_BOXED), content) for s, _, content in boxed_spans(text)]
    for m in _ANSWER_COLON.finditer(text):  # the block after it: multi-line answers are grids
        found.append(Marker("colon", m.start(), m.end(), text[m.end() :].lstrip(" \t\n").split("\n\n", 1)[0]))
    found += [Marker("is", m.start(), m.end(), _line_after(text, m.end())) for m in _ANSWER_IS.finditer(text)]
    if hash_lines:
        found += [Marker("hash", m.start(), m.start(1), m.group(1)) for m in _HASH_LINE.finditer(text)]
    return sorted(found, key=lambda m: m.start)


def _statement_start(chosen: Marker, found: list[Marker], text: str) -> int:
    """Where the final answer's statement begins: `chosen`, or an earlier marker it directly continues."""
    start = chosen.start
    for m in sorted(found, key=lambda m: m.start, reverse=True):
        if m.end <= start and m.kind != "tag" and _CHAIN_GAP.fullmatch(text[m.end : start]):
            start = m.start
    while start > 0 and text[start - 1] in " \t*_#>":  # markdown that opens the statement: "**Final answer:**"
        start -= 1
    return start


def _pick(found: list[Marker], parse: Callable[[Marker], str | None]) -> tuple[Marker, str] | None:
    """The marker whose content gives an answer: a closed tag first, else the last marker in the text."""
    for group in ([m for m in found if m.kind == "tag"], found):
        for m in reversed(group):
            answer = parse(m)
            if answer:
                return m, answer
    return None


# ---------------------------------------------------------------- numbers


def normalize_number(text: str) -> str:
    """ "$1,000.00" -> "1000", "72." -> "72", "-3.50" -> "-3.5", ".75" -> "0.75"; non-numbers come back stripped."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".").lstrip("+")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return s
    return "0" if value == 0 else format(value.normalize(), "f")


def _simplify_latex(text: str) -> str:
    text = _LATEX_FRAC.sub(r"(\1)/(\2)", _LATEX_WRAPPER.sub(r" \1 ", text))
    for old, new in _LATEX_SUBS:
        text = text.replace(old, new)
    text = re.sub(r"\((-?(?:" + _NUM + r"))\)", r"\1", text)  # "(3)/(4)" -> "3/4"
    return text.replace("$", " ").replace("{", "").replace("}", "").replace("`", "")


def _fraction(numerator: str, denominator: str) -> str | None:
    p, q = Fraction(normalize_number(numerator)), Fraction(normalize_number(denominator))
    if q == 0:
        return None
    value = p / q
    d = value.denominator
    for factor in (2, 5):
        while d % factor == 0:
            d //= factor
    if d != 1:  # no exact decimal
        return f"{value.numerator}/{value.denominator}"
    return normalize_number(str(Decimal(value.numerator) / Decimal(value.denominator)))


def _number_in(text: str, lead: re.Pattern | None = None) -> str | None:
    match = _NUMBER.search(text)
    if match is None or (lead is not None and not lead.fullmatch(text[: match.start()])):
        return None
    rest = text[match.end() :]
    frac = _FRACTION_TAIL.match(rest)
    if frac and not _OPERATOR.match(rest[frac.end() :]):
        return _fraction(match.group(), frac.group(1))
    if _OPERATOR.match(rest):  # an expression or a range: its value follows "=", if anywhere
        line = rest.split("\n", 1)[0]
        return _number_in(line[line.index("=") + 1 :]) if "=" in line else None
    return normalize_number(match.group())


def parse_number(text: str, after_phrase: bool = False) -> str | None:
    """The final number an answer text states (rules in the module docstring), normalised, or None.

    after_phrase: the text follows "answer is" / "Answer:", so the number must come within its first
    sentence ("The answer is that she has 18" counts; "what the answer is, we compute 3" does not).
    """
    return _number_in(_simplify_latex(text), _PHRASE_LEAD if after_phrase else None)


def find_number(completion: str, lenient: bool = False) -> tuple[int, str] | None:
    """(start of the answer statement, normalised number), or None (rules in the module docstring)."""
    text = prepare(completion)
    found = markers(text, hash_lines=True)
    picked = _pick(found, lambda m: parse_number(m.content, after_phrase=m.kind in ("is", "colon")))
    if picked is not None:
        return _statement_start(picked[0], found, text), picked[1]
    if lenient:
        numbers = list(_LOOSE_NUMBER.finditer(text))
        if numbers:
            return numbers[-1].start(), normalize_number(numbers[-1].group())
    return None


def extract_number(completion: str, lenient: bool = False) -> str | None:
    """The final number of a math solution, normalised, or None (rules in the module docstring)."""
    found = find_number(completion, lenient)
    return None if found is None else found[1]


# ---------------------------------------------------------------- free text


def clean_answer(text: str) -> str:
    """Strip markdown emphasis, a surrounding `$...$`, and `\\boxed{}` / `\\text{}` wrappers."""
    text = text.strip()
    for _ in range(3):  # peel nested wrappers such as **$\boxed{5}$**
        before = text
        text = text.strip().strip("*`").strip()
        if len(text) >= 2 and text[0] == text[-1] == "$":
            text = text[1:-1].strip()
        for wrapper in ("\\boxed{", "\\text{"):
            if text.startswith(wrapper) and text.endswith("}"):
                text = text[len(wrapper) : -1]
        if text == before:
            break
    return text.strip()


def find_final_answer(completion: str, lenient: bool = False) -> tuple[int, str] | None:
    """(start of the answer statement, answer text), or None (rules in the module docstring)."""
    text = prepare(completion)
    found = markers(text)
    picked = _pick(found, lambda m: clean_answer(m.content))
    if picked is not None:
        return _statement_start(picked[0], found, text), picked[1]
    if lenient:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        for start in reversed(starts):
            answer = clean_answer(text[start:].split("\n", 1)[0])
            if answer:
                return start, answer
    return None


def extract_final_answer(completion: str, lenient: bool = False) -> str | None:
    """The model's final answer as free text, or None (rules in the module docstring)."""
    found = find_final_answer(completion, lenient)
    return None if found is None else found[1]
