"""Morpheme features (`KoElectraCrfConfig(morpheme_features=True)`): Kiwi's analysis as one code per character, the
same in every window and in training and inference, embedded beside the character features; a model without the
setting unchanged; saving, loading, re-spacing, ONNX and a missing kiwipiepy."""

import json
import os
import shutil
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import shared_path
from kiwipiepy import Kiwi
from processes import run_command
from safetensors.torch import load_file
from tiny import TINY_TEXT, character_tokenizer, load_in_fresh_process, run_as_hub_user, tiny_model

from koelectra_crf import (
    KLUE_LABELS,
    KoElectraCrfConfig,
    KoElectraCrfForTokenClassification,
    KoElectraCrfTokenClassificationPipeline,
    alignment,
)
from koelectra_crf.alignment import MORPHEME_CODES, MORPHEME_TAGS, kiwi_space, model_inputs, morpheme_codes
from koelectra_crf.data import sentence_windows
from koelectra_crf.formats import load_split
from koelectra_crf.inputs import read_texts
from koelectra_crf.onnx_model import EXPORT_INFO_FILE, export_onnx, load_onnx_pipeline

# Spaces, Latin, digits, hanja, an emoji, a flag (two code points), contracted syllables (샀 = 사 + 었), overlapping
# morphemes (나가 + 어), an irregular verb (걷/VV-I), a copula without a character (영화다), a URL, a full-width number.
TEXTS = [
    "김철수는 서울에서 사과를 샀다.",
    "나가 봤어요 걸어 갔다 영화다",
    "ABC123李😀 한국 🇰🇷 국기",
    "https://example.com 에서 ２０２４년 ㈜삼성전자를  보았다\t오늘",
]


def decoded(code: int) -> tuple[str, bool, bool] | None:
    """(tag, a morpheme starts here, one ends here) of a code (None for 0), by the numbering `MORPHEME_TAGS` states."""
    if code == 0:
        return None
    tag, flags = divmod(code - 1, 4)
    return (MORPHEME_TAGS[tag] if tag < len(MORPHEME_TAGS) else "other"), flags >= 2, flags % 2 == 1


def test_codes_of_hand_analysed_sentences():
    nnp, jkb = ("NNP", True, False), ("JKB", True, False)
    expected = {
        "김철수는 서울에서 사과를 샀다.": [
            nnp, ("NNP", False, False), ("NNP", False, True), ("JX", True, True), None,
            nnp, ("NNP", False, True), jkb, ("JKB", False, True), None,
            ("NNG", True, False), ("NNG", False, True), ("JKO", True, True), None,
            ("VV", True, True), ("EF", True, True), ("SF", True, True),
        ],
        # 가 is covered by 나가/VV and starts 어/EC: VV's tag, both flags; 영화다's 이/VCP has no character.
        "나가 봤어요 영화다": [
            ("VV", True, False), ("VV", True, True), None, ("VX", True, True), ("EF", True, False),
            ("EF", False, True), None, ("NNG", True, False), ("NNG", False, True), ("EF", True, True),
        ],
        "걸어 😀李": [("VV", True, True), ("EF", True, True), None, ("W_EMOJI", True, True), ("SH", True, True)],
    }  # fmt: skip
    codes = morpheme_codes(list(expected))
    assert [[decoded(code) for code in text_codes] for text_codes in codes] == list(expected.values())
    assert max(max(text_codes) for text_codes in codes) < MORPHEME_CODES


def test_codes_follow_kiwis_tokens_character_by_character():
    """Computed here from Kiwi's tokens, character by character: the first morpheme covering a character gives the
    tag (its -R/-I suffix dropped), any morpheme starting or ending there the flags; offsets are code points."""
    kiwi = Kiwi(num_workers=1)
    for text, codes in zip(TEXTS, morpheme_codes(TEXTS), strict=True):
        tokens = kiwi.tokenize(text)
        assert len(codes) == len(text)
        for i, code in enumerate(codes):
            covering = [t for t in tokens if t.start <= i < t.start + t.len]
            if not covering:
                assert code == 0 and text[i].isspace(), (text, i)
                continue
            tag = covering[0].tag.partition("-")[0]
            starts = any(t.start == i for t in covering)
            ends = any(t.start + t.len - 1 == i for t in covering)
            assert decoded(code) == (tag, starts, ends), (text, i, text[i])
    emoji = TEXTS[2].index("😀")
    assert [t.start for t in kiwi.tokenize(TEXTS[2]) if t.form == "😀"] == [emoji]  # precondition: code points


def test_every_tag_kiwi_gives_klue_sentences_has_its_own_index():
    sentences = read_texts(shared_path("data/klue-ner-raw/klue-ner-train-sentences.tsv"), 500)
    codes = [code for text_codes in morpheme_codes(sentences) for code in text_codes if code]
    assert all(decoded(code)[0] != "other" for code in codes)
    assert len({decoded(code)[0] for code in codes}) > 30


def test_a_tag_kiwi_did_not_have_shares_the_other_index():
    tokens = [SimpleNamespace(tag="NEW", start=0, len=1), SimpleNamespace(tag="VV-R", start=1, len=2)]
    assert [decoded(code) for code in alignment._morpheme_codes("가나다", tokens)] == [
        ("other", True, True), ("VV", True, False), ("VV", False, True)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return character_tokenizer(tmp_path_factory.mktemp("tokenizer"), texts=[TINY_TEXT, *TEXTS])


def morpheme_model(tokenizer, **config_kwargs) -> KoElectraCrfForTokenClassification:
    """A tiny character-head model that reads morpheme features, its morpheme embedding large enough that they
    change its tags."""
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8, morpheme_features=True, **config_kwargs)
    with torch.no_grad():
        model.characters.morphemes.weight.normal_(std=2.0)
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return model


def test_windows_carry_the_codes_of_the_whole_text_and_training_rows_the_same(tokenizer):
    model = morpheme_model(tokenizer)
    text = " ".join(TEXTS) * 2
    whole = morpheme_codes([text])[0]
    rows = model_inputs([text], tokenizer, model.config)
    assert len(rows) > 3  # precondition: overlapping windows
    for row in rows:
        assert len(row["char_morphemes"]) == len(row["char_codes"])
        assert row["char_morphemes"] == [whole[start] for start, _ in row["offset_mapping"]]
    characters, tags = list(text), ["O"] * len(text)
    training = sentence_windows([characters], [tags], tokenizer, model.config)[0]
    assert [row["char_morphemes"] for row in training] == [row["char_morphemes"] for row in rows]
    # Decomposed Hangul is analysed as the model reads it, composed (NFC).
    decomposed = model_inputs([unicodedata.normalize("NFD", text)], tokenizer, model.config)
    assert [row["char_morphemes"] for row in decomposed] == [row["char_morphemes"] for row in rows]


def test_the_pipeline_analyses_each_text_once_whatever_its_windows(tokenizer, monkeypatch):
    ner = KoElectraCrfTokenClassificationPipeline(model=morpheme_model(tokenizer), tokenizer=tokenizer)
    analysed = []

    def counted(texts: list[str]) -> list[list[int]]:
        analysed.extend(texts)
        return morpheme_codes(texts)

    monkeypatch.setattr(alignment, "morpheme_codes", counted)
    texts = [TINY_TEXT * 5, *TEXTS]  # the first one: several windows
    for batch_size in (1, 4):
        analysed.clear()
        ner(texts, batch_size=batch_size)
        assert sorted(analysed) == sorted(texts)


def oracle_logits(model, inputs) -> list[torch.Tensor]:
    """Each row's emission scores over its characters, written out: features [h_k; P[p]; E[c]] (then M[m] with
    morpheme features), the BiLSTM over the row's characters alone, the linear layer."""
    states = model.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           token_type_ids=inputs["token_type_ids"]).last_hidden_state  # fmt: skip
    characters, config = model.characters, model.config
    rows = []
    for b in range(len(states)):
        features = []
        for j in range(int(inputs["tag_mask"][b].sum())):
            parts = [
                states[b, inputs["char_token_index"][b, j]],
                characters.positions.weight[min(int(inputs["char_position_ids"][b, j]), config.max_char_position - 1)],
                characters.characters.weight[int(inputs["char_codes"][b, j]) % config.char_buckets],
            ]
            if config.morpheme_features:
                parts.append(characters.morphemes.weight[inputs["char_morphemes"][b, j]])
            features.append(torch.cat(parts))
        rows.append(model.classifier(model.bilstm(torch.stack(features).unsqueeze(0))[0][0]))
    return rows


def test_the_morpheme_embedding_is_one_more_block_of_the_character_features(tokenizer):
    model = morpheme_model(tokenizer)
    inputs = model.prepare_inputs([TINY_TEXT, *TEXTS], tokenizer)
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = oracle_logits(model, inputs)
        for b, row in enumerate(expected):
            torch.testing.assert_close(logits[b, : len(row)], row)
        inputs["char_morphemes"] = torch.zeros_like(inputs["char_morphemes"])
        assert not torch.allclose(model(**inputs).logits, logits)  # the codes matter
    with pytest.raises(ValueError, match="morpheme_features=True needs char_morphemes"):
        model(**{name: value for name, value in inputs.items() if name != "char_morphemes"})


def test_without_the_setting_the_model_and_its_inputs_are_unchanged(tokenizer):
    torch.manual_seed(0)
    plain = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    assert plain.config.morpheme_features is False
    morphemes = morpheme_model(tokenizer)
    assert set(morphemes.state_dict()) - set(plain.state_dict()) == {"characters.morphemes.weight"}
    assert set(plain.characters.state_dict()) == {"positions.weight", "characters.weight"}
    inputs = plain.prepare_inputs([TINY_TEXT, *TEXTS], tokenizer)
    assert "char_morphemes" not in inputs
    with torch.no_grad():
        logits = plain(**inputs).logits
        for b, row in enumerate(oracle_logits(plain, inputs)):
            torch.testing.assert_close(logits[b, : len(row)], row)
    # A config.json written before the setting existed is a model without it.
    old = {key: value for key, value in plain.config.to_dict().items() if key != "morpheme_features"}
    assert KoElectraCrfConfig.from_dict(old).morpheme_features is False


def test_the_token_head_refuses_morpheme_features():
    with pytest.raises(ValueError, match="morpheme_features=True needs tag_unit='character'"):
        KoElectraCrfConfig(tag_unit="token", morpheme_features=True)


def test_a_saved_model_keeps_its_morpheme_features_in_the_package_and_as_remote_code(tokenizer, tmp_path):
    ner = KoElectraCrfTokenClassificationPipeline(model=morpheme_model(tokenizer), tokenizer=tokenizer)
    texts = [TINY_TEXT, TINY_TEXT * 3, *TEXTS]
    expected = ner(texts, aggregation_strategy="simple")
    assert any(expected)
    ner.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model/config.json").read_text())["morpheme_features"] is True
    assert "characters.morphemes.weight" in load_file(tmp_path / "model/model.safetensors")
    loaded = KoElectraCrfForTokenClassification.from_pretrained(tmp_path / "model").eval()
    assert torch.equal(loaded.characters.morphemes.weight, ner.model.characters.morphemes.weight)
    reloaded = KoElectraCrfTokenClassificationPipeline(model=loaded, tokenizer=tokenizer)
    assert reloaded(texts, aggregation_strategy="simple") == expected
    fresh = load_in_fresh_process(tmp_path / "model", texts, tmp_path)
    assert fresh["entities"] == json.loads(json.dumps(expected))
    with torch.no_grad():
        logits = ner.model(**ner.model.prepare_inputs(texts, tokenizer)).logits
    torch.testing.assert_close(torch.tensor(fresh["logits"]), logits)


def shifted_back(entities: list[dict], spaced: str, text: str) -> list[dict]:
    """Entities of `spaced` (`text` with spaces only inserted) at `text`'s offsets."""
    position, k = [], 0
    for character in spaced:
        position.append(k)
        k += text[k : k + 1] == character
    return [
        {**e, "start": position[e["start"]], "end": position[e["end"] - 1] + 1,
         "word": text[position[e["start"]] : position[e["end"] - 1] + 1]}
        for e in entities
    ]  # fmt: skip


def test_respace_analyses_the_respaced_text_with_offsets_into_the_callers(tokenizer):
    ner = KoElectraCrfTokenClassificationPipeline(model=morpheme_model(tokenizer), tokenizer=tokenizer)
    for text in ("김철수는서울에서사과를샀다.", "나가봤어요 영화다"):
        spaced = kiwi_space(text)
        assert spaced.replace(" ", "") == text.replace(" ", "") and spaced != text  # precondition: spaces only
        expected = shifted_back(ner(spaced, aggregation_strategy="simple"), spaced, text)
        assert expected  # precondition: something to compare
        respaced = ner(text, respace=True, aggregation_strategy="simple")
        assert [{**e, "score": 0} for e in respaced] == [{**e, "score": 0} for e in expected]
        assert [e["score"] for e in respaced] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_the_onnx_export_takes_the_morpheme_codes(tokenizer, tmp_path):
    reference = KoElectraCrfTokenClassificationPipeline(model=morpheme_model(tokenizer), tokenizer=tokenizer)
    export_onnx(reference.model, tokenizer, tmp_path / "onnx")
    info = json.loads((tmp_path / "onnx" / EXPORT_INFO_FILE).read_text())
    assert info["inputs"][-1] == "char_morphemes"
    ner = load_onnx_pipeline(tmp_path / "onnx")
    texts = [TINY_TEXT, TINY_TEXT * 5, *TEXTS]
    for strategy in ("none", "simple"):
        expected = reference(texts, aggregation_strategy=strategy, batch_size=2)
        results = ner(texts, aggregation_strategy=strategy, batch_size=2)
        assert [[{**e, "score": 0} for e in entities] for entities in results] == [
            [{**e, "score": 0} for e in entities] for entities in expected
        ]
        scores = [e["score"] for entities in results for e in entities]
        assert scores == pytest.approx([e["score"] for entities in expected for e in entities], abs=1e-4)


def test_without_kiwipiepy_a_morpheme_model_says_how_to_install_it(tokenizer, monkeypatch):
    model = morpheme_model(tokenizer)
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # as if not installed: importing it raises ImportError
    alignment._kiwi.cache_clear()
    try:
        for tag in (lambda: ner(TINY_TEXT), lambda: model.prepare_inputs([TINY_TEXT], tokenizer)):
            with pytest.raises(ImportError, match=r"morpheme_features=True .*pip install kiwipiepy"):
                tag()
    finally:
        alignment._kiwi.cache_clear()


# As a Hub user without kiwipiepy (each attempt to import it counted and failed): a model without the setting never
# tries to import it; a morpheme model loads, and tagging says what to install.
HUB_USER_WITHOUT_KIWI = """
import json, sys
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline


class NoKiwi:
    attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kiwipiepy":
            NoKiwi.attempts += 1
            raise ImportError("kiwipiepy is not installed")


sys.meta_path.insert(0, NoKiwi())
plain, job = sys.argv[1], json.loads(sys.argv[2])
plain_entities = pipeline("token-classification", model=plain, trust_remote_code=True)(job["texts"])
plain_attempts = NoKiwi.attempts
folder = job["morpheme_folder"]
ner = pipeline("token-classification", model=folder, trust_remote_code=True)
model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
messages = []
for tag in (lambda: ner(job["texts"]), lambda: model.prepare_inputs(job["texts"], tokenizer)):
    try:
        tag()
        messages.append(None)
    except ImportError as error:
        messages.append(str(error))
print(json.dumps({"plain_attempts": plain_attempts, "plain_tagged": len(plain_entities),
                  "morpheme_features": model.config.morpheme_features, "messages": messages}))
"""


def test_as_remote_code_without_kiwipiepy_only_a_morpheme_model_needs_it(tokenizer, tmp_path):
    torch.manual_seed(0)
    plain = tiny_model(tokenizer.vocab_size)
    plain.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    model = morpheme_model(tokenizer)
    model.save_pretrained(tmp_path / "morphemes")
    tokenizer.save_pretrained(tmp_path / "morphemes")
    job = {"texts": TEXTS, "morpheme_folder": str(tmp_path / "morphemes")}
    result = run_as_hub_user(HUB_USER_WITHOUT_KIWI, tmp_path / "plain", job, tmp_path)
    assert result["plain_attempts"] == 0 and result["plain_tagged"] == len(TEXTS)
    assert result["morpheme_features"] is True
    for message in result["messages"]:
        assert "morpheme_features=True" in message and "pip install kiwipiepy" in message


REPLAY = Path(__file__).resolve().parents[1] / "training/gpu/kiwi_replay.py"
REPLAYED_CODES = """
import json, sys
from koelectra_crf.alignment import morpheme_codes
print(json.dumps(morpheme_codes(json.loads(sys.argv[1]))))
"""


def test_the_gpu_kits_kiwi_replay_gives_kiwis_codes_and_refuses_a_text_it_lacks(tmp_path):
    """The GPU machine cannot receive Kiwi's model, so the study kit records Kiwi's analyses of the data here
    (`training/gpu/kiwi_replay.py`) and installs that file there as `kiwipiepy`: the morpheme codes must be Kiwi's."""
    data = tmp_path / "data.jsonl"  # a decomposed (NFD) text too: training reads it composed
    texts = [*TEXTS, unicodedata.normalize("NFD", "한국어 자모로 쓴 문장")]
    data.write_text("".join(json.dumps({"text": text, "entities": []}) + "\n" for text in texts), encoding="utf-8")
    trained_on = list(load_split(data, "--train_file")["sentence"])
    recorded = tmp_path / "analyses.json.gz"
    run_command([sys.executable, REPLAY, recorded, data], timeout=120)
    site = tmp_path / "site" / "kiwipiepy"
    site.mkdir(parents=True)
    shutil.copy(REPLAY, site / "__init__.py")
    env = {**os.environ, "PYTHONPATH": str(site.parent), "KIWI_REPLAY": str(recorded)}
    command = [sys.executable, "-c", REPLAYED_CODES]
    replayed = run_command([*command, json.dumps(trained_on)], timeout=120, env=env)
    assert json.loads(replayed.stdout) == morpheme_codes(trained_on)
    unknown = run_command([*command, json.dumps(["처음 보는 문장"])], timeout=120, env=env, status=1)
    assert "no recorded analysis of 1 of the texts, the first '처음 보는 문장'" in unknown.stderr
