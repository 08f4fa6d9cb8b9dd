"""Error categories, calibration (ECE, temperature), confusion counts and attention shares on hand-made data."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY_TEXT, character_tokenizer, tiny_model

from koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import spans_to_char_tags
from koelectra_crf.analysis.attention import attention_to_entities, entity_token_mask
from koelectra_crf.analysis.calibration import (
    SEARCH_OCTAVES,
    at_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from koelectra_crf.analysis.errors import classify_entities, error_analysis, errors_markdown
from koelectra_crf.analysis.report import char_confusion_matrix
from koelectra_crf.configuration_koelectra_crf import KLUE_LABELS
from koelectra_crf.data import mark_entities, strip_entity_marks
from koelectra_crf.evaluation import SentencePrediction


def assert_valid_png(path) -> None:
    """The file decodes as a PNG of a real size with more than one colour (a chart, not a blank canvas)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert min(pixels.shape) > 100
    assert len(np.unique(pixels)) > 2


def sentence(text: str, gold: list, predicted: list, guid: str = "s") -> SentencePrediction:
    entities = [{"entity_group": t, "score": 0.9, "word": text[s:e], "start": s, "end": e} for s, e, t in predicted]
    return SentencePrediction(guid, text, list(text), spans_to_char_tags(len(text), gold), entities)


# One hand-made sentence position per case; spans are (start, end, type).
GOLD = [
    (0, 3, "PS"),  # correct
    (5, 8, "LC"),  # boundary: predicted one character longer
    (10, 12, "OG"),  # type: same span, PS predicted
    (14, 18, "DT"),  # boundary+type
    (24, 26, "PS"),  # missed
    (30, 40, "OG"),  # split in two by the prediction
    (42, 45, "PS"),  # merged with the next one ...
    (46, 49, "PS"),
    (50, 52, "LC"),  # ... and merged with an entity of another type
    (53, 55, "OG"),
]
PREDICTED = [
    (0, 3, "PS"),
    (5, 9, "LC"),
    (10, 12, "PS"),
    (15, 18, "TI"),
    (20, 22, "QT"),  # spurious
    (30, 34, "OG"),
    (35, 40, "OG"),
    (42, 49, "PS"),
    (50, 55, "LC"),
]
EXPECTED_PAIRS = [
    ("correct", (0, 3, "PS"), (0, 3, "PS")),
    ("boundary", (5, 8, "LC"), (5, 9, "LC")),
    ("type", (10, 12, "OG"), (10, 12, "PS")),
    ("boundary+type", (14, 18, "DT"), (15, 18, "TI")),
    ("spurious", None, (20, 22, "QT")),
    ("missed", (24, 26, "PS"), None),
    ("boundary", (30, 40, "OG"), (30, 34, "OG")),
    ("boundary", (30, 40, "OG"), (35, 40, "OG")),
    ("boundary", (42, 45, "PS"), (42, 49, "PS")),
    ("boundary", (46, 49, "PS"), (42, 49, "PS")),
    ("boundary", (50, 52, "LC"), (50, 55, "LC")),
    ("boundary+type", (53, 55, "OG"), (50, 55, "LC")),
]


def test_every_error_category_including_split_and_merged_entities():
    assert classify_entities(GOLD, PREDICTED) == EXPECTED_PAIRS
    assert classify_entities([], []) == []


def test_error_analysis_counts_confusion_and_examples():
    text = "가나다라마바사아자차카타파하" * 4
    report = error_analysis([sentence(text, GOLD, PREDICTED, "one"), sentence(text, GOLD, PREDICTED, "two")], 1)
    assert report["pairs"] == 24
    assert report["counts"] == {"correct": 2, "boundary": 12, "type": 2, "boundary+type": 4, "spurious": 2,
                                "missed": 2}  # fmt: skip
    assert report["percentages"]["boundary"] == pytest.approx(50.0)
    assert sum(report["percentages"].values()) == pytest.approx(100.0)
    confusion = report["type_confusion"]
    assert confusion["OG"] == {"PS": 2, "LC": 2, "OG": 4, "DT": 0, "TI": 0, "QT": 0, "O": 0}
    assert confusion["O"]["QT"] == 2 and confusion["PS"]["O"] == 2 and confusion["DT"]["TI"] == 2
    assert sum(sum(row.values()) for row in confusion.values()) == 24
    examples = report["examples"]
    assert all(len(examples[c]) == 1 for c in report["counts"])
    assert examples["type"][0] == {
        "guid": "one",
        "gold": f"{text[10:12]} (OG)",
        "predicted": f"{text[10:12]} (PS)",
        "gold_marks": mark_entities(text, GOLD),
        "predicted_marks": mark_entities(text, PREDICTED),
    }
    markdown = errors_markdown(report)
    assert "| boundary | 12 | 50.00 |" in markdown
    assert "| OG | 2 | 2 | 4 | 0 | 0 | 0 | 0 |" in markdown


def test_mark_entities_is_the_inverse_of_strip_entity_marks():
    marked = "<김철수:PS>는 <2024년 3월 1일:DT> <서울:LC>에서 사과 <3개:QT>를 샀다."
    text, spans = strip_entity_marks(marked)
    assert mark_entities(text, spans) == marked
    assert mark_entities(text, []) == text


def test_char_confusion_matrix_counts_characters_without_spaces():
    text = "김 서울 가"
    # gold: 김=PS, 서울=LC; predicted: 김=PS, 서=LC only, 가=OG (spurious)
    prediction = sentence(text, [(0, 1, "PS"), (2, 4, "LC")], [(0, 1, "PS"), (2, 3, "LC"), (5, 6, "OG")])
    matrix = char_confusion_matrix([prediction])
    index = KLUE_LABELS.index
    assert matrix.sum() == 4  # 4 characters, 2 spaces left out
    assert matrix[index("B-PS"), index("B-PS")] == 1
    assert matrix[index("B-LC"), index("B-LC")] == 1
    assert matrix[index("I-LC"), index("O")] == 1
    assert matrix[index("O"), index("B-OG")] == 1


def test_ece_of_perfectly_calibrated_sets_is_zero():
    # Deterministic: in each bin the share of right answers equals the confidence.
    confidences = [0.1] * 10 + [0.55] * 20 + [0.9] * 10
    correct = [True] * 1 + [False] * 9 + [True] * 11 + [False] * 9 + [True] * 9 + [False] * 1
    assert expected_calibration_error(confidences, correct, num_bins=10) == pytest.approx(0.0, abs=1e-12)
    # Random: right with probability equal to the confidence.
    generator = np.random.default_rng(0)
    confidences = generator.uniform(size=1_000_000)
    correct = generator.uniform(size=confidences.size) < confidences
    assert expected_calibration_error(confidences, correct, num_bins=15) < 0.005


def test_ece_of_a_miscalibrated_set_equals_the_hand_computed_value():
    confidences = [0.95, 0.85, 0.3, 0.2, 0.99]
    correct = [True, False, False, True, False]
    # 2 bins: [0, 0.5) holds 0.3, 0.2 (confidence 0.25, accuracy 0.5); [0.5, 1] holds 0.95, 0.85, 0.99
    # (confidence 0.93, accuracy 1/3). ECE = 2/5 * 0.25 + 3/5 * (0.93 - 1/3) = 0.1 + 0.358
    assert expected_calibration_error(confidences, correct, num_bins=2) == pytest.approx(0.458)
    # 10 bins: 0.2 | 0.3 | 0.85 | 0.95, 0.99: 1/5 (0.8 + 0.3 + 0.85) + 2/5 * |0.5 - 0.97|
    assert expected_calibration_error(confidences, correct, num_bins=10) == pytest.approx(0.39 + 0.188)
    assert math.isnan(expected_calibration_error([], [], num_bins=10))


def test_reliability_bins_are_equal_width_with_one_in_the_last_bin():
    bins = reliability_bins([0.0, 0.24, 0.25, 1.0], [True, False, True, True], num_bins=4)
    assert [(b["lower"], b["upper"], b["count"]) for b in bins] == [(0, 0.25, 2), (0.25, 0.5, 1), (0.5, 0.75, 0),
                                                                     (0.75, 1.0, 1)]  # fmt: skip
    assert bins[0]["confidence"] == pytest.approx(0.12) and bins[0]["accuracy"] == 0.5
    assert bins[2]["confidence"] is None and bins[2]["accuracy"] is None


def test_fit_temperature_recovers_the_temperature_of_the_data():
    """Tags drawn from softmax(emissions / 2): the fitted temperature is 2 (to the grid's step)."""
    model = tiny_model(10, use_crf=False)
    generator = torch.Generator().manual_seed(0)
    emissions = 3 * torch.randn(8_000, model.config.num_labels, generator=generator)
    gold = torch.multinomial((emissions / 2).softmax(-1), 1, generator=generator).squeeze(-1)
    windows = list(zip(emissions.split(40), gold.split(40), strict=True))
    temperature, at_bound = fit_temperature(model, windows)
    assert abs(math.log2(temperature) - 1) <= 1.5 / 12 and not at_bound


def test_fit_temperature_says_when_the_fit_is_at_a_bound_of_the_search():
    """Gold always the highest emission: the sharper the better, down to the lowest temperature searched; always the
    lowest: the flatter the better, up to the highest. With the CRF (whose transitions are not scaled), gold the
    Viterbi path at the lowest temperature: that temperature again."""
    model = tiny_model(10, use_crf=False)
    emissions = 3 * torch.randn(2_000, model.config.num_labels, generator=torch.Generator().manual_seed(0))
    for gold, bound in ((emissions.argmax(-1), -SEARCH_OCTAVES), (emissions.argmin(-1), SEARCH_OCTAVES)):
        windows = list(zip(emissions.split(40), gold.split(40), strict=True))
        assert fit_temperature(model, windows) == (2.0**bound, True)
    crf_model = tiny_model(10)
    sharpest = 2.0**SEARCH_OCTAVES
    mask = torch.ones(1, 40, dtype=torch.bool)
    windows = [(window, crf_model.tagger.decode(window[None] * sharpest, mask)[0]) for window in emissions.split(40)]
    assert fit_temperature(crf_model, windows) == (2.0**-SEARCH_OCTAVES, True)


def test_a_temperature_divides_the_emissions_everywhere_and_leaves_the_model_as_it_was(tmp_path):
    """Calibration sets the tagger's temperature (no copy of the model): tags and probabilities are those of the
    emissions divided by T, within the block only; the weights never change."""
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path)
    model = tiny_model(tokenizer.vocab_size, tag_unit="character")
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    emissions = torch.randn(2, 7, model.config.num_labels)
    mask = torch.ones(2, 7, dtype=torch.bool)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    before = ner(TINY_TEXT, aggregation_strategy="none")
    with at_temperature(ner, 0.25):
        tagger = model.tagger
        torch.testing.assert_close(
            tagger.tag_probabilities(emissions, mask), model.crf.marginals(emissions / 0.25, mask)
        )
        assert torch.equal(tagger.decode(emissions, mask), model.crf.decode(emissions / 0.25, mask))
        sharper = ner(TINY_TEXT, aggregation_strategy="none")
    assert model.tagger.temperature == 1.0 and ner(TINY_TEXT, aggregation_strategy="none") == before
    assert [e["score"] for e in sharper] != [e["score"] for e in before]
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())


def test_attention_share_to_entity_tokens():
    spans = [None, (0, 1), (1, 3), (4, 5), None]  # [CLS] tokens [SEP]
    is_entity = entity_token_mask(spans, [(1, 2, "PS")])
    assert is_entity.tolist() == [False, False, True, False, False]
    attentions = torch.zeros(2, 1, 5, 5)
    attentions[0, 0, :, 2] = 1.0  # layer 0: everything on the entity token
    attentions[1, 0] = 0.2  # layer 1: uniform
    torch.testing.assert_close(attention_to_entities(attentions, is_entity), torch.tensor([[1.0], [0.2]]))
