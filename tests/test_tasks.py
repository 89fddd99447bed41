"""Tasks, mixtures and the contamination guard: every split valid and deterministic, synthetic answers
correct, held-out splits disjoint, mixture specs parsed strictly, and no evaluation question in training."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import string
from fractions import Fraction

import pytest

from conftest import MIRROR
from glassgpt.chat.conversation import ConversationError, text_of, validate
from glassgpt.errors import UsageError
from glassgpt.tasks import TASKS, Facts, arithmetic, chat_samples, gsm8k, guard, identity, mixtures, spelling
from glassgpt.tasks.multiple_choice import LETTERS, MMLU_SUBJECTS, arc_question, items

FACTS = Facts(run="d4-shakespeare", parameters=2_899_968, trainer="Ada Lovelace",
              pretraining="FineWeb-Edu web text", chat_data="SmolTalk conversations", context=1024)
OFFLINE = [name for name in TASKS if name != "smoltalk"]  # SmolTalk has no copy in the mirror
SYNTHETIC = ["identity", "arithmetic", "spelling"]


def user_texts(conversations) -> list[str]:
    return [text_of(m["content"]) for c in conversations for m in c["messages"] if m["role"] == "user"]


def assistant_parts(conversation) -> list[dict]:
    return conversation["messages"][-1]["content"]


# --- every task -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OFFLINE)
def test_every_split_is_valid_deterministic_and_the_size_it_claims(name):
    task = TASKS[name]
    for split in task.splits:
        first = task.conversations(split, FACTS)
        assert first, f"{name} {split} is empty"
        for conversation in first:
            validate(conversation, complete=True)
        assert task.conversations(split, FACTS) == first, f"{name} {split} differs between two calls"
        if split in task.sizes:
            assert len(first) == task.sizes[split]
    assert task.provenance and task.description


def test_test_splits_are_only_where_evaluation_needs_them():
    for name, task in TASKS.items():
        if task.evaluation_only:
            assert task.splits == ("test",)
        else:
            assert "train" in task.splits and "val" in task.splits


def test_limit_reads_the_first_conversations():
    assert TASKS["gsm8k"].conversations("train", limit=7) == TASKS["gsm8k"].conversations("train")[:7]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_splits_share_no_question(name):
    questions = {split: set(user_texts(TASKS[name].conversations(split))) for split in ("train", "val", "test")}
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]


# --- identity ---------------------------------------------------------------------------------

def test_identity_has_many_phrasings_and_tests_only_unseen_ones():
    for fact, phrasings in identity.QUESTIONS.items():
        assert len(phrasings) >= 30 and len({guard.normalise(p) for p in phrasings}) == len(phrasings), fact
        assert len(identity.ANSWERS[fact]) >= 5, fact
        held_out = set(identity.phrasings(fact, "test"))
        assert held_out and not held_out & set(identity.phrasings(fact, "train"))
    # Every test question is built on a held-out phrasing (prefixes and case aside).
    test_phrasings = {guard.normalise(p) for f in identity.QUESTIONS for p in identity.phrasings(f, "test")}
    for text in user_texts(identity.TASK.conversations("test")):
        assert any(guard.normalise(text).endswith(p) for p in test_phrasings), text


def test_identity_answers_state_the_runs_facts():
    conversations = identity.TASK.conversations("train", FACTS)
    replies = " ".join(c["messages"][-1]["content"] for c in conversations)
    for fact in ("d4-shakespeare", "2,899,968", "2.9 million", "Ada Lovelace", "FineWeb-Edu web text",
                 "SmolTalk conversations", "1,024", "calculator", "internet"):
        assert fact in replies
    greetings = [c for c in conversations if c["messages"][0]["content"] in identity.GREETINGS]
    assert greetings and all("d4-shakespeare" in c["messages"][1]["content"] for c in greetings)
    assert any(len(c["messages"]) >= 4 for c in conversations), "no multi-turn conversations"


def test_identity_without_a_known_size_never_claims_zero_parameters():
    replies = [m["content"] for c in identity.TASK.conversations("train", Facts())
               for m in c["messages"] if m["role"] == "assistant"]
    assert not any(re.search(r"\b0 parameters|\b0 tokens", reply) for reply in replies)


def test_identity_checks_accept_the_tasks_own_answers_and_reject_wrong_ones():
    checks = identity.identity_checks(FACTS)
    assert {fact for fact, _, _ in checks} == {"who", "size", "trainer", "context", "data"}
    passes = {question: check for _, question, check in checks}
    for conversation in identity.TASK.conversations("test", FACTS):
        messages = conversation["messages"]
        for ask, reply in zip(messages[::2], messages[1::2]):
            asked = guard.normalise(ask["content"])
            question = max((q for q in passes if asked.endswith(guard.normalise(q))), key=len, default=None)
            if question:
                assert passes[question](reply["content"]), (ask["content"], reply["content"])
    size = next(check for fact, _, check in checks if fact == "size")
    assert size("I have about 2.9M parameters") and size("2899968") and not size("I have 124 million parameters")
    who = next(check for fact, _, check in checks if fact == "who")
    assert not who("I am a 35-year-old teacher from Ohio.")


def test_facts_are_found_as_whole_words_in_any_case():
    assert identity.says("Hello! I'm Tin, a glassgpt model.", "tin")
    assert not identity.says("I'm a tiny model.", "tin") and not identity.says("Martin trained me", "tin")
    assert identity.says("I was trained by Ada Lovelace, using glassgpt.", "ada lovelace")


def test_approximate_counts_read_like_people_say_them():
    assert identity.approximate_count(2_899_968) == "2.9 million"
    assert identity.approximate_count(124_439_808) == "124 million"
    assert identity.approximate_count(1_500_000_000) == "1.5 billion"
    assert identity.approximate_count(999_999) == "1 million"
    assert identity.approximate_count(850) == "850"


# --- spelling -------------------------------------------------------------------------------------

# The word as the question wrote it (any case, maybe in quotes), after a space, then lowercased.
CALL = re.compile(r"""^(['"]) (['"]?)([A-Za-z]+)\2\1\.lower\(\)\.count\('([a-z])'\)$""")


def called_word(call: str) -> tuple[str, str, str]:
    """(the word as asked, the word lowercased, the letter) of a spelling tool call."""
    match = CALL.match(call)
    assert match, call
    return match.group(2) + match.group(3) + match.group(2), match.group(3).lower(), match.group(4)


@pytest.mark.parametrize("split", ["train", "test"])
def test_spelling_calls_first_and_the_tool_result_is_the_true_count(split):
    conversations = spelling.TASK.conversations(split)
    zeros = spelled_out = 0
    for conversation in conversations:
        call, result, reply = assistant_parts(conversation)
        assert [p["type"] for p in (call, result, reply)] == ["tool_call", "tool_result", "text"]
        as_asked, word, letter = called_word(call["text"])
        count = sum(1 for char in word if char == letter)  # counted here, not with str.count
        assert result["text"] == str(count)
        assert as_asked in conversation["messages"][0]["content"]  # copied as the question wrote it
        assert str(count) in reply["text"] and word in reply["text"].lower()
        assert word in conversation["messages"][0]["content"].lower()
        assert (" 1 " in reply["text"]) == (count == 1)  # singular only for one
        spelled_out += "-".join(word) in reply["text"]
        zeros += count == 0
    assert 0.1 < zeros / len(conversations) < 0.4, "questions about absent letters (answer 0) are missing"
    assert 0.5 < spelled_out / len(conversations) < 0.95, "the replies should mostly, not always, spell the word"
    questions = user_texts(conversations)
    assert any(q != q.lower() for q in questions) and any('"' in q or "'" in q for q in questions)


def test_spelling_words_are_held_out_by_word():
    splits = {split: {called_word(assistant_parts(c)[0]["text"])[1] for c in spelling.TASK.conversations(split)}
              for split in ("train", "val", "test")}
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["val"]
    assert all(spelling.split_of(word) == "test" for word in splits["test"])
    assert all(3 <= len(word) <= 12 for words in splits.values() for word in words)


# --- arithmetic -----------------------------------------------------------------------------------

ARITHMETIC_CALL = re.compile(r"^(\d+) ([-+*/]) (\d+)$")


@pytest.mark.parametrize("split", ["train", "test"])
def test_arithmetic_tool_results_are_the_true_values(split):
    exact = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
             "/": lambda a, b: Fraction(a, b)}
    operators = set()
    for conversation in arithmetic.TASK.conversations(split):
        call, result, reply = assistant_parts(conversation)
        assert (call["type"], result["type"], reply["type"]) == ("tool_call", "tool_result", "text")
        a, op, b = ARITHMETIC_CALL.match(call["text"]).groups()
        a, b = int(a), int(b)
        assert 1 <= a <= 9999 and 1 <= b <= 9999
        value = exact[op](a, b)
        assert abs(Fraction(result["text"]) - value) <= Fraction(1, 10**6), call["text"]
        assert result["text"] in reply["text"] and call["text"] in reply["text"]
        question = conversation["messages"][0]["content"].replace(",", "")
        assert str(a) in question and str(b) in question
        operators.add(op)
    assert operators == {"+", "-", "*", "/"}


def test_arithmetic_is_held_out_by_triple_and_divisions_are_mostly_exact():
    triples = {split: set(arithmetic.triples(split)) for split in ("train", "val", "test")}
    assert not triples["train"] & triples["test"] and not triples["val"] & triples["test"]
    assert not triples["train"] & triples["val"]
    divisions = [(a, b) for a, op, b in triples["train"] if op == "/"]
    exact = sum(a % b == 0 for a, b in divisions) / len(divisions)
    assert 0.6 < exact < 0.9


# --- GSM8K ----------------------------------------------------------------------------------------

def test_gsm8k_annotations_become_tool_calls_with_the_text_around_them():
    answer = "She sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"
    assert gsm8k.answer_parts(answer) == [
        {"type": "text", "text": "She sold 48/2 = "},
        {"type": "tool_call", "text": "48/2"},
        {"type": "tool_result", "text": "24"},
        {"type": "text", "text": "24 clips.\nIn all 48+24 = "},
        {"type": "tool_call", "text": "48+24"},
        {"type": "tool_result", "text": "72"},
        {"type": "text", "text": "72.\n#### 72"},
    ]


def test_gsm8k_falls_back_to_the_annotations_result_when_the_calculator_refuses():
    parts = gsm8k.answer_parts("Total: <<2 apples+3=5>>5 apples.\n#### 5")
    assert parts[1:3] == [{"type": "tool_call", "text": "2 apples+3"}, {"type": "tool_result", "text": "5"}]


def test_gsm8k_real_rows_have_one_tool_call_per_annotation_and_keep_the_final_answer():
    from glassgpt.calculator import calculate

    for split in ("train", "test"):
        rows = gsm8k.records(split)
        conversations = gsm8k.TASK.conversations(split)
        for row, conversation in zip(rows[:400], conversations):
            parts = assistant_parts(conversation)
            calls = [p["text"] for p in parts if p["type"] == "tool_call"]
            assert len(calls) == row["answer"].count("<<")
            assert parts[-1]["type"] == "text" and parts[-1]["text"].endswith(row["answer"].split("####")[-1])
            results = [p["text"] for p in parts if p["type"] == "tool_result"]
            assert results == [calculate(call).text for call in calls]
            assert gsm8k.extract_answer(text_of(parts)) == row["answer"].split("####")[-1].strip().replace(",", "")


def test_gsm8k_extract_answer_reads_the_number_after_the_last_marks():
    assert gsm8k.extract_answer("so 3 + 4 = 7\n#### 1,200") == "1200"
    assert gsm8k.extract_answer("#### -3.5") == "-3.5"
    assert gsm8k.extract_answer("no final answer here") is None


def test_gsm8k_val_is_the_last_500_train_problems():
    train, val = gsm8k.records("train"), gsm8k.records("val")
    assert len(val) == 500 and len(train) + len(val) == 7473
    assert not {r["question"] for r in train} & {r["question"] for r in val}


# --- multiple choice ------------------------------------------------------------------------------

def test_arc_numeric_labels_map_to_letters_by_position():
    row = {"question": "Which is a planet?", "answerKey": "3",
           "choices": {"text": ["the Moon", "the Sun", "Mars", "Polaris"], "label": ["1", "2", "3", "4"]}}
    question = arc_question(row)
    assert question.answer == "C" and question.letters == "ABCD"
    assert question.conversation["messages"][0]["content"] == (
        "Which is a planet?\n\nA. the Moon\nB. the Sun\nC. Mars\nD. Polaris\n\n"
        "Answer with the letter of the correct choice.")
    assert question.conversation["messages"][1]["content"] == "C"


def test_arc_replies_are_the_letter_of_the_keyed_choice_in_real_rows():
    rows = [json.loads(line) for line in (MIRROR / "arc" / "ARC-Challenge-test.jsonl").read_text().splitlines()]
    questions = items("arc-challenge", "test")
    numeric = [i for i, row in enumerate(rows) if row["answerKey"].isdigit()]
    assert len(numeric) == 22
    for index in numeric[:5] + [0, 1, 2, len(rows) - 1]:
        row, question = rows[index], questions[index]
        keyed = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
        reply = question.conversation["messages"][-1]["content"]
        assert reply == question.answer and reply in question.letters
        assert f"{reply}. {keyed}\n" in question.conversation["messages"][0]["content"]
    assert {len(q.letters) for q in questions} == {3, 4, 5}


def test_mmlu_uses_every_subject_and_splits_dev_without_overlap():
    assert len(MMLU_SUBJECTS) == 57 and "abstract_algebra" in MMLU_SUBJECTS
    train, val = items("mmlu", "train"), items("mmlu", "val")
    assert len(train) + len(val) == 285 and 10 <= len(val) <= 50
    asked = lambda qs: {q.conversation["messages"][0]["content"] for q in qs}  # noqa: E731
    assert not asked(train) & asked(val)
    with open(MIRROR / "mmlu" / "test" / "anatomy_test.csv", newline="", encoding="utf-8") as file:
        first = next(csv.DictReader(file))
    question = next(q for q in items("mmlu", "test") if q.conversation["messages"][0]["content"].startswith(first["question"]))
    assert question.answer == LETTERS[int(first["answer"])]


def test_evaluation_only_tasks_keep_their_raw_records_for_the_evaluation():
    from glassgpt.tasks import hellaswag, humaneval

    scenes = hellaswag.records()
    assert len(scenes) == 10042 and all(len(r["endings"]) == 4 and 0 <= r["label"] <= 3 for r in scenes)
    first = items("hellaswag", "test")[0]
    assert first.answer == LETTERS[scenes[0]["label"]] and first.letters == "ABCD"
    assert first.conversation["messages"][0]["content"].startswith(scenes[0]["context"] + "\n\nA. ")
    problems = humaneval.records()
    assert len(problems) == 164 and {"task_id", "test", "entry_point"} <= set(problems[0])
    reply = TASKS["humaneval"].conversations("test")[0]["messages"][-1]["content"]
    assert reply == problems[0]["prompt"] + problems[0]["canonical_solution"]


# --- chat samples ---------------------------------------------------------------------------------

def test_glaive_skips_exactly_the_conversations_that_call_glaives_tools():
    raw = json.loads((MIRROR / "chat" / "glaive_toolcall_en_demo.json").read_text())
    with_tools = sum(any(t["from"] in ("function_call", "observation") for t in r["conversations"]) for r in raw)
    kept, skipped = chat_samples.glaive_conversations()
    assert skipped == with_tools == chat_samples.GLAIVE_SKIPPED_TOOL_CONVERSATIONS
    assert len(kept) == len(raw) - with_tools
    task = TASKS["glaive"]
    assert len(task.conversations("train")) + len(task.conversations("val")) == len(kept)
    assert str(with_tools) in task.provenance
    for conversation in kept:
        assert {m["role"] for m in conversation["messages"]} <= {"user", "assistant"}


def test_alpaca_puts_the_input_after_the_instruction():
    conversation = chat_samples.alpaca_conversation({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"})
    assert conversation["messages"][0]["content"] == "Translate.\n\nBonjour"


def test_no_robots_keeps_every_conversation_and_its_system_messages():
    assert chat_samples.no_robots_skipped() == 0
    conversations = TASKS["no-robots"].conversations("train") + TASKS["no-robots"].conversations("val")
    assert len(conversations) == 500
    assert any(c["messages"][0]["role"] == "system" for c in conversations)


def test_smoltalk_reads_row_groups_only_until_the_limit(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from glassgpt.tasks import smoltalk

    def chat(i):
        return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]

    rows = [chat(0), [{"role": "system", "content": "Be brief."}] + chat(1),
            [{"role": "assistant", "content": "out of order"}], chat(3), chat(4), chat(5)]
    folder = tmp_path / "mirror" / "smoltalk"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"messages": rows}), folder / "train-00000-of-00004.parquet", row_group_size=2)
    pq.write_table(pa.table({"messages": [chat(9)]}), folder / "test-00000-of-00001.parquet")
    monkeypatch.setenv("GLASSGPT_DATA_MIRROR", str(tmp_path / "mirror"))
    read_groups = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, **kw: read_groups.append(i) or original(self, i, **kw))

    # The mirror has only the first train file: reading past it would fail, so this also shows
    # that the limit stops before the next file is fetched.
    first = TASKS["smoltalk"].conversations("train", limit=3)
    assert [text_of(c["messages"][-1]["content"]) for c in first] == ["answer 0", "answer 1", "answer 3"]
    assert first[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert read_groups == [0, 1]  # the invalid row 2 is skipped, and row group 2 is never read
    assert TASKS["smoltalk"].conversations("val") == [{"messages": chat(9)}]
    assert smoltalk.read("train", limit=3) == first


# --- user files -----------------------------------------------------------------------------------

def write_conversations(path, n, start=0):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"note {i}"},
                                      {"role": "assistant", "content": f"reply {i}"}]}) for i in range(start, start + n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_user_file_splits_every_tenth_into_val(tmp_path):
    from glassgpt.tasks.files import file_task

    task = file_task(write_conversations(tmp_path / "notes.jsonl", 25))
    val = task.conversations("val")
    assert [c["messages"][0]["content"] for c in val] == ["note 9", "note 19"]
    assert len(task.conversations("train")) == 23


def test_a_small_user_file_is_all_train_and_the_same_val(tmp_path):
    from glassgpt.tasks.files import file_task

    task = file_task(write_conversations(tmp_path / "few.jsonl", 4))
    assert task.conversations("train") == task.conversations("val") and len(task.conversations("val")) == 4


def test_a_user_file_in_a_spec_is_weighted_and_its_bad_line_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_conversations(tmp_path / "mine.jsonl", 12)
    built = mixtures.build("identity:0.1,mine.jsonl:3", "train")
    assert built.counts == {"identity": 200, "mine.jsonl": 33}  # 11 train conversations, three times
    assert mixtures.build("mine.jsonl", "val").counts == {"mine.jsonl": 1}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]})
                   + "\n\n" + json.dumps({"messages": [{"role": "assistant", "content": "first"}]}) + "\n")
    with pytest.raises(ConversationError, match=r"bad\.jsonl:3") as error:
        mixtures.build("bad.jsonl", "train")
    assert error.value.exit_code == 2


# --- mixtures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("identiy", r"unknown mixture or task 'identiy' \(did you mean 'identity'"),
    ("mid,arithmatic:2", r"did you mean 'arithmetic'.*mixtures: mid, sft.*tasks: identity"),
    ("identity:lots", r"bad weight 'lots'"),
    ("identity:-1", r"positive"),
    ("identity:nan", r"positive"),
    ("missing/chats.jsonl:2", r"no conversation file missing/chats\.jsonl"),
    ("notes/chats.json", r"must be a \.jsonl file"),
    ("humaneval", r"evaluation only"),
    ("hellaswag:2", r"evaluation only"),
    ("", r"empty mixture"),
    ("identity,,gsm8k", r"empty entry"),
])
def test_bad_mixture_specs_are_usage_errors_on_one_line(spec, message):
    with pytest.raises(UsageError, match=message) as error:
        mixtures.parse_mixture(spec)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)


def test_specs_name_mixtures_tasks_and_files(tmp_path):
    assert mixtures.parse_mixture("mid") is mixtures.MIXTURES["mid"]
    parsed = mixtures.parse_mixture("identity:2, arithmetic")
    assert [(e.source, e.weight) for e in parsed.entries] == [("identity", 2.0), ("arithmetic", 1.0)]
    path = write_conversations(tmp_path / "my_chats.jsonl", 3)
    parsed = mixtures.parse_mixture(f"mid,{path}:3,identity:0.5")
    weights = {e.source: e.weight for e in parsed.entries}
    assert weights[str(path)] == 3 and weights["identity"] == 1.5 and weights["glaive"] == 1
    doubled = mixtures.parse_mixture("sft-smoltalk:2")
    assert {e.source: (e.weight, e.limit) for e in doubled.entries}["smoltalk"] == (2.0, 10_000)


def test_named_mixtures_have_the_agreed_entries():
    named = mixtures.MIXTURES
    assert set(named) == {"mid", "sft", "mid-smoltalk", "sft-smoltalk"}
    sft = {e.source: e.weight for e in named["sft"].entries}
    assert sft == {"identity": 1, "arithmetic": 0.5, "spelling": 0.5, "gsm8k": 0.25, "arc-easy": 0.5,
                   "arc-challenge": 0.5, "mmlu": 1, "alpaca": 1, "no-robots": 1, "glaive": 1}
    assert all(e.weight == 1 for e in named["mid"].entries) and len(named["mid"].entries) == 10
    assert {e.source: e.limit for e in named["mid-smoltalk"].entries}["smoltalk"] == 100_000
    assert "alpaca" not in {e.source for e in named["sft-smoltalk"].entries}
    assert all(m.description for m in named.values())


def test_weights_repeat_whole_epochs_and_take_a_seeded_fraction():
    once = mixtures.build("arithmetic", "train").conversations
    twice = mixtures.build("arithmetic:2", "train").conversations
    half = mixtures.build("arithmetic:0.5", "train", seed=1).conversations
    assert len(twice) == 2 * len(once) and twice == once + once
    assert len(half) == len(once) // 2 and all(c in once for c in half[:20])
    assert mixtures.build("arithmetic:0.5", "train", seed=1).conversations == half
    assert mixtures.build("arithmetic:0.5", "train", seed=2).conversations != half
    assert len(mixtures.build("arithmetic:1.25", "train").conversations) == len(once) + len(once) // 4


def test_val_ignores_weights_and_caps_each_task():
    built = mixtures.build("arithmetic:3,gsm8k:0.1,identity", "val")
    assert mixtures.VAL_CAP < 200  # arithmetic and gsm8k have more val conversations than the cap
    assert built.counts == {"arithmetic": mixtures.VAL_CAP, "gsm8k": mixtures.VAL_CAP, "identity": 100}
    with pytest.raises(ValueError, match="evaluation only"):
        mixtures.build("identity", "test")


def test_describe_lists_every_task_and_mixture():
    rows = mixtures.describe()
    by_name = {row["name"]: row for row in rows["tasks"]}
    assert set(by_name) == set(TASKS)
    assert by_name["arithmetic"]["test"] == "500" and by_name["spelling"]["train"] == "2,000"
    assert by_name["smoltalk"]["train"] == "—" and by_name["alpaca"]["test"] == ""
    assert by_name["humaneval"]["evaluation"] == "yes"
    assert [row["name"] for row in rows["mixtures"]] == list(mixtures.MIXTURES)
    assert "identity" in rows["mixtures"][0]["entries"]


# --- the contamination guard ----------------------------------------------------------------------

def test_normalise_ignores_case_spacing_and_end_punctuation():
    assert guard.normalise("  What is\n the  Sun? ") == "what is the sun"
    assert guard.normalise('"Hello, world!"') == "hello, world"
    assert guard.fingerprints("Why?") == guard.fingerprints("why")


def test_fingerprints_cover_the_whole_text_and_each_long_paragraph():
    question = "Which gas do plants take in from the air?"
    message = f"Help me with this one:\n\n{question}\n\nA. oxygen\nB. carbon dioxide"
    assert guard.fingerprints(question) <= guard.fingerprints(message)
    assert len(guard.fingerprints("short\n\nalso short")) == 1  # only the whole text
    assert all(len(f) == 16 for f in guard.fingerprints(message))


def independent_evaluation_hashes():
    """What the guard must block, recomputed here from the raw files with this test's own code."""
    def digest(text):
        normal = " ".join(text.lower().split()).strip(string.punctuation + " ")
        return hashlib.sha256(normal.encode()).hexdigest()[:16]

    texts = []
    for level in ("Easy", "Challenge"):
        texts += [json.loads(line)["question"] for line in (MIRROR / "arc" / f"ARC-{level}-test.jsonl").open()]
    for path in sorted((MIRROR / "mmlu" / "test").glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as file:
            texts += [row["question"] for row in csv.DictReader(file)]
    texts += [json.loads(line)["question"] for line in (MIRROR / "gsm8k" / "test.jsonl").open()]
    import bz2
    import gzip
    texts += [json.loads(line)["prompt"] for line in gzip.open(MIRROR / "humaneval" / "HumanEval.jsonl.gz", "rt")]
    lines = bz2.open(MIRROR / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt").read().splitlines()
    texts += lines[::6]
    for name in SYNTHETIC:
        texts += user_texts(TASKS[name].conversations("test"))
    return {digest(text) for text in texts}, digest


def test_no_named_mixture_trains_on_an_evaluation_question():
    blocked, digest = independent_evaluation_hashes()
    trained: set[str] = set()
    dropped: dict[str, int] = {}
    for mixture in mixtures.MIXTURES.values():
        offline = mixtures.Mixture(mixture.name, tuple(e for e in mixture.entries if e.source != "smoltalk"))
        built = mixtures.build(offline, "train", FACTS)
        trained.update(user_texts(built.conversations))
        for source, n in built.dropped.items():
            dropped[source] = max(dropped.get(source, 0), n)
    leaked = [text for text in trained
              if digest(text) in blocked or any(digest(p) in blocked for p in re.split(r"\n\s*\n", text))]
    assert not leaked, leaked[:3]
    # The guard did have work to do: ARC's train files repeat some test questions.
    assert dropped["arc-easy"] > 0 and dropped["arc-challenge"] > 0
    assert dropped["identity"] == dropped["arithmetic"] == dropped["spelling"] == 0  # held out by construction


def test_the_guard_drops_a_user_file_holding_a_real_mmlu_test_question(tmp_path):
    with open(MIRROR / "mmlu" / "test" / "virology_test.csv", newline="", encoding="utf-8") as file:
        question = list(csv.DictReader(file))[7]["question"]
    path = tmp_path / "sneaky.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in [
        {"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."}]},
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "B"}]},
        {"messages": [{"role": "user", "content": f"Please answer:\n\n{question.upper()}\n\nThanks"},
                      {"role": "assistant", "content": "B"}]},
    ]) + "\n")
    built = mixtures.build(str(path), "train")
    assert built.counts == {str(path): 1} and built.dropped == {str(path): 2}
    assert built.conversations[0]["messages"][0]["content"] == "Tell me a joke."


def test_evaluation_fingerprints_are_cached_on_disk(monkeypatch):
    guard.clear_memory_cache()
    first = guard.evaluation_fingerprints()  # computed, and written to this test's data cache
    assert len(first) > 25_000
    guard.clear_memory_cache()
    monkeypatch.setattr(guard, "evaluation_texts", lambda: pytest.fail("recomputed despite the disk cache"))
    assert guard.evaluation_fingerprints() == first
