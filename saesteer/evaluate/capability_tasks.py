"""The capability tasks (names, datasets, formats), their prompt formats, answer extraction and
scoring rules.

Pure functions, no model. The log-likelihood formats (`mmlu_ll`, `truthfulqa_mc1/mc2`) and
`gsm8k` reproduce lm-evaluation-harness's `mmlu` (default), `truthfulqa_mc1/mc2` and
`gsm8k_cot` prompts character for character (checked in tests/test_capability.py against the
installed harness, and end to end by benchmarks/capability_agreement.py). `mmlu_gen` and
`gsm8k_chat` are the paper's chat formats (O'Brien et al. 2024, Appendix A.5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from saesteer.data import Record
from saesteer.errors import SaesteerError
from saesteer.models import Conversation

# --- the tasks -------------------------------------------------------------------------------

DEFAULT_TASKS = ("mmlu_gen", "mmlu_ll", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k")
TASKS: dict[str, str] = {
    "mmlu_gen": "MMLU 5-shot chat, answer letter extracted from the generation (the paper's format)",
    "mmlu_ll": "MMLU 5-shot, log-likelihood of the answer letter (lm-eval's format)",
    "truthfulqa_mc1": "TruthfulQA MC1 by log-likelihood (lm-eval)",
    "truthfulqa_mc2": "TruthfulQA MC2 by log-likelihood (lm-eval)",
    "gsm8k": "GSM8K 8-shot chain of thought, last number (lm-eval's gsm8k_cot)",
    "gsm8k_chat": "GSM8K 8-shot chain of thought as chat turns (the paper's format)",
    "bundled_mc": "saesteer's 80 four-choice questions in mmlu_gen's format (offline)",
    "bundled_mc_ll": "saesteer's 80 four-choice questions in mmlu_ll's format (offline)",
    "bundled_math": "saesteer's 40 word problems in gsm8k's format (offline)",
}
DATASET = {"mmlu_gen": "mmlu", "mmlu_ll": "mmlu", "truthfulqa_mc1": "truthfulqa",
           "truthfulqa_mc2": "truthfulqa", "gsm8k": "gsm8k", "gsm8k_chat": "gsm8k",
           "bundled_mc": "bundled:mc", "bundled_mc_ll": "bundled:mc", "bundled_math": "bundled:math"}
# Tasks that reuse another task's format on a different dataset.
FORMAT = {"bundled_mc": "mmlu_gen", "bundled_mc_ll": "mmlu_ll", "bundled_math": "gsm8k"}


def task_format(task: str) -> str:
    """The format a task is scored in (`bundled_mc` is scored like `mmlu_gen`)."""
    return FORMAT.get(task, task)


def parse_tasks(tasks: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [t.strip() for t in tasks]
    names = [t for t in names if t]
    if not names:
        raise SaesteerError(f"no capability task given; choose from {', '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            raise SaesteerError(f"unknown capability task {name!r}; choose from {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


# --- shared ------------------------------------------------------------------------------------

LETTERS = ("A", "B", "C", "D")
UNK = "UNK"

# --- MMLU ------------------------------------------------------------------------------------


def subject_name(subject: str) -> str:
    return subject.replace("_", " ")


def mmlu_question(record: Record) -> str:
    """lm-eval's `doc_to_text` for MMLU: the question, lettered options, then "Answer:"."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, record.choices or []))
    return f"{record.text.strip()}{options}\nAnswer:"


def mmlu_ll_context(subject: str, shots: Sequence[Record], record: Record) -> str:
    """5-shot context of lm-eval's default MMLU task; the continuations are " A" ... " D"."""
    head = f"The following are multiple choice questions (with answers) about {subject_name(subject)}.\n\n"
    examples = "".join(f"{mmlu_question(s)} {LETTERS[s.correct[0]]}\n\n" for s in shots)
    return head + examples + mmlu_question(record)


MMLU_GEN_INSTRUCTION = (
    "The following is a multiple choice question about {subject}. Reply with the letter of the "
    "correct option in the format 'ANSWER: $LETTER' (without quotes), where LETTER is one of A, B, C or D.")


def mmlu_gen_turn(subject: str, record: Record) -> str:
    options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, record.choices or []))
    return f"{MMLU_GEN_INSTRUCTION.format(subject=subject_name(subject))}\n\n{record.text.strip()}\n\n{options}"


def mmlu_gen_conversation(subject: str, shots: Sequence[Record], record: Record) -> Conversation:
    """The paper's generative format: the few-shot questions and `ANSWER: X` replies as prior turns."""
    messages: Conversation = []
    for s in shots:
        messages.append({"role": "user", "content": mmlu_gen_turn(subject, s)})
        messages.append({"role": "assistant", "content": f"ANSWER: {LETTERS[s.correct[0]]}"})
    messages.append({"role": "user", "content": mmlu_gen_turn(subject, record)})
    return messages


def few_shot_conversations(records: Sequence[Record], shots: int = 5) -> list[Conversation]:
    """Each multiple-choice question in `mmlu_gen_conversation`'s format after `shots` others of its
    category (the next ones in the set, wrapping round; fewer where the category is smaller)."""
    by_category: dict[str, list[Record]] = {}
    for r in records:
        if not r.choices or not r.correct:
            raise SaesteerError(f"{r.source} question {r.id} has no choices and answer; few-shot capability "
                                "prompts need a multiple-choice set such as bundled:mc or mmlu")
        by_category.setdefault(r.category or "", []).append(r)
    out = []
    for r in records:
        group = by_category[r.category or ""]
        i = group.index(r)
        others = group[i + 1:] + group[:i]
        out.append(mmlu_gen_conversation(r.category or "", others[:shots], r))
    return out


_ANSWER = r"(?i:answer)\s*(?:(?i:is)\s*)?[:：]?\s*[*(\[$\"']*\s*([A-D])"
_ANSWER_DONE = re.compile(_ANSWER + r"(?=[^A-Za-z0-9])")
_ANSWER_ANY = re.compile(_ANSWER + r"(?![A-Za-z0-9])")
_LEADING = re.compile(r"^\s*[*(\[]*\s*([A-D])\s*(?:[)\].:]|$)")


def extract_letter(text: str) -> str | None:
    """The answer letter of an MMLU generation, or None (counted as UNK).

    Reads the first `ANSWER: X` (any case for the word, `is`, brackets, `$` or markdown bold
    allowed around the letter), else a reply that starts with a bare option letter (`B`,
    `(C)`, `D) ...`, `A.`). A letter glued to more letters ("Cannot") is not an answer.
    """
    m = _ANSWER_ANY.search(text)
    if m:
        return m.group(1)
    m = _LEADING.match(text)
    return m.group(1) if m else None


def answer_given(text: str) -> bool:
    """True once a generation holds a complete `ANSWER: X` (used to stop generating early)."""
    return _ANSWER_DONE.search(text) is not None


# --- TruthfulQA -------------------------------------------------------------------------------

TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")


def truthfulqa_context(question: str) -> str:
    """lm-eval's TruthfulQA MC context (the 6-shot QA preamble); continuations are " " + choice."""
    return f"{TRUTHFULQA_PREAMBLE}\n\nQ: {question}\nA:"


def mc2_score(logprobs: Sequence[float], true_indices: Sequence[int]) -> float:
    """TruthfulQA MC2: the normalised probability mass on the true answers (lm-eval's formula,
    computed in log space so that very unlikely answers do not underflow to 0/0)."""
    if not logprobs or not true_indices:
        raise ValueError("MC2 needs answers and at least one true answer")
    top = max(logprobs)
    total = sum(math.exp(x - top) for x in logprobs)
    true = sum(math.exp(logprobs[i] - top) for i in true_indices)
    return true / total


# --- GSM8K ------------------------------------------------------------------------------------

# The 8 chain-of-thought exemplars of Wei et al. 2022, as lm-eval's `gsm8k_cot` writes them.
GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
     "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
     "must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
     "eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
     "20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from "
     "monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
     "many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing "
     "2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
     "dollars left. 23 - 15 is 8. The answer is 8."),
)
GSM8K_STOP = ("Q:", "</s>", "<|im_end|>")
GSM8K_SYSTEM = ("Solve the math word problem step by step. The last number you write is taken as "
                "your final answer.")


def gsm8k_prompt(question: str) -> str:
    """lm-eval's `gsm8k_cot`: eight "Q: ...\\nA: ..." exemplars, then the question and "A:"."""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_EXEMPLARS)
    return f"{shots}Q: {question}\nA:"


def gsm8k_conversation(question: str) -> Conversation:
    """The paper's chat format: the exemplars as prior turns (the system prompt comes from the config)."""
    messages: Conversation = []
    for q, a in GSM8K_EXEMPLARS:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return messages


_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")


def normalise_number(text: str) -> str:
    """lm-eval's exact-match normalisation for GSM8K: drop commas, `$`, anything up to `#### `
    and one trailing period; lower case."""
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text.lower()


def extract_number(text: str) -> str | None:
    """The last number in a generation (lm-eval's `flexible-extract`), unnormalised, or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    last = matches[-1]
    return last[0] or last[1]


def extract_strict(text: str) -> str | None:
    """The number after the first "The answer is" (lm-eval's `strict-match`), or None."""
    m = _STRICT.search(text)
    return m.group(1) if m else None


def number_matches(prediction: str | None, reference: str) -> bool:
    return prediction is not None and normalise_number(prediction) == normalise_number(reference.strip())
