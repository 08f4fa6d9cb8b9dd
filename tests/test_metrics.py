"""KLUE NER metrics against an independent re-implementation of KLUE-baseline's formulas."""

import random

import evaluate
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.scheme import IOB2

from koelectra_crf.configuration_koelectra_crf import KLUE_LABELS
from koelectra_crf.data import read_klue_tsv
from koelectra_crf.formats import bio_labels
from koelectra_crf.metrics import EVALUATE_MODULE_PATH, klue_ner_metrics, metric_types

TYPES = [label[2:] for label in KLUE_LABELS if label.startswith("B-")]


def klue_sequence(tag_lists, token_lists):
    """KLUE-baseline's evaluation sequence: characters " " dropped, ["O"] + tags + ["O"], concatenated."""
    sequence = []
    for tags, tokens in zip(tag_lists, token_lists, strict=True):
        sequence += ["O"] + [tag for tag, char in zip(tags, tokens, strict=True) if char != " "] + ["O"]
    return sequence


def macro_char_f1(y_true, y_pred, labels):
    """Macro F1 over `labels` counted by hand; a label absent from both sides scores 1 (zero_division=1)."""
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != label and p == label for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == label and p != label for t, p in zip(y_true, y_pred, strict=True))
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100 * sum(scores) / len(scores)


def strict_entities(sequence):
    """Strict IOB2 entities: B-X then I-X*; an I-X that does not continue its own entity is no entity."""
    entities, start = set(), None
    for i, tag in enumerate([*sequence, "O"]):
        if start is not None and tag != "I-" + sequence[start][2:]:
            entities.add((start, i, sequence[start][2:]))
            start = None
        if tag.startswith("B-"):
            start = i
    return entities


def oracle(references, predictions, tokens):
    """KLUE-baseline's two metrics (seqeval strict macro, direct char macro F1) and per-type entity F1."""
    y_true, y_pred = klue_sequence(references, tokens), klue_sequence(predictions, tokens)
    gold, found = strict_entities(y_true), strict_entities(y_pred)
    per_type = {}
    for entity_type in TYPES:
        g = {e for e in gold if e[2] == entity_type}
        f = {e for e in found if e[2] == entity_type}
        per_type[entity_type] = 100 * 2 * len(g & f) / (len(g) + len(f)) if g or f else 0.0
        per_type[entity_type + "_support"] = len(g)
    return {
        "entity_f1": 100 * seqeval_f1([y_true], [y_pred], average="macro", mode="strict", scheme=IOB2),
        "char_f1": macro_char_f1(y_true, y_pred, KLUE_LABELS),
        "char_f1_without_o": macro_char_f1(y_true, y_pred, [label for label in KLUE_LABELS if label != "O"]),
        "per_type": per_type,
    }


def damage(references, seed=0):
    """Predictions with boundary shifts, type swaps, deleted and spurious entities and bare I- starts."""
    rng = random.Random(seed)
    predictions = []
    for tags in references:
        tags = list(tags)
        for start, end, entity_type in sorted(strict_entities(tags)):
            kind = rng.choice(["keep", "keep", "shift", "shrink", "grow", "swap", "delete", "bare_i"])
            if kind == "shift" and end < len(tags) and tags[end] == "O":
                tags[start : end + 1] = ["O", "B-" + entity_type] + ["I-" + entity_type] * (end - start - 1)
            elif kind == "shrink" and end - start > 1:
                tags[end - 1] = "O"
            elif kind == "grow" and end < len(tags) and tags[end] == "O":
                tags[end] = "I-" + entity_type  # often onto a space
            elif kind == "swap":
                other = rng.choice([t for t in TYPES if t != entity_type])
                tags[start:end] = ["B-" + other] + ["I-" + other] * (end - start - 1)
            elif kind == "delete":
                tags[start:end] = ["O"] * (end - start)
            elif kind == "bare_i":
                tags[start] = "I-" + entity_type
        if rng.random() < 0.3:  # a spurious entity over two characters of O
            spots = [i for i in range(len(tags) - 1) if tags[i] == tags[i + 1] == "O"]
            if spots:
                i, entity_type = rng.choice(spots), rng.choice(TYPES)
                tags[i : i + 2] = ["B-" + entity_type, "I-" + entity_type]
        predictions.append(tags)
    return predictions


@pytest.fixture
def valid(klue_valid_file):
    sentences = read_klue_tsv(klue_valid_file)
    return [s["ner_tags"] for s in sentences], [s["tokens"] for s in sentences]


def assert_matches_oracle(references, predictions, tokens):
    result = klue_ner_metrics(references, predictions, tokens=tokens)
    expected = oracle(references, predictions, tokens)
    for key in ("entity_f1", "char_f1", "char_f1_without_o"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    for entity_type in TYPES:
        assert result[f"{entity_type}_f1"] == pytest.approx(expected["per_type"][entity_type], abs=1e-9)
        assert result[f"{entity_type}_support"] == expected["per_type"][entity_type + "_support"]
    return result


def test_matches_oracle_on_damaged_valid_file(valid):
    references, tokens = valid
    perfect = klue_ner_metrics(references, references, tokens=tokens)
    assert perfect["entity_f1"] == perfect["char_f1"] == 100.0
    for seed in range(3):
        result = assert_matches_oracle(references, damage(references, seed), tokens)
        assert 10 < result["entity_f1"] < 90 and 10 < result["char_f1"] < 95  # the damage is real
        assert result["entity_recall"] < 100 and result["entity_precision"] < 100


def test_space_led_entity_is_invisible_after_dropping_spaces():
    # `< 24살:QT>` in the official files: the B- sits on a space, so once spaces go the gold entity starts
    # with I- and strict mode drops it. A prediction starting on "2" is then a false positive.
    tokens = [list("최근 24살"), list("A 씨")]
    references = [["O", "O", "B-QT", "I-QT", "I-QT", "I-QT"], ["B-PS", "O", "O"]]
    predictions = [["O", "O", "O", "B-QT", "I-QT", "I-QT"], ["B-PS", "O", "O"]]
    result = assert_matches_oracle(references, predictions, tokens)
    assert result["QT_support"] == 0 and result["QT_precision"] == 0 and result["PS_f1"] == 100
    assert result["entity_f1"] == 50.0
    # Scored without dropping the spaces the gold entity exists (and is missed): a different number.
    assert klue_ner_metrics(references, predictions)["QT_support"] == 1


def test_strict_mode_drops_an_entity_starting_with_i():
    tokens = [list("홍길동 씨")]
    references = [["B-PS", "I-PS", "I-PS", "O", "O"]]
    predictions = [["I-PS", "I-PS", "I-PS", "O", "O"]]
    result = assert_matches_oracle(references, predictions, tokens)
    assert result["entity_f1"] == 0.0 and result["PS_recall"] == 0.0
    # A lenient (conlleval) reading would accept it: the strict mode is what makes this 0.
    assert seqeval_f1(references, predictions, average="macro") == 1.0


def test_sentences_do_not_run_together():
    # Without the O wrapping the second sentence's I-PS would extend the first sentence's entity.
    references = [["B-PS", "I-PS"], ["I-PS", "O"]]
    result = klue_ner_metrics(references, references, tokens=[list("AB"), list("CD")])
    assert result["PS_support"] == 1 and result["entity_f1"] == 100.0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="sentence 1: 2 reference tags but 1 predicted"):
        klue_ner_metrics([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="3 tokens but 2"):
        klue_ner_metrics([["O", "O"]], [["O", "O"]], tokens=[["a", " ", "b"]])
    with pytest.raises(ValueError, match="B-XX"):
        klue_ner_metrics([["O", "O"]], [["B-XX", "O"]])


def test_evaluate_module_agrees(valid):
    references, tokens = valid[0][:100], valid[1][:100]
    predictions = damage(references)
    metric = evaluate.load(str(EVALUATE_MODULE_PATH))
    expected = klue_ner_metrics(references, predictions, tokens=tokens)
    assert metric.compute(predictions=predictions, references=references, tokens=tokens) == expected
    assert metric.compute(predictions=predictions, references=references) == klue_ner_metrics(references, predictions)


def test_any_label_set_is_scored_with_klue_definitions(valid):
    """KLUE's definitions apply unchanged to other types: OG renamed PRD (a label set of its own order) scores as OG
    did under KLUE's labels, and a KLUE type outside the labels is refused rather than ignored."""
    references, tokens = valid
    predictions = damage(references, 0)

    def renamed(tag_lists):
        return [[tag.replace("-OG", "-PRD") for tag in tags] for tags in tag_lists]

    labels = bio_labels(["PRD", *(t for t in TYPES if t != "OG")])
    klue = klue_ner_metrics(references, predictions, tokens=tokens)
    other = klue_ner_metrics(renamed(references), renamed(predictions), tokens=tokens, labels=labels)
    assert metric_types(other) == ["PRD", "PS", "LC", "DT", "TI", "QT"]
    assert {key.replace("PRD_", "OG_"): value for key, value in other.items()} == pytest.approx(klue)
    with pytest.raises(ValueError, match="not among the labels"):
        klue_ner_metrics(references, predictions, tokens=tokens, labels=labels)
