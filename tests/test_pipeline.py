"""The CRF pipeline: character offsets, windows, aggregation, labels by name, and loading from a Hub folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from tiny import TINY_TEXT, character_tokenizer, load_in_fresh_process, tiny_model
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    ElectraTokenizerFast,
    TokenClassificationPipeline,
    pipeline,
)
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import koelectra_crf
from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import encode_texts, token_labels
from koelectra_crf.data import strip_entity_marks
from koelectra_crf.modeling_koelectra_crf import KoElectraCrfOutput

STRATEGIES = ["none", "simple", "first", "average", "max"]
REMOTE_FILES = {"configuration_koelectra_crf.py", "modeling_koelectra_crf.py", "crf.py", "pipeline_koelectra_crf.py",
                "alignment.py"}  # fmt: skip
# Gold sentences with KLUE-style marks. Entities end where a subword of both real tokenizers ends, so that
# subword tagging can represent them exactly (char tagging always can).
MARKED = [
    "<이재용:PS> <삼성전자:OG> 회장이 <2024년 3월 1일:DT> <오전 9시:TI> <서울 강남구:LC> 본사를 찾았다.",
    "  Apple CEO <팀 쿡:PS> 도   李舜臣 😀 함께 사과 <3개:QT> 를 샀다 ",
]


def char_tags(text: str, spans) -> list[str]:
    tags = ["O"] * len(text)
    for start, end, label_type in spans:
        tags[start:end] = [f"B-{label_type}"] + [f"I-{label_type}"] * (end - start - 1)
    return tags


def oracle_forward(model, tokenizer, texts_and_spans):
    """A forward that emits, for each window of the given texts, a strong score for the gold tag of each token.

    Windows are recognised by their token ids, so the pipeline's whole path (tokenization, windows, stitching,
    CRF, character alignment, aggregation) is exercised with a model whose answer is known.
    """
    config = model.config
    emissions_by_ids = {}
    for text, spans in texts_and_spans:
        encoded = encode_texts([text], tokenizer, config.tokenization)[0]
        labels = token_labels(encoded, char_tags(text, spans))
        for start, end in encoded.windows(config.max_length, config.stride):
            ids = tuple(encoded.window(start, end)["input_ids"])
            emissions = torch.zeros(len(ids), config.num_labels)
            for position, label in enumerate(labels[start:end], start=len(encoded.prefix_ids)):
                if label is not None:
                    emissions[position, config.label2id[label]] = 10.0
            assert ids not in emissions_by_ids or torch.equal(emissions_by_ids[ids], emissions)
            emissions_by_ids[ids] = emissions

    def forward(input_ids, attention_mask, tag_mask, **_):
        emissions = torch.zeros(*input_ids.shape, config.num_labels)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            values = emissions_by_ids[tuple(ids[mask.bool()].tolist())]
            emissions[row, : len(values)] = values
        return KoElectraCrfOutput(logits=emissions, predictions=model.decode(emissions, tag_mask))

    return forward


def real_tokenizers(tmp_path):
    wordpiece = ElectraTokenizerFast(vocab=str(shared_path("data/vocab/koelectra-v1-vocab.txt")), do_lower_case=False)
    sentencepiece = AutoTokenizer.from_pretrained(shared_path("encoders/multilingual-e5-small-ko"))
    characters = ElectraTokenizerFast(vocab=str(shared_path("data/vocab/kocharelectra-vocab.txt")), do_lower_case=False)
    return {"wordpiece": wordpiece, "sentencepiece": sentencepiece, "characters": characters}


@pytest.mark.parametrize(
    "tokenizer_name,tokenization",
    [("wordpiece", "subword"), ("sentencepiece", "subword"), ("wordpiece", "char"), ("sentencepiece", "char"),
     ("characters", "char")],
)  # fmt: skip
def test_pipeline_recovers_gold_entities_through_real_tokenizers(tmp_path, tokenizer_name, tokenization):
    tokenizer = real_tokenizers(tmp_path)[tokenizer_name]
    model = tiny_model(len(tokenizer), tokenization=tokenization, max_length=48, stride=12)
    filler = "오늘은 날씨가 맑고 바람이 분다. " * 120  # ~2,300 characters of text without entities
    texts = [strip_entity_marks(marked) for marked in MARKED]
    long_text, long_spans = strip_entity_marks(filler + MARKED[0] + " " + MARKED[1])
    assert len(long_text) >= 2_300 and min(start for start, _, _ in long_spans) > len(long_text) - 200
    texts.append((long_text, long_spans))
    model.forward = oracle_forward(model, tokenizer, texts)
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)

    for batch_size in (1, 4):
        results = ner([text for text, _ in texts], aggregation_strategy="simple", batch_size=batch_size)
        for (text, spans), entities in zip(texts, results, strict=True):
            assert [(e["start"], e["end"], e["entity_group"]) for e in entities] == spans
            assert all(e["word"] == text[e["start"] : e["end"]] for e in entities)
            assert all(0.9 < e["score"] <= 1.0 for e in entities), entities


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = character_tokenizer(folder / "tokenizer")
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    with torch.no_grad():  # a random head that still predicts entities now and then
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_offsets_are_exact_for_every_strategy(tiny_pipeline, strategy):
    texts = [TINY_TEXT, "   김철수  서울 \t 2024년 😀😀 李 ABC   ", TINY_TEXT * 12]
    results = tiny_pipeline(texts, aggregation_strategy=strategy)
    key = "entity" if strategy == "none" else "entity_group"
    expected_keys = {"entity", "score", "index", "word", "start", "end"} if strategy == "none" else {
        "entity_group", "score", "word", "start", "end"}  # fmt: skip
    assert sum(len(entities) for entities in results) > 0
    for text, entities in zip(texts, results, strict=True):
        for entity in entities:
            assert set(entity) == expected_keys
            assert 0 <= entity["start"] < entity["end"] <= len(text)
            assert entity["word"] == text[entity["start"] : entity["end"]] == entity["word"].strip()
            assert 0.0 <= entity["score"] <= 1.0
            assert entity[key] != "O"
        starts = [entity["start"] for entity in entities]
        assert starts == sorted(starts)


def test_strategies_share_spans_and_differ_only_in_scores(tiny_pipeline):
    text = TINY_TEXT * 3
    results = {strategy: tiny_pipeline(text, aggregation_strategy=strategy) for strategy in STRATEGIES[1:]}
    spans = {s: [(e["start"], e["end"], e["entity_group"]) for e in r] for s, r in results.items()}
    assert len({tuple(v) for v in spans.values()}) == 1
    tokens = tiny_pipeline(text, aggregation_strategy="none")
    for first, average, maximum in zip(results["first"], results["average"], results["max"], strict=True):
        scores = [t["score"] for t in tokens if first["start"] <= t["start"] < first["end"]]
        assert first["score"] == pytest.approx(scores[0])
        assert average["score"] == pytest.approx(sum(scores) / len(scores))
        assert maximum["score"] == pytest.approx(max(scores))


def test_empty_and_blank_texts_give_no_entities(tiny_pipeline):
    assert tiny_pipeline("") == []
    assert tiny_pipeline(["", "   "], aggregation_strategy="simple") == [[], []]


def test_labels_travel_by_name(tmp_path):
    """A model whose label ids are in the Hub's alphabetical order gives the same spans as the same model in
    KLUE-baseline order (head rows and CRF scores permuted accordingly)."""
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path)
    klue = tiny_model(tokenizer.vocab_size)
    alphabetical_labels = sorted(KLUE_LABELS)
    alphabetical = tiny_model(tokenizer.vocab_size, labels=alphabetical_labels)
    order = [KLUE_LABELS.index(label) for label in alphabetical_labels]
    state = klue.state_dict()
    state["classifier.weight"] = state["classifier.weight"][order]
    state["classifier.bias"] = state["classifier.bias"][order]
    state["crf.start_transitions"] = state["crf.start_transitions"][order]
    state["crf.end_transitions"] = state["crf.end_transitions"][order]
    state["crf.transitions"] = state["crf.transitions"][order][:, order]
    alphabetical.load_state_dict(state)
    text = TINY_TEXT * 2
    results = [
        KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)(text, aggregation_strategy="simple")
        for model in (klue, alphabetical)
    ]
    spans = [[(e["start"], e["end"], e["entity_group"]) for e in result] for result in results]
    assert spans[0] and spans[0] == spans[1]
    assert [e["score"] for e in results[0]] == pytest.approx([e["score"] for e in results[1]])


def test_built_in_pipeline_is_kept_for_other_models(tmp_path):
    from transformers import BertConfig, BertForTokenClassification

    tokenizer = character_tokenizer(tmp_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20)  # fmt: skip
    model = BertForTokenClassification(config)
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer)
    assert type(ner) is TokenClassificationPipeline
    folder = tmp_path / "bert"
    ner.save_pretrained(folder)  # transformers' own save: no custom pipeline named for a built-in model
    assert "custom_pipelines" not in json.loads((folder / "config.json").read_text())
    assert type(pipeline("token-classification", model=str(folder))) is TokenClassificationPipeline


def test_crf_models_never_get_the_argmax_pipeline(tmp_path, tiny_pipeline):
    """A model of this class, built in this process or loaded from a folder through the Auto classes, gets the CRF
    pipeline from `pipeline("token-classification", model=...)`."""
    model, tokenizer = tiny_pipeline.model, tiny_pipeline.tokenizer
    built_here = pipeline("token-classification", model=model, tokenizer=tokenizer)
    assert type(built_here) is KoElectraCrfTokenClassificationPipeline
    folder = tmp_path / "saved"
    tiny_pipeline.save_pretrained(folder)
    loaded = AutoModelForTokenClassification.from_pretrained(folder).eval()
    from_folder = pipeline("token-classification", model=loaded, tokenizer=AutoTokenizer.from_pretrained(folder))
    assert type(from_folder) is KoElectraCrfTokenClassificationPipeline
    expected = tiny_pipeline(TINY_TEXT, aggregation_strategy="simple")
    assert built_here(TINY_TEXT, aggregation_strategy="simple") == expected
    assert from_folder(TINY_TEXT, aggregation_strategy="simple") == expected


IMPORT_CHECK = """
import json, logging
import transformers
from transformers.pipelines import PIPELINE_REGISTRY
before = (transformers.logging.get_verbosity(), logging.getLogger("transformers.pipelines.base").filters[:])
import koelectra_crf
after = (transformers.logging.get_verbosity(), logging.getLogger("transformers.pipelines.base").filters[:])
print(json.dumps({"unchanged_logging": before == after,
                  "entry": PIPELINE_REGISTRY.supported_tasks["token-classification"]["impl"].__name__}))
"""


def test_importing_the_package_changes_only_the_token_classification_entry():
    completed = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "already registered" not in completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"unchanged_logging": True, "entry": "TokenClassificationDispatch"}


def test_remote_code_files_stand_alone():
    """The model file does not import the pipeline; each Hub file imports only what it uses of the other four."""
    folder = Path(koelectra_crf.__file__).parent
    relative = {name: set(get_relative_imports(folder / name)) for name in REMOTE_FILES}
    assert relative == {
        "configuration_koelectra_crf.py": set(),
        "crf.py": set(),
        "alignment.py": {"crf"},
        "modeling_koelectra_crf.py": {"configuration_koelectra_crf", "crf"},
        "pipeline_koelectra_crf.py": {"alignment"},
    }


def test_a_plain_model_save_names_no_pipeline(tmp_path):
    tiny_model(character_tokenizer(tmp_path / "tokenizer").vocab_size).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in saved
    assert saved["auto_map"]["AutoModelForTokenClassification"].startswith("modeling_koelectra_crf.")


def test_unsupported_arguments_are_refused(tiny_pipeline):
    with pytest.raises(ValueError, match="stride"):
        tiny_pipeline(TINY_TEXT, stride=4)


def test_saved_folder_loads_in_a_fresh_process_with_trust_remote_code(tmp_path, tiny_pipeline):
    folder = tmp_path / "hub"
    tiny_pipeline.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForTokenClassification"].startswith("modeling_koelectra_crf.")
    assert saved["custom_pipelines"]["token-classification"]["impl"].startswith("pipeline_koelectra_crf.")
    assert REMOTE_FILES <= {path.name for path in folder.iterdir()}
    for name in REMOTE_FILES:  # the Hub user needs nothing but torch and transformers
        # get_imports: the packages transformers requires to be installed before it runs a remote-code file
        assert set(get_imports(folder / name)) <= {"torch", "transformers"} | sys.stdlib_module_names, name

    texts = [TINY_TEXT, TINY_TEXT * 5]
    fresh = load_in_fresh_process(folder, texts, tmp_path)
    batch = tiny_pipeline.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_logits = tiny_pipeline.model(**batch).logits
    torch.testing.assert_close(torch.tensor(fresh["logits"]), expected_logits)
    assert fresh["entities"] == json.loads(json.dumps(tiny_pipeline(texts, aggregation_strategy="simple")))
