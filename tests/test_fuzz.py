"""Property-based tests (hypothesis): the pipeline and the NFC offset map on random Unicode text."""

import math
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_TEXT, character_tokenizer, tiny_model

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import nfc_with_offsets

SENTENCE = "김민준 씨는 2024년 5월 12일 부산에서 한빛전자 관계자를 만났다."
# Pieces the random characters rarely hit by chance: decomposed Hangul, combining marks, emoji sequences, compatibility
# characters, control and format characters, odd spaces, lone surrogates (a JSON "\ud800" escape gives one).
PIECES = [
    unicodedata.normalize("NFD", SENTENCE), unicodedata.normalize("NFD", "부산"), "e\u0301", "a\u0323\u0302",
    "\u0301", "😀", "👩‍👩‍👧", "🇰🇷", "２０２４", "㈜", "\x00", "\x1f", "\x7f", "\u200b", "\ufeff", "\t", "\n", "\r\n",
    "   ", "\u3000", "\u00a0", "\ud800", "\udfff", SENTENCE, TINY_TEXT,
]  # fmt: skip
short_texts = st.lists(st.one_of(st.characters(), st.sampled_from(PIECES)), max_size=30).map("".join)
texts = st.one_of(short_texts, short_texts.map(lambda text: text * 12))  # long ones go through several windows

FUZZ = settings(max_examples=50, deadline=None)


@pytest.fixture(scope="module", params=["token", "character"])
def fuzz_pipeline(tmp_path_factory, request) -> KoElectraCrfTokenClassificationPipeline:
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path_factory.mktemp("fuzz"), texts=[SENTENCE, TINY_TEXT])
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8, tag_unit=request.param)
    with torch.no_grad():  # a random head that still predicts entities now and then
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


@FUZZ
@given(text=texts)
def test_nfc_with_offsets_maps_every_character_back(text):
    normalized, spans = nfc_with_offsets(text)
    assert len(spans) == len(normalized)
    ends = [end for _, end in spans]
    assert [start for start, _ in spans] == [0, *ends][: len(spans)]  # consecutive, from the start
    assert all(start < end for start, end in spans) and ends[-1:] == ([len(text)] if text else [])  # to the end
    characters = "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in text)  # lone surrogates
    assert unicodedata.normalize("NFC", normalized) == unicodedata.normalize("NFC", characters)


@FUZZ
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_pipeline_on_random_text(fuzz_pipeline, batch):
    """No crash; offsets in range with `word == text[start:end]`; spans sorted and disjoint; scores in [0, 1]; a
    batch gives what the texts give one at a time."""
    for strategy in ("none", "simple"):
        batched = fuzz_pipeline(batch, aggregation_strategy=strategy, batch_size=3)
        for text, entities in zip(batch, batched, strict=True):
            end = 0
            for entity in entities:
                assert end <= entity["start"] < entity["end"] <= len(text)
                assert entity["word"] == text[entity["start"] : entity["end"]]
                assert math.isfinite(entity["score"]) and 0.0 <= entity["score"] <= 1.0
                end = entity["end"]
            alone = fuzz_pipeline(text, aggregation_strategy=strategy)
            assert [{**e, "score": None} for e in alone] == [{**e, "score": None} for e in entities]
            assert [e["score"] for e in alone] == pytest.approx([e["score"] for e in entities], abs=1e-4)
