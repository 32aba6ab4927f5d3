"""Text converters for encoding attacks, each with its inverse where one exists, in the manner of PyRIT's prompt
converters (pyrit/converter/*.py, PyRIT 1.1.0) and the encodings of Wei et al. 2023.

A converter turns the request into the payload an attack sends; its decoder turns text in that
encoding back into plain text. Decoders also read the target's answers: a model asked to answer
in base64 is judged on what its base64 says. Converters here accept any Unicode text (letters
outside their alphabet pass through unchanged), so none fails on non-ASCII requests.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import random
import re

_ENGLISH = set("""the a an and or of to in is are be it that this for on with as at by from
you your i we they he she not can how what which when where who will would should do does
here there step first then use make if all any some so but have has""".split())


def english_score(text: str) -> float:
    """Share of words that are common English words: tells plain text from ciphertext."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _ENGLISH for w in words) / len(words) if words else 0.0


def plainest(*candidates: str) -> str:
    """The candidate that reads most like English (the first on ties): an answer may come back
    encoded or in plain text, and a decoder keeps whichever is readable."""
    return max(candidates, key=english_score)


# --- base64 (PyRIT Base64Converter; Wei et al. 2023 "base64") -----------------------------------

def to_base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


_B64_RUN = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")


def from_base64(text: str) -> str:
    """Replace every base64 run that decodes to readable UTF-8 text by that text."""
    def decode(m: re.Match) -> str:
        run = m.group(0)
        padded = run + "=" * (-len(run) % 4)
        try:
            plain = base64.b64decode(padded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return run
        printable = sum(c.isprintable() or c in "\n\t" for c in plain) / max(1, len(plain))
        return plain if printable > 0.95 else run
    return _B64_RUN.sub(decode, text)


# --- letter substitutions (PyRIT ROT13Converter, AtbashConverter, CaesarConverter) ---------------

def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _atbash_table() -> dict[int, str]:
    lower, upper, digits = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
    return str.maketrans(lower + upper + digits, lower[::-1] + upper[::-1] + digits[::-1])


_ATBASH = _atbash_table()


def atbash(text: str) -> str:
    """A->Z, B->Y, ..., 0->9 (its own inverse), as PyRIT's AtbashConverter."""
    return text.translate(_ATBASH)


def caesar(text: str, shift: int = 3) -> str:
    out = []
    for c in text:
        if "a" <= c <= "z":
            out.append(chr((ord(c) - 97 + shift) % 26 + 97))
        elif "A" <= c <= "Z":
            out.append(chr((ord(c) - 65 + shift) % 26 + 65))
        else:
            out.append(c)
    return "".join(out)


def uncaesar(text: str, shift: int = 3) -> str:
    return caesar(text, -shift)


# --- leetspeak (PyRIT LeetspeakConverter, deterministic; Wei et al. 2023 "leetspeak") -----------

# PyRIT's first substitution per letter, minus those whose digit another letter also takes
# (l -> 1 beside i -> 1), so that decoding is unambiguous.
LEET = {"a": "4", "b": "8", "e": "3", "g": "9", "i": "1", "o": "0", "s": "5", "t": "7", "z": "2"}
_LEET = str.maketrans({**LEET, **{k.upper(): v for k, v in LEET.items()}})
_UNLEET = str.maketrans({v: k for k, v in LEET.items()})


def leetspeak(text: str) -> str:
    return text.translate(_LEET)


def unleetspeak(text: str) -> str:
    """Digits inside words that also hold letters become letters again. Short all-digit words
    ("1", "47") do too, but only in text that shows leetspeak elsewhere; numbers stay numbers."""
    leet = re.search(r"\b(?=\w*[^\W\d_])(?=\w*[0-9])\w+\b", text) is not None

    def word(m: re.Match) -> str:
        w = m.group(0)
        if re.search(r"[^\W\d_]", w) or (leet and len(w) <= 2 and all(c in _LEET_DIGITS for c in w)):
            return w.translate(_UNLEET)
        return w
    return re.sub(r"\w+", word, text)


_LEET_DIGITS = set(LEET.values())


# --- layout (PyRIT CharacterSpaceConverter, FlipConverter; Wei et al. 2023 "disemvowel") ---------

_PUNCTUATION = re.compile("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~]")


def character_space(text: str) -> str:
    """Every character separated by a space, punctuation removed (PyRIT's CharacterSpaceConverter)."""
    return _PUNCTUATION.sub("", " ".join(text))


def uncharacter_space(text: str) -> str:
    """Undo character spacing (a letter gap is one space, a word gap two or more); text that is
    not spaced out comes back unchanged."""
    tokens = text.split()
    if len(tokens) < 4 or sum(len(t) == 1 for t in tokens) < 0.8 * len(tokens):
        return text
    return " ".join(w.replace(" ", "") for w in re.split(r" {2,}", text.strip()))


def flip(text: str) -> str:
    """The text reversed, character by character (PyRIT's FlipConverter); its own inverse."""
    return text[::-1]


def disemvowel(text: str) -> str:
    """Vowels removed (Wei et al. 2023); cannot be undone, so its decoder is the identity."""
    return re.sub(r"[aeiouAEIOU]", "", text)


# --- Best-of-N augmentations (Hughes et al. 2024, arXiv:2412.03556; PyRIT RandomCapitalLettersConverter,
# CharSwapConverter) ------------------------------------------------------------------------------
# Typos and odd casing that a reader, small models included, still understands, but that move the
# request off the token sequences refusal training saw. Each draw is seeded by the text itself, so a
# request always gets the same augmentation; Best-of-N proper samples many and keeps any success.

def _rng(text: str, salt: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "big"))


def random_capitalization(text: str, p: float = 0.6) -> str:
    """Each character upper-cased with probability `p` (BoN: 0.6), the rest lower-cased."""
    rng = _rng(text, "caps")
    return "".join(c.upper() if rng.random() < p else c.lower() for c in text)


def word_scramble(text: str, p: float = 0.6) -> str:
    """The middle letters of each word longer than three letters shuffled with probability `p` (BoN:
    0.6); first and last letters stay, so the word stays readable."""
    rng = _rng(text, "scramble")

    def word(m: re.Match) -> str:
        w = m.group(0)
        if len(w) <= 3 or rng.random() >= p:
            return w
        middle = list(w[1:-1])
        rng.shuffle(middle)
        return w[0] + "".join(middle) + w[-1]
    return re.sub(r"[^\W\d_]+", word, text)


def character_noise(text: str, p: float = 0.06) -> str:
    """Each printable ASCII character moved one code point up or down with probability `p` (BoN:
    0.06); other characters, non-ASCII included, pass through."""
    rng = _rng(text, "noise")
    out = []
    for c in text:
        if 32 < ord(c) < 126 and rng.random() < p:
            c = chr(ord(c) + rng.choice((-1, 1)))
        out.append(c)
    return "".join(out)


def best_of_n_augment(text: str) -> str:
    """The three augmentations together, as BoN jailbreaking draws them."""
    return character_noise(random_capitalization(word_scramble(text)))


# --- decoders for answers ------------------------------------------------------------------------

def decode_base64_answer(text: str) -> str:
    return plainest(text, from_base64(text))


def involution_decoder(convert):
    """Decoder for a cipher that is its own inverse: keep the answer or its deciphering, whichever
    reads as English."""
    return lambda text: plainest(text, convert(text))
