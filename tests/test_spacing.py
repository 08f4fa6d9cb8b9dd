"""Spacing: the perturbation with exact labels, evaluation under spacing noise, training-time augmentation, and
re-spacing with Kiwi at inference (offsets back into the caller's text)."""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_training import train_smoke
from tiny import TINY_TEXT, character_tokenizer, run_as_hub_user, tiny_model
from transformers import ElectraTokenizerFast, set_seed

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline, alignment
from koelectra_crf.alignment import NerDataCollator, char_tags_to_spans, kiwi_space, respaced_with_offsets
from koelectra_crf.data import example_tag_names, load_klue_ner, tokenize_and_align
from koelectra_crf.evaluation import evaluate_spacing
from koelectra_crf.handler import EndpointHandler
from koelectra_crf.spacing import (
    SPACE,
    SPACING_CONDITIONS,
    SpacingAugmentation,
    SpacingAugmentationCallback,
    perturb_dataset,
    perturb_spacing,
)
from koelectra_crf.train import parse_arguments
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN = ROOT / "training/smoke/smoke-train.tsv"
TYPES = ["PS", "LC", "OG"]
PROPERTIES = settings(max_examples=200, deadline=None)

# Sentences as pieces: plain text (tagged O) or an entity (B-X, then I-X on every character, spaces inside included,
# as KLUE tags them); an entity never starts or ends with whitespace, and may touch the next one.
plain = st.text(alphabet="가나 A1.\t", max_size=6)
entity_text = st.builds(lambda a, middle, b: a + middle + b, st.sampled_from("김서1A"), st.text("울 산", max_size=4),
                        st.sampled_from("수시2B"))  # fmt: skip
pieces = st.lists(st.one_of(plain.map(lambda text: (text, None)), st.tuples(entity_text, st.sampled_from(TYPES))))


def klue_sentence(parts: list[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
    characters, tags = [], []
    for text, label_type in parts:
        characters += list(text)
        tags += [f"{'B' if i == 0 else 'I'}-{label_type}" if label_type else "O" for i in range(len(text))]
    return characters, tags


def non_space_entities(characters: list[str], tags: list[str]) -> list[tuple[tuple[int, ...], str]]:
    """Each entity as the positions of its non-space characters among the sentence's non-space characters."""
    rank = {}
    for i, character in enumerate(characters):
        if character != SPACE:
            rank[i] = len(rank)
    return [(tuple(rank[i] for i in range(start, end) if i in rank), t) for start, end, t in char_tags_to_spans(tags)]


def without_spaces(characters: list[str], tags: list[str]) -> list[tuple[str, str]]:
    return [(character, tag) for character, tag in zip(characters, tags, strict=True) if character != SPACE]


rates = st.floats(0, 1)


@PROPERTIES
@given(parts=pieces, remove_rate=rates, insert_rate=rates, seed=st.integers(0, 2**16))
def test_perturbation_keeps_every_entity_and_tags_inserted_spaces_inside_or_outside(parts, remove_rate, insert_rate,
                                                                                     seed):  # fmt: skip
    characters, tags = klue_sentence(parts)
    new_characters, new_tags = perturb_spacing(characters, tags, remove_rate, insert_rate, random.Random(seed))
    assert len(new_characters) == len(new_tags)
    assert without_spaces(new_characters, new_tags) == without_spaces(characters, tags)
    # No entity gains or loses a non-space character, none changes type, none appears or vanishes.
    assert non_space_entities(new_characters, new_tags) == non_space_entities(characters, tags)
    # A space is inside an entity (I-X) exactly when the characters on both sides of it belong to that entity.
    member = {}  # non-space character rank -> its entity (the input's)
    for number, (ranks, label_type) in enumerate(non_space_entities(characters, tags)):
        member |= {rank: (number, label_type) for rank in ranks}
    rank = -1
    for i, (character, tag) in enumerate(zip(new_characters, new_tags, strict=True)):
        if character != SPACE:
            rank += 1
            continue
        following = rank + 1 if any(c != SPACE for c in new_characters[i:]) else None
        entity = member.get(rank) if rank >= 0 and member.get(rank) == member.get(following) else None
        assert tag == (f"I-{entity[1]}" if entity else "O")


@PROPERTIES
@given(
    characters=st.lists(st.sampled_from("가A1 \t"), max_size=20),
    data=st.data(),
    remove_rate=rates,
    insert_rate=rates,
    seed=st.integers(0, 2**16),
)
def test_perturbation_of_any_tags_changes_only_spaces(characters, data, remove_rate, insert_rate, seed):
    """Whatever the tags (ill-formed BIO, B-X on a space as KLUE has twice), the characters other than spaces keep
    theirs; rates 0 give the input back; rate 1 removes every space or spaces every gap; the seed decides."""
    tags = data.draw(st.lists(st.sampled_from(KLUE_LABELS), min_size=len(characters), max_size=len(characters)))
    perturbed = perturb_spacing(characters, tags, remove_rate, insert_rate, random.Random(seed))
    assert without_spaces(*perturbed) == without_spaces(characters, tags)
    assert perturbed == perturb_spacing(characters, tags, remove_rate, insert_rate, random.Random(seed))
    assert perturb_spacing(characters, tags, 0, 0, random.Random(seed)) == (characters, tags)
    none, _ = perturb_spacing(characters, tags, 1, 0, random.Random(seed))
    assert none == [character for character in characters if character != SPACE]
    spaced, _ = perturb_spacing(characters, tags, 0, 1, random.Random(seed))
    expected = []
    for i, character in enumerate(characters):
        expected.append(character)
        if i + 1 < len(characters) and not (character.isspace() or characters[i + 1].isspace()):
            expected.append(SPACE)
    assert spaced == expected


def test_perturbation_refuses_rates_outside_0_to_1():
    with pytest.raises(ValueError, match="remove_rate must be between 0 and 1"):
        perturb_spacing(["가"], ["O"], 1.5, 0, random.Random(0))
    with pytest.raises(ValueError, match="spacing_augmentation must be between 0 and 1"):
        parse_arguments(["--output_dir", "x", "--spacing_augmentation", "-0.1"])


@pytest.mark.parametrize("preset", ["offline-e5-small", "offline-e5-small-self-training", "klue-koelectra-base"])
def test_the_presets_train_with_the_studied_spacing_augmentation(preset):
    """docs/results.md, "Robustness to spacing": half of the sentences each epoch, half of their spaces removed, 5% of
    their gaps spaced; a flag still turns it off."""
    _, _, data, _, _ = parse_arguments(["--config", str(ROOT / f"training/configs/{preset}.json")])
    assert (data.spacing_augmentation, data.spacing_remove_rate, data.spacing_insert_rate) == (0.5, 0.5, 0.05)
    _, _, data, _, _ = parse_arguments(["--config", str(ROOT / f"training/configs/{preset}.json"),
                                        "--spacing_augmentation", "0"])  # fmt: skip
    assert data.spacing_augmentation == 0


def test_the_noise_of_a_klue_split_has_the_rates_asked_and_is_seeded(klue_valid_file):
    data = load_klue_ner(test_file=klue_valid_file)["test"]
    sentences = list(data["sentence"])
    spaces = sum(sentence.count(SPACE) for sentence in sentences)
    gaps = sum(
        sum(1 for a, b in zip(sentence[:-1], sentence[1:], strict=True) if not (a.isspace() or b.isspace()))
        for sentence in sentences
    )
    removed = perturb_dataset(data, 0.3, 0, seed=0)
    assert 0.28 < 1 - sum(s.count(SPACE) for s in removed["sentence"]) / spaces < 0.32  # 6,247 spaces
    inserted = perturb_dataset(data, 0, 0.05, seed=0)
    assert 0.045 < (sum(s.count(SPACE) for s in inserted["sentence"]) - spaces) / gaps < 0.055
    assert list(perturb_dataset(data, 1, 0)["sentence"]) == [s.replace(SPACE, "") for s in sentences]
    assert perturb_dataset(data, 0, 0) is data
    noisy = list(perturb_dataset(data, 0.3, 0.05, seed=0)["sentence"])
    assert noisy == list(perturb_dataset(data, 0.3, 0.05, seed=0)["sentence"])
    assert noisy != list(perturb_dataset(data, 0.3, 0.05, seed=1)["sentence"])
    # Sentence i's noise depends on the seed and i alone: a split's first sentences get the noise they get in the whole.
    assert list(perturb_dataset(data.select(range(20)), 0.3, 0.05)["sentence"]) == noisy[:20]
    perturbed = perturb_dataset(data, 0.3, 0.05)
    assert perturbed.features == data.features and list(perturbed["guid"]) == list(data["guid"])


def test_the_noise_is_the_same_in_another_process_with_another_hash_seed(klue_valid_file):
    """Evaluation seeds and the training processes of one run must draw the same noise: no salted `hash`."""
    script = (
        "import json, sys; from koelectra_crf.data import load_klue_ner; from koelectra_crf.spacing import "
        "perturb_dataset; data = load_klue_ner(test_file=sys.argv[1])['test'].select(range(50)); "
        "print(json.dumps(list(perturb_dataset(data, 0.3, 0.05, seed=7)['sentence'])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-c", script, str(klue_valid_file)], capture_output=True, text=True,
                               env=env, timeout=300, check=True)  # fmt: skip
    data = load_klue_ner(test_file=klue_valid_file)["test"].select(range(50))
    assert json.loads(completed.stdout.splitlines()[-1]) == list(perturb_dataset(data, 0.3, 0.05, seed=7)["sentence"])


class SpacingBlindTagger:
    """A stand-in for the pipeline whose entities depend on the characters other than spaces alone: for each
    sentence it places the entities of `table` (keyed by the sentence without spaces, entities as ranks of non-space
    characters) on whatever spacing it is given. Its KLUE scores must not depend on the spacing."""

    def __init__(self, table: dict[str, list[tuple[tuple[int, ...], str]]]):
        self.model = torch.nn.Linear(1, 1)  # evaluation switches a model to evaluation mode
        self.model.config = SimpleNamespace(id2label=dict(enumerate(KLUE_LABELS)))  # and scores its labels
        self.table = table

    def __call__(self, texts, batch_size: int = 8, aggregation_strategy: str = "simple"):
        for text in texts:
            positions = [i for i, character in enumerate(text) if character != SPACE]
            entities = []
            for ranks, label_type in self.table["".join(text[i] for i in positions)]:
                start, end = positions[ranks[0]], positions[ranks[-1]] + 1
                entities.append({"entity_group": label_type, "score": 1.0, "word": text[start:end], "start": start,
                                 "end": end})  # fmt: skip
            yield entities


def test_scores_under_every_spacing_are_those_of_the_text_as_written(klue_valid_file):
    """KLUE's metrics drop the spaces, and the perturbation keeps the gold tags of every other character: a perfect
    tagger scores 100 under every condition, and a tagger blind to spacing the same scores under every condition."""
    data = load_klue_ner(test_file=klue_valid_file)["test"]
    names = list(data.features["ner_tags"].feature.names)
    gold = {
        "".join(example["tokens"]).replace(SPACE, ""): non_space_entities(
            example["tokens"], example_tag_names(example, names)
        )
        for example in data
    }
    conditions = list(SPACING_CONDITIONS)
    perfect = evaluate_spacing(SpacingBlindTagger(gold), data, conditions, 0.3, 0.05, seed=0)
    assert [metrics["entity_f1"] for metrics, _ in perfect.values()] == [100.0] * 3
    assert [metrics["char_f1"] for metrics, _ in perfect.values()] == [100.0] * 3
    # Imperfect: every third entity missed, every fourth of another type, every fifth one character short.
    errors = {}
    for n, (sentence, entities) in enumerate(gold.items()):
        changed = []
        for k, (ranks, label_type) in enumerate(entities):
            if (n + k) % 3 == 0:
                continue
            if (n + k) % 4 == 0:
                label_type = TYPES[(TYPES.index(label_type) + 1) % 3] if label_type in TYPES else "PS"
            if (n + k) % 5 == 0 and len(ranks) > 1:
                ranks = ranks[:-1]
            changed.append((ranks, label_type))
        errors[sentence] = changed
    results = evaluate_spacing(SpacingBlindTagger(errors), data, conditions, 0.3, 0.05, seed=0)
    scores = [metrics for metrics, _ in results.values()]
    assert scores[0]["entity_f1"] < 80 and scores[0] == scores[1] == scores[2]
    texts = [[p.text for p in predictions] for _, predictions in results.values()]
    assert texts[0] == list(data["sentence"]) and texts[1] != texts[0] and all(SPACE not in text for text in texts[2])


@pytest.fixture(scope="module")
def smoke_sentences():
    return load_klue_ner(SMOKE_TRAIN)["train"].select(range(64))


def _rows(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def _unit_characters(row: dict, tokenizer) -> list[str]:
    """The character of each labelled unit of a row: from `char_codes` (character units) or from the token of a
    character tokenizer, one character per token (token units)."""
    if "char_codes" in row:
        return [chr(code) for code in row["char_codes"]]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    return [token.removeprefix("##") for token, label in zip(tokens, row["labels"], strict=True) if label != -100]


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_augmented_rows_are_labelled_exactly_and_change_every_epoch(smoke_sentences, tmp_path, tag_unit):
    tokenizer = character_tokenizer(tmp_path, "".join(smoke_sentences["sentence"]))
    model = tiny_model(tokenizer.vocab_size, tag_unit=tag_unit)
    names = list(smoke_sentences.features["ner_tags"].feature.names)
    dataset = SpacingAugmentation(smoke_sentences, tokenizer, model.config, 0.5, 0.5, 0.2, seed=3)
    as_written = _rows(tokenize_and_align(smoke_sentences, tokenizer, model.config))
    assert len(dataset) == len(as_written) == len(smoke_sentences)  # one window each: short sentences

    epochs = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        rows = _rows(dataset)
        for row, example in zip(rows, smoke_sentences, strict=True):
            # Independent of the perturbation's code: the labelled units are the sentence's characters other than
            # spaces, in order, each with its own gold tag.
            gold = [(c, t) for c, t in zip(example["tokens"], example_tag_names(example, names), strict=True)
                    if not c.isspace()]  # fmt: skip
            labels = [model.config.id2label[label] for label in row["labels"] if label != -100]
            assert list(zip(_unit_characters(row, tokenizer), labels, strict=True)) == gold
        changed = {i for i, (row, original) in enumerate(zip(rows, as_written, strict=True)) if row != original}
        assert 16 < len(changed) < 48  # about half of the 64 sentences (the rest drawn unchanged or not drawn)
        epochs.append(changed)
    assert epochs[0] != epochs[1] != epochs[2]
    dataset.set_epoch(1)
    assert {i for i, (row, original) in enumerate(zip(_rows(dataset), as_written, strict=True))
            if row != original} == epochs[1]  # fmt: skip


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_share_0_gives_exactly_the_batches_of_today(smoke_sentences, tmp_path, sampling):
    tokenizer = character_tokenizer(tmp_path, "".join(smoke_sentences["sentence"]))
    model = tiny_model(tokenizer.vocab_size, tag_unit="character")
    args = NerTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                                per_device_train_batch_size=8, train_sampling_strategy=sampling)  # fmt: skip

    def batches(train_dataset) -> list[dict]:
        trainer = NerTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                             data_collator=NerDataCollator(tokenizer.pad_token_id))  # fmt: skip
        set_seed(0)
        return list(trainer.get_train_dataloader())

    today = batches(tokenize_and_align(smoke_sentences, tokenizer, model.config))
    augmented = batches(SpacingAugmentation(smoke_sentences, tokenizer, model.config, share=0.0))
    assert len(today) == len(augmented) == 8
    for expected, batch in zip(today, augmented, strict=True):
        assert expected.keys() == batch.keys()
        assert all(torch.equal(expected[key], batch[key]) for key in expected)


def test_a_sentence_whose_windows_would_change_stays_as_written(smoke_sentences):
    """Rows are windows: a perturbed sentence that needs more or fewer windows than as written keeps its text."""
    tokenizer = ElectraTokenizerFast(vocab=str(shared_path("data/vocab/koelectra-v1-vocab.txt")))
    model = tiny_model(tokenizer.vocab_size, max_length=12, stride=2)
    dataset = SpacingAugmentation(smoke_sentences, tokenizer, model.config, 1.0, 1.0, 0.0)
    as_written = _rows(tokenize_and_align(smoke_sentences, tokenizer, model.config))
    assert len(dataset) == len(as_written) > len(smoke_sentences)
    rows = _rows(dataset)
    kept = {s for s, _ in dataset.rows} - set(dataset.perturbed)
    assert kept and dataset.perturbed  # both cases occur
    for (s, _), row, original in zip(dataset.rows, rows, as_written, strict=True):
        assert (row == original) == (s in kept)


def test_the_callback_sets_the_epoch_a_resumed_run_is_in(smoke_sentences, tmp_path):
    tokenizer = character_tokenizer(tmp_path, "".join(smoke_sentences["sentence"]))
    dataset = SpacingAugmentation(smoke_sentences, tokenizer, tiny_model(tokenizer.vocab_size).config, 0.5)
    callback = SpacingAugmentationCallback(dataset)
    state = type("State", (), {"epoch": 2.4})()
    callback.on_epoch_begin(None, state, None)
    assert dataset.epoch == 2
    args = NerTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2,
                                dataloader_persistent_workers=True)  # fmt: skip
    with pytest.raises(ValueError, match="persistent data loader workers"):
        callback.on_train_begin(args, state, None)


# Re-spacing with Kiwi.

SENTENCES = ["김철수는서울에서2024년3월1일오전9시에삼성전자사과3개를샀다.", "이재용회장이 서울 강남구본사를찾았다",
             "오늘은  날씨가 맑고\t바람이분다", "ABC123李😀"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> KoElectraCrfTokenClassificationPipeline:
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path_factory.mktemp("tokenizer"), texts=[TINY_TEXT, *SENTENCES])
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    with torch.no_grad():  # a random head that finds entities now and then
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


@PROPERTIES
@given(
    text=st.text(alphabet="가나다A1 \t\u3000", max_size=30),
    data=st.data(),
)
def test_respaced_text_takes_only_the_spacing_and_keeps_the_offsets(text, data):
    """`spaced`: `text` with whitespace removed and added anywhere, and some characters replaced (a re-spacer may
    write a word in its own form). The result holds `text`'s characters with the new spacing; a character kept maps
    to itself, an inserted space to nothing."""
    spaced = []
    for character in text:
        if character.isspace() and data.draw(st.booleans()):
            continue
        replaced = not character.isspace() and data.draw(st.integers(0, 9)) == 0
        spaced.append("라" if replaced else character)
        if data.draw(st.booleans()):
            spaced.append(" ")
    spaced = "".join(spaced)
    result, spans = respaced_with_offsets(text, spaced)
    assert len(spans) == len(result)
    assert [c for c in result if not c.isspace()] == [c for c in text if not c.isspace()]
    for character, (start, end) in zip(result, spans, strict=True):
        assert text[start:end] == character or (character == " " and start == end)
    assert all(a[1] <= b[0] for a, b in zip(spans[:-1], spans[1:], strict=True)) and all(a <= b for a, b in spans)
    if "라" not in spaced:  # nothing replaced: the spacing is all `spaced`'s (up to a gap's whitespace kept as it was)
        assert result.split() == spaced.split()


def test_respaced_offsets_lead_back_into_decomposed_hangul():
    original = unicodedata.normalize("NFD", "김철수는서울에서 사과를샀다")
    text, spans = alignment.nfc_with_offsets(original)
    spaced = "김철수는 서울에서 사과를 샀다"
    result, result_spans = respaced_with_offsets(text, spaced, spans)
    assert result == spaced
    # The space after 서울에서 was the caller's; the two inserted ones span nothing.
    assert [unicodedata.normalize("NFC", original[a:b]) for a, b in result_spans] == list("김철수는") + [""] + list(
        "서울에서 사과를"
    ) + [""] + list("샀다")


def _shift_back(entities: list[dict], spaced: str, text: str) -> list[dict]:
    """Entities of `spaced` (= `text` with spaces only inserted) moved to `text`'s offsets, counting the spaces."""
    position, k, original = [], 0, []
    for character in spaced:
        position.append(k)
        k += text[k : k + 1] == character
    for entity in entities:
        start, end = position[entity["start"]], position[entity["end"] - 1] + 1
        original.append({**entity, "start": start, "end": end, "word": text[start:end]})
    return original


@pytest.mark.parametrize("strategy", ["none", "simple"])
def test_respace_tags_the_kiwi_spaced_text_with_offsets_into_the_callers(tiny_pipeline, strategy):
    for text in SENTENCES:
        spaced = kiwi_space(text)
        assert len(spaced) >= len(text)  # precondition: Kiwi only inserted spaces in these sentences
        respaced = tiny_pipeline(text, respace=True, aggregation_strategy=strategy)
        expected = _shift_back(tiny_pipeline(spaced, aggregation_strategy=strategy), spaced, text)
        assert [{**e, "score": 0, "index": 0} for e in respaced] == [{**e, "score": 0, "index": 0} for e in expected]
        assert [e["score"] for e in respaced] == pytest.approx([e["score"] for e in expected], abs=1e-5)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in respaced)
    assert any(tiny_pipeline(SENTENCES, respace=True, aggregation_strategy="simple"))


@settings(max_examples=40, deadline=None)
@given(text=st.lists(st.sampled_from([*SENTENCES, " ", "  ", "\n", unicodedata.normalize("NFD", "서울에서"), "😀",
                                      "e\u0301", "２０２４"]), max_size=6).map("".join))  # fmt: skip
def test_respace_keeps_every_offset_exact_on_random_text(tiny_pipeline, text):
    end = 0
    for entity in tiny_pipeline(text, respace=True, aggregation_strategy="simple"):
        assert end <= entity["start"] < entity["end"] <= len(text)
        assert entity["word"] == text[entity["start"] : entity["end"]]
        end = entity["end"]


def test_without_kiwipiepy_respace_says_how_to_install_it(tiny_pipeline, monkeypatch):
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # as if not installed: importing it raises ImportError
    alignment._kiwi.cache_clear()
    try:
        assert tiny_pipeline(SENTENCES[0], aggregation_strategy="simple") is not None
        with pytest.raises(ImportError, match="pip install kiwipiepy"):
            tiny_pipeline(SENTENCES[0], respace=True)
        with pytest.raises(ImportError, match="pip install kiwipiepy"):
            KoElectraCrfTokenClassificationPipeline(
                model=tiny_pipeline.model, tokenizer=tiny_pipeline.tokenizer, respace=True
            )
    finally:
        alignment._kiwi.cache_clear()


HUB_USER_WITHOUT_KIWI = """
import json, sys
sys.modules["kiwipiepy"] = None  # not installed
from transformers import pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
ner = pipeline("token-classification", model=folder, trust_remote_code=True)
try:
    ner(texts[0], respace=True)
    message = None
except ImportError as error:
    message = str(error)
print(json.dumps({"entities": ner(texts, aggregation_strategy="simple"), "message": message,
                  "imported_koelectra_crf": "koelectra_crf" in sys.modules}))
"""


def test_the_remote_code_loads_without_kiwipiepy_and_the_handler_passes_respace(tiny_pipeline, tmp_path):
    folder = tmp_path / "model"
    tiny_pipeline.save_pretrained(folder)
    fresh = run_as_hub_user(HUB_USER_WITHOUT_KIWI, folder, SENTENCES, tmp_path)
    assert fresh["imported_koelectra_crf"] is False
    assert fresh["entities"] == json.loads(json.dumps(tiny_pipeline(SENTENCES, aggregation_strategy="simple")))
    assert "pip install kiwipiepy" in fresh["message"]

    handler = EndpointHandler(str(folder))
    answer = handler({"inputs": SENTENCES, "parameters": {"respace": True}})
    expected = tiny_pipeline(SENTENCES, respace=True, aggregation_strategy="simple")
    assert [[{**e, "score": 0} for e in entities] for entities in answer] == [
        [{**e, "score": 0} for e in entities] for entities in expected
    ]
    assert answer != handler({"inputs": SENTENCES})  # precondition: re-spacing changes what the model finds


# Training with spacing augmentation, end to end (the smoke preset: 160 sentences, 10 steps an epoch).

EPOCH_LOG = re.compile(r"spacing augmentation, epoch (\d+): (\d+) of 160 sentences perturbed")


@pytest.mark.parametrize("sampling, checkpoint", [("random", 15), ("group_by_length", 10)])
def test_an_augmented_run_resumes_with_the_perturbations_it_would_have_seen(tmp_path, sampling, checkpoint):
    """Killed and resumed, a run ends with the weights of the uninterrupted run: the sentences of the epoch it resumes
    in are perturbed as they were. Random batches: killed in the middle of the second epoch; batches grouped by
    length: at its start (transformers' length-grouped sampler draws from the global random state, which a resumed run
    restores only after skipping the batches done, so it resumes exactly at an epoch's start only)."""
    steps = ["--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "no",
             "--load_best_model_at_end", "false", "--save_total_limit", "5", "--train_sampling_strategy", sampling,
             "--spacing_augmentation", "0.5", "--spacing_remove_rate", "0.5"]  # fmt: skip
    reference = tmp_path / "reference"
    logged = dict(EPOCH_LOG.findall(train_smoke(reference, *steps).stderr))
    assert set(logged) == {"0", "1"} and all(40 < int(count) < 120 for count in logged.values())
    card = (reference / "README.md").read_text(encoding="utf-8")
    assert "- spacing augmentation: 50% of the sentences each epoch (50% of their spaces removed, 5% of gaps" in card
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(reference / f"checkpoint-{checkpoint}", interrupted / f"checkpoint-{checkpoint}")
    resumed_log = train_smoke(interrupted, *steps, "--resume_from_checkpoint", "last").stderr
    assert dict(EPOCH_LOG.findall(resumed_log)) == logged
    resumed, expected = load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-5)


def test_two_processes_perturb_the_same_sentences(tmp_path):
    accelerate = shutil.which("accelerate")
    assert accelerate is not None
    completed = train_smoke(
        tmp_path, "--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--use_cpu", "true",
        "--spacing_augmentation", "0.5",
        launcher=(accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no"),
    )  # fmt: skip
    logged = EPOCH_LOG.findall(completed.stderr)
    assert sorted(epoch for epoch, _ in logged) == ["0", "0", "1", "1", "2", "2"]  # each epoch once per process
    assert len(set(logged)) == 3  # the same sentences in both
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 30  # global batch 16
