"""Property-based tests (hypothesis): the pipeline and the NFC offset map on random Unicode text."""

import math
import unicodedata

import pytest
import regex
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tiny import TINY_TEXT, character_tokenizer, tiny_model
from transformers import ElectraTokenizerFast

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import is_grapheme_boundary, nfc_with_offsets, snap_to_graphemes

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


# Code points that form extended grapheme clusters with their neighbours: regional indicators (flags), emoji, skin
# tones, ZERO WIDTH JOINER and NON-JOINER, the emoji variation selector, combining and enclosing marks, tag characters
# (subdivision flags), Hangul jamo, CR LF; and characters that end clusters (letters, syllables, a space, a control).
GRAPHEME_PIECES = [
    "🇰", "🇷", "🇺", "🇸", "🇯", "👍", "👨", "👩", "👧", "❤", "🔥", "🏳", "🌈", "🏴", "‼", "\U0001f3fb", "\U0001f3fd",
    "\U0001f3ff", "\u200d", "\u200c", "\ufe0f", "\u0301", "\u0323", "\u20dd", "\U000e0067", "\U000e007f", "\u1100",
    "\u1161", "\u11a8", "가", "김", "a", "e", "q", " ", "\r", "\n", "\u200b",
]  # fmt: skip
grapheme_texts = st.lists(st.sampled_from(GRAPHEME_PIECES), max_size=24).map("".join)


def oracle_boundaries(text: str) -> set[int]:
    """Where the `regex` package's `\\X` (extended grapheme clusters, its own Unicode tables) starts and ends
    clusters; and, the one departure (`alignment._HANGUL_JOINS`), between a precomposed Hangul syllable and a
    conjoining vowel or final jamo after it."""
    jamo_after_syllable = {
        i for i in range(1, len(text)) if "가" <= text[i - 1] <= "힣" and "\u1160" <= text[i] <= "\u11ff"
    }
    return {0, len(text)} | {match.end() for match in regex.finditer(r"\X", text)} | jamo_after_syllable


@settings(max_examples=500, deadline=None)
@given(text=grapheme_texts)
def test_grapheme_boundaries_are_those_of_the_regex_package(text):
    assert {i for i in range(len(text) + 1) if is_grapheme_boundary(text, i)} == oracle_boundaries(text)


@pytest.fixture(scope="module", params=["token", "character"])
def cluster_cutting_pipeline(tmp_path_factory, request) -> KoElectraCrfTokenClassificationPipeline:
    """A random model that tags nearly every unit as part of an entity, with a vocabulary of single code points and
    pieces that cross cluster boundaries (`##🇷🇺` splits 🇰🇷🇺🇸 between its flags' halves): left alone, its entities
    would start and end inside clusters."""
    folder = tmp_path_factory.mktemp("graphemes")
    pieces = sorted(set(GRAPHEME_PIECES) - {" ", "\r", "\n"})
    crossing = ["🇷🇺", "👍\U0001f3fd", "\U0001f3fd👨", "e\u0301", "\u0301a", "\u1100\u1161"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces, *crossing]
    vocab += [f"##{piece}" for piece in [*pieces, *crossing]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = ElectraTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, max_length=16, stride=4, tag_unit=request.param)
    with torch.no_grad():  # O unlikely: entities everywhere, of random types and lengths
        model.classifier.bias.copy_(torch.tensor([0.0] * (len(KLUE_LABELS) - 1) + [-4.0]))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


@settings(max_examples=100, deadline=None)
@given(text=grapheme_texts.filter(str.strip))
@example(text="🇰🇷 👍🏽 👨‍👩‍👧 ❤\ufe0f\u200d🔥 q\u0301\u0323")
def test_entities_never_cut_a_grapheme_cluster(cluster_cutting_pipeline, text):
    """With every aggregation strategy an entity (a unit's entry for `none`) starts and ends on cluster boundaries of
    the text as given (`\\X`), entities stay disjoint and in order, and `word == text[start:end]`."""
    boundaries = oracle_boundaries(text)
    for strategy in ("none", "simple", "first", "average", "max"):
        end = 0
        for entity in cluster_cutting_pipeline(text, aggregation_strategy=strategy):
            assert end <= entity["start"] < entity["end"] <= len(text)
            assert {entity["start"], entity["end"]} <= boundaries, (strategy, entity)
            assert entity["word"] == text[entity["start"] : entity["end"]]
            end = entity["end"]


def test_an_emoticon_in_jamo_stays_out_of_the_name_before_it():
    """KLUE's 갓무스ᅮᅮ: the crying emoticon in conjoining jamo is not part of the name's last letter."""
    assert snap_to_graphemes("갓무스ᅮᅮ 좋아", [(0, 3, "PS")]) == [(0, 3, "PS")]
    assert snap_to_graphemes("갓무스ᅮᅮ 좋아", [(0, 4, "PS")]) == [(0, 5, "PS")]  # the two jamo stay together
