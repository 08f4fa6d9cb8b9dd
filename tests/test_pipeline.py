"""The CRF pipeline: character offsets, windows, aggregation, labels by name, and loading from a Hub folder."""

import copy
import json
import math
import re
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from processes import run_command
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
from koelectra_crf import pipeline_koelectra_crf as pipeline_module
from koelectra_crf.alignment import encode_texts, nfc_with_offsets, unit_labels
from koelectra_crf.data import strip_entity_marks
from koelectra_crf.modeling_koelectra_crf import KoElectraCrfOutput
from koelectra_crf.pipeline_koelectra_crf import lexicon_matches

STRATEGIES = ["none", "simple", "first", "average", "max"]
REMOTE_FILES = {"configuration_koelectra_crf.py", "modeling_koelectra_crf.py", "crf.py", "pipeline_koelectra_crf.py",
                "alignment.py", "handler.py", "tagger.py"}  # fmt: skip
# Gold sentences with KLUE-style marks. Entities end where a subword of both real tokenizers ends, so that
# subword tagging can represent them exactly (char tagging always can).
MARKED = [
    "<이재용:PS> <삼성전자:OG> 회장이 <2024년 3월 1일:DT> <오전 9시:TI> <서울 강남구:LC> 본사를 찾았다.",
    "  Apple CEO <팀 쿡:PS> 도   李舜臣 😀 함께 사과 <3개:QT> 를 샀다 ",
]
# Entities that end inside a subword token (a name glued to its particle): only character units can represent them.
MARKED_INSIDE_TOKENS = [
    "<최정원:PS>의 동생은 <스위스:LC>는 물론 <부산:LC>에서도 <10점:QT>을 받았다고 <어제:DT> 말했다."
]


def char_tags(text: str, spans) -> list[str]:
    tags = ["O"] * len(text)
    for start, end, label_type in spans:
        tags[start:end] = [f"B-{label_type}"] + [f"I-{label_type}"] * (end - start - 1)
    return tags


def oracle_forward(model, tokenizer, texts_and_spans):
    """A forward that emits, for each window of the given texts, a strong score for the gold tag of each unit (token
    or character).

    Windows are recognised by their token ids, so the pipeline's whole path (tokenization, windows, stitching,
    CRF, character alignment, aggregation) is exercised with a model whose answer is known.
    """
    config = model.config
    emissions_by_ids = {}
    for text, spans in texts_and_spans:
        encoded = encode_texts([text], tokenizer, config.encoder_tokenization)[0]
        tags = unit_labels(encoded, char_tags(text, spans), config.tag_unit)
        label_ids = [config.label2id[tag] for tag in tags]
        for start, end in encoded.windows(config.max_length, config.stride):
            window = encoded.window(start, end, config.tag_unit, label_ids)
            labels = torch.tensor(window["labels"])
            emissions = torch.zeros(len(labels), config.num_labels)
            tagged = labels != -100
            emissions[tagged, labels[tagged]] = 10.0
            ids = tuple(window["input_ids"])
            assert ids not in emissions_by_ids or torch.equal(emissions_by_ids[ids], emissions)
            emissions_by_ids[ids] = emissions

    def forward(input_ids, attention_mask, tag_mask, **_):
        emissions = torch.zeros(*tag_mask.shape, config.num_labels)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            values = emissions_by_ids[tuple(ids[mask.bool()].tolist())]
            emissions[row, : len(values)] = values
        return KoElectraCrfOutput(logits=emissions, predictions=model.tagger.decode(emissions, tag_mask))

    return forward


def real_tokenizers(tmp_path):
    wordpiece = ElectraTokenizerFast(vocab=str(shared_path("data/vocab/koelectra-v1-vocab.txt")), do_lower_case=False)
    sentencepiece = AutoTokenizer.from_pretrained(shared_path("encoders/multilingual-e5-small-ko"))
    characters = ElectraTokenizerFast(vocab=str(shared_path("data/vocab/kocharelectra-vocab.txt")), do_lower_case=False)
    return {"wordpiece": wordpiece, "sentencepiece": sentencepiece, "characters": characters}


@pytest.mark.parametrize(
    "tokenizer_name,encoder_tokenization,tag_unit",
    [("wordpiece", "subword", "token"), ("sentencepiece", "subword", "token"), ("wordpiece", "char", "token"),
     ("sentencepiece", "char", "token"), ("characters", "char", "token"), ("wordpiece", "subword", "character"),
     ("sentencepiece", "subword", "character")],
)  # fmt: skip
def test_pipeline_recovers_gold_entities_through_real_tokenizers(
    tmp_path, tokenizer_name, encoder_tokenization, tag_unit
):
    tokenizer = real_tokenizers(tmp_path)[tokenizer_name]
    model = tiny_model(
        len(tokenizer), encoder_tokenization=encoder_tokenization, tag_unit=tag_unit, max_length=48, stride=12
    )
    filler = "오늘은 날씨가 맑고 바람이 분다. " * 120  # ~2,300 characters of text without entities
    marked = MARKED + (MARKED_INSIDE_TOKENS if tag_unit == "character" else [])
    texts = [strip_entity_marks(text) for text in marked]
    long_text, long_spans = strip_entity_marks(filler + " ".join(marked))
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
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8, tag_unit="token")
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


def stitched_emissions(ner, text: str, **call_kwargs) -> torch.Tensor:
    """The emissions (1, U, K) of the text's units as the pipeline stitches them from its windows."""
    captured = {}
    unit_emissions = ner._unit_emissions

    def capture(*args):
        captured["emissions"] = unit_emissions(*args)
        return captured["emissions"]

    ner._unit_emissions = capture
    try:
        ner(text, aggregation_strategy="simple", **call_kwargs)
    finally:
        del ner._unit_emissions
    return captured["emissions"]


def test_every_strategy_scores_an_entity_by_its_exact_crf_probability(tiny_pipeline):
    """An entity's score is P(B-X at its first unit, I-X through its last, no I-X after it | text). Oracle: the
    log-partition of the emissions restricted to the sequences that hold the entity, minus the full one (a route
    through the CRF independent of its forward-backward entity probabilities)."""
    text = TINY_TEXT * 3  # several windows: the score comes from the stitched emissions of the whole text
    results = {strategy: tiny_pipeline(text, aggregation_strategy=strategy) for strategy in STRATEGIES[1:]}
    assert results["simple"] and all(result == results["simple"] for result in results.values())

    emissions = stitched_emissions(tiny_pipeline, text).double()
    crf, label2id = tiny_pipeline.model.crf.double(), tiny_pipeline.model.config.label2id
    crf.constrain_training = True  # the log-partition over valid BIO sequences, as decoding and scores use
    (encoded,) = encode_texts([text], tiny_pipeline.tokenizer, "subword")
    unit_starts = [start for start, _ in encoded.unit_spans("token")]
    try:
        log_z = crf.log_partition(emissions)
        tokens = tiny_pipeline(text, aggregation_strategy="none", ignore_labels=[])
        for entity in results["simple"]:
            units = [u for u, start in enumerate(unit_starts) if entity["start"] <= start < entity["end"]]
            begin, inside = label2id[f"B-{entity['entity_group']}"], label2id[f"I-{entity['entity_group']}"]
            restricted = emissions.clone()
            for u, tag in zip(units, [begin] + [inside] * (len(units) - 1), strict=True):
                restricted[0, u, [k for k in range(restricted.shape[-1]) if k != tag]] = -1e4
            if units[-1] + 1 < restricted.shape[1]:
                restricted[0, units[-1] + 1, inside] = -1e4
            expected = (crf.log_partition(restricted) - log_z).exp().item()
            assert entity["score"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
            unit_scores = [t["score"] for t in tokens if entity["start"] <= t["start"] < entity["end"]]
            assert entity["score"] <= min(unit_scores) + 1e-5  # never above a marginal of one of its tags
    finally:
        crf.float()
        crf.constrain_training = False


def test_token_marginals_are_computed_only_for_the_strategy_that_outputs_them(tiny_pipeline, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("marginals computed")

    monkeypatch.setattr(tiny_pipeline.model.tagger, "tag_probabilities", refuse)
    for strategy in STRATEGIES[1:]:
        tiny_pipeline([TINY_TEXT, TINY_TEXT * 3], aggregation_strategy=strategy, batch_size=2)
    with pytest.raises(AssertionError, match="marginals computed"):
        tiny_pipeline(TINY_TEXT, aggregation_strategy="none")


def test_each_text_is_decoded_and_scored_once_and_long_texts_only_once_stitched(tiny_pipeline, monkeypatch):
    """A text of one window is decoded and scored on its own row, a text of several windows once its windows are
    stitched, never window by window: the forward decodes nothing (the pipeline asks it for emissions only), and the
    tagger's `decode` and `tag_probabilities` together cover each text's units exactly once. Counted in tagged
    positions; with a batch of 2 the one-window text shares its batch with a window of the long one."""
    tagger = tiny_pipeline.model.tagger
    texts = [TINY_TEXT[:24], TINY_TEXT * 3]
    windows = [len(list(tiny_pipeline.preprocess(text))) for text in texts]
    assert windows[0] == 1 and windows[1] > 2
    units = [len(encoded.unit_spans("token")) for encoded in encode_texts(texts, tiny_pipeline.tokenizer, "subword")]
    expected = {strategy: tiny_pipeline(texts, aggregation_strategy=strategy, batch_size=2) for strategy in STRATEGIES}
    decode, tag_probabilities = tagger.decode, tagger.tag_probabilities
    decoded, scored = [], []

    def counted(calls, method):
        def count(emissions, tag_mask):
            calls.append(int(tag_mask.sum()))
            return method(emissions, tag_mask)

        return count

    monkeypatch.setattr(tagger, "decode", counted(decoded, decode))
    monkeypatch.setattr(tagger, "tag_probabilities", counted(scored, tag_probabilities))
    for strategy in STRATEGIES:
        decoded.clear()
        scored.clear()
        results = tiny_pipeline(texts, aggregation_strategy=strategy, batch_size=2)
        assert sorted(decoded) == sorted(units), strategy
        assert sorted(scored) == (sorted(units) if strategy == "none" else []), strategy
        assert results == expected[strategy]


def test_each_text_is_tokenized_once(tiny_pipeline, monkeypatch):
    """One at a time, or sorted into batches by their tokens (a list, an iterator): the tokenizer sees each text
    once."""
    tokenize = type(tiny_pipeline.tokenizer).__call__
    tokenized = []

    def counted(tokenizer, text, *args, **kwargs):
        tokenized.extend([text] if isinstance(text, str) else text)
        return tokenize(tokenizer, text, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipeline.tokenizer), "__call__", counted)
    texts = [TINY_TEXT * 3, TINY_TEXT[:24], "서울"]
    for batch_size, inputs in ((1, texts), (2, texts), (2, iter(texts))):
        tokenized.clear()
        results = list(tiny_pipeline(inputs, aggregation_strategy="simple", batch_size=batch_size))
        assert len(results) == len(texts)
        assert sorted(tokenized) == sorted(texts), batch_size


def test_sequence_probability_on_request(tiny_pipeline):
    text = TINY_TEXT
    result = tiny_pipeline(text, aggregation_strategy="simple", return_sequence_probability=True)
    assert set(result) == {"entities", "sequence_probability"}
    assert result["entities"] == tiny_pipeline(text, aggregation_strategy="simple")
    assert 0.0 < result["sequence_probability"] <= 1.0
    tokens = tiny_pipeline(text, aggregation_strategy="none", ignore_labels=[])
    # The decoded sequence is at most as likely as any one of its tags.
    assert result["sequence_probability"] <= min(t["score"] for t in tokens) + 1e-6


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_empty_and_blank_texts_give_no_entities(tiny_pipeline, tag_unit):
    ner = tiny_pipeline
    if tag_unit == "character":
        model = tiny_model(tiny_pipeline.tokenizer.vocab_size, tag_unit="character", max_length=32, stride=8)
        ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tiny_pipeline.tokenizer)
    assert ner("") == []
    assert ner(["", "   "], aggregation_strategy="simple") == [[], []]
    assert ner(["   ", "김철수"], aggregation_strategy="simple", batch_size=2)[0] == []


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_labels_travel_by_name(tmp_path, tag_unit):
    """A model whose label ids are in the Hub's alphabetical order gives the same spans as the same model in
    KLUE-baseline order (head rows and CRF scores permuted accordingly)."""
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path)
    klue = tiny_model(tokenizer.vocab_size, tag_unit=tag_unit)
    alphabetical_labels = sorted(KLUE_LABELS)
    alphabetical = tiny_model(tokenizer.vocab_size, labels=alphabetical_labels, tag_unit=tag_unit)
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
    # The permuted label order sums the same terms in another order: float32 rounding, nothing more.
    assert [e["score"] for e in results[0]] == pytest.approx([e["score"] for e in results[1]], abs=1e-5)


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
on_import = PIPELINE_REGISTRY.supported_tasks["token-classification"]["impl"]  # a dotted name until imported
koelectra_crf.KoElectraCrfForTokenClassification
after = (transformers.logging.get_verbosity(), logging.getLogger("transformers.pipelines.base").filters[:])
print(json.dumps({"unchanged_logging": before == after, "on_import": on_import,
                  "entry": PIPELINE_REGISTRY.supported_tasks["token-classification"]["impl"].__name__}))
"""


def test_using_the_package_changes_only_the_token_classification_entry():
    """Importing it changes nothing; its first name used registers the dispatching entry, and nothing else."""
    completed = run_command([sys.executable, "-c", IMPORT_CHECK], timeout=300)
    assert "already registered" not in completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {
        "unchanged_logging": True,
        "on_import": "transformers.pipelines.token_classification.TokenClassificationPipeline",
        "entry": "TokenClassificationDispatch",
    }


def test_remote_code_files_stand_alone():
    """Each Hub file imports only what it uses of the others; the model file imports the pipeline and the handler,
    whose files its `save_pretrained` copies (and transformers fetches with it when it loads remote code)."""
    folder = Path(koelectra_crf.__file__).parent
    relative = {name: set(get_relative_imports(folder / name)) for name in REMOTE_FILES}
    assert relative == {
        "configuration_koelectra_crf.py": set(),
        "crf.py": set(),
        "alignment.py": {"crf"},
        "modeling_koelectra_crf.py": {
            "alignment",
            "configuration_koelectra_crf",
            "crf",
            "handler",
            "pipeline_koelectra_crf",
            "tagger",
        },
        "pipeline_koelectra_crf.py": {"alignment", "crf"},
        "handler.py": set(),
        "tagger.py": {"crf"},
    }


def test_an_older_transformers_gets_the_version_it_needs(monkeypatch):
    """The remote code meets whatever transformers a Hub user has: one without `SubConfigSpec` (< 5.20) is told
    which version to install, the one pyproject.toml requires."""
    import importlib.util

    import transformers.configuration_utils

    from koelectra_crf.configuration_koelectra_crf import MIN_TRANSFORMERS

    requirement = re.search(r'"transformers>=([0-9.]+),', (Path(koelectra_crf.__file__).parents[1] / "pyproject.toml")
                            .read_text(encoding="utf-8"))  # fmt: skip
    assert requirement and requirement.group(1) == MIN_TRANSFORMERS
    monkeypatch.delattr(transformers.configuration_utils, "SubConfigSpec")
    path = Path(koelectra_crf.__file__).with_name("configuration_koelectra_crf.py")
    spec = importlib.util.spec_from_file_location("configuration_koelectra_crf_standalone", path)
    with pytest.raises(ImportError, match=re.escape(f'pip install -U "transformers>={MIN_TRANSFORMERS}"')):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_unsupported_arguments_are_refused(tiny_pipeline):
    for unsupported in ({"is_split_into_words": True}, {"offset_mapping": [(0, 1)]}):
        with pytest.raises(ValueError, match=re.escape(f"{list(unsupported)} not supported")):
            tiny_pipeline(TINY_TEXT, **unsupported)
    for stride in (-1, 2.5, True):
        with pytest.raises(ValueError, match="stride must be a non-negative int"):
            tiny_pipeline(TINY_TEXT, stride=stride)
    with pytest.raises(ValueError, match=r"stride \(30\) must be smaller than the tokens a window holds \(30\)"):
        tiny_pipeline(TINY_TEXT, stride=30)  # max_length 32: [CLS] + 30 tokens + [SEP]


def test_stride_overrides_the_configs_for_one_call(tiny_pipeline):
    """The task's standard `stride`: tokens shared by consecutive windows, the config's (8) unless given."""
    text = TINY_TEXT * 6

    def windows(**kwargs) -> list[tuple[int, int]]:
        return [window["window"] for window in tiny_pipeline.preprocess(text, **kwargs)]

    assert windows() == windows(stride=8)
    for stride in (0, 4, 20):
        ranges = windows(stride=stride)
        assert all(end - start == 30 for start, end in ranges[:-1])  # full windows of 30 content tokens
        overlaps = [end - start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False)]
        assert len(ranges) > 1 and overlaps == [stride] * (len(ranges) - 1)
        entities = tiny_pipeline(text, stride=stride, aggregation_strategy="simple")
        assert entities and all(e["word"] == text[e["start"] : e["end"]] for e in entities)
    assert tiny_pipeline.model.config.stride == 8  # the call changed nothing for the next one


def test_an_empty_list_of_texts_is_refused_clearly(tiny_pipeline):
    with pytest.raises(ValueError, match="At least one input is required"):
        tiny_pipeline([])


def test_batches_hold_texts_of_as_many_tokens_and_results_keep_the_callers_order(tiny_pipeline, monkeypatch):
    """Two texts of 6 tokens and two of 9 (one of each with spaces, one without; the tiny tokenizer makes a token of
    each character): with batches of 2 the pipeline batches each pair together, with no padding at all, for a list
    and for an iterator, and each result is that text's own. By characters the order would be 7, 9, 10, 11 and
    both batches padded."""
    short, long = "김철수 서울시", "서울에서 2024년"
    spaced_short, packed_long = " ".join(short.replace(" ", "")), long.replace(" ", "")
    assert [len(text) for text in (short, packed_long, long, spaced_short)] == [7, 9, 10, 11]
    texts = [short, long, spaced_short, packed_long]
    expected = [tiny_pipeline(text, aggregation_strategy="simple") for text in texts]
    shapes = []
    forward = tiny_pipeline.model.forward
    monkeypatch.setattr(tiny_pipeline.model, "forward", lambda **inputs: shapes.append(inputs["attention_mask"]) or
                        forward(**inputs))  # fmt: skip
    as_list = tiny_pipeline(texts, aggregation_strategy="simple", batch_size=2)
    streamed = tiny_pipeline(iter(texts), aggregation_strategy="simple", batch_size=2)
    assert not isinstance(streamed, list)
    as_stream = list(streamed)
    for results in (as_list, as_stream):
        assert [[(e["start"], e["end"], e["entity_group"]) for e in r] for r in results] == [
            [(e["start"], e["end"], e["entity_group"]) for e in r] for r in expected
        ]
        for one, batched in zip(expected, results, strict=True):
            assert [e["score"] for e in one] == pytest.approx([e["score"] for e in batched], abs=1e-6)
    assert len(shapes) == 4 and all(mask.shape[0] == 2 and bool(mask.all()) for mask in shapes)
    one_by_one = tiny_pipeline(iter(texts), aggregation_strategy="simple", batch_size=1)
    assert [[e["start"] for e in r] for r in one_by_one] == [[e["start"] for e in r] for r in expected]


def test_an_unknown_aggregation_strategy_names_the_valid_ones(tiny_pipeline):
    valid = "['none', 'simple', 'first', 'average', 'max']"
    with pytest.raises(ValueError, match=re.escape(f"unknown aggregation_strategy 'longest': use one of {valid}")):
        tiny_pipeline(TINY_TEXT, aggregation_strategy="longest")


@pytest.mark.parametrize(
    ("text", "model_text"),
    [
        (unicodedata.normalize("NFD", TINY_TEXT * 3), TINY_TEXT * 3),  # decomposed Hangul: composed for the model
        # NFC leaves compatibility characters alone (full-width digits, ㈜) and composes e + U+0301.
        ("㈜삼성전자 ２０２４년 김철수 cafe\u0301 李 " * 3, "㈜삼성전자 ２０２４년 김철수 café 李 " * 3),
        # Lone surrogates (not characters; tokenizers refuse them): U+FFFD for the model, offsets unchanged.
        ("김철수\ud800는 서울 2024년\udfff " * 3, "김철수\ufffd는 서울 2024년\ufffd " * 3),
    ],
)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unnormalized_text_is_tagged_as_nfc_with_offsets_into_the_input(tiny_pipeline, text, model_text, strategy):
    assert nfc_with_offsets(text)[0] == model_text != text
    expected = tiny_pipeline(model_text, aggregation_strategy=strategy)
    entities = tiny_pipeline(text, aggregation_strategy=strategy)
    assert len(entities) == len(expected) > 0
    for entity, reference in zip(entities, expected, strict=True):
        assert entity["word"] == text[entity["start"] : entity["end"]]
        word = unicodedata.normalize("NFC", entity["word"])
        assert word.replace("\ud800", "\ufffd").replace("\udfff", "\ufffd") == reference["word"]
        moved = {"word", "start", "end"}  # everything else (tag, score, token index) is the model's, unchanged
        assert {k: v for k, v in entity.items() if k not in moved} == {
            k: v for k, v in reference.items() if k not in moved
        }


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
    with torch.no_grad():
        expected_logits = tiny_pipeline.model(
            **tiny_pipeline.model.prepare_inputs(texts, tiny_pipeline.tokenizer)
        ).logits
    torch.testing.assert_close(torch.tensor(fresh["logits"]), expected_logits)
    assert fresh["entities"] == json.loads(json.dumps(tiny_pipeline(texts, aggregation_strategy="simple")))


def test_character_head_folder_loads_in_a_fresh_process_and_batches_like_one_at_a_time(tmp_path):
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path / "tokenizer")
    model = tiny_model(tokenizer.vocab_size, tag_unit="character", max_length=32, stride=8)
    with torch.no_grad():  # a random head that still predicts entities now and then
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    texts = [TINY_TEXT, TINY_TEXT * 5, "김철수 😀"]
    expected = ner(texts, aggregation_strategy="simple", batch_size=1)
    assert any(expected)
    spans = [[(e["start"], e["end"], e["entity_group"]) for e in entities] for entities in expected]
    batched = ner(texts, aggregation_strategy="simple", batch_size=4)
    assert [[(e["start"], e["end"], e["entity_group"]) for e in entities] for entities in batched] == spans
    for one, many in zip(expected, batched, strict=True):
        assert [e["score"] for e in one] == pytest.approx([e["score"] for e in many], abs=1e-6)
    ner.save_pretrained(tmp_path / "hub")
    fresh = load_in_fresh_process(tmp_path / "hub", texts, tmp_path)
    assert [[(e["start"], e["end"], e["entity_group"]) for e in entities] for entities in fresh["entities"]] == spans


def test_each_unit_takes_its_emissions_from_the_window_where_it_has_most_context(tmp_path):
    """Brute force over all windows: a unit's stitched emissions are those of the window where its token is
    furthest from both edges (the first such window on ties). The model tells windows apart: each emission row
    holds the id of the window's first content token and the row's position in the window."""
    text = " ".join(chr(0xAC00 + i) for i in range(300))  # 300 distinct syllables: one token each
    tokenizer = character_tokenizer(tmp_path, text)
    model = tiny_model(tokenizer.vocab_size, max_length=40, stride=12, tag_unit="token")

    def forward(input_ids, attention_mask, tag_mask, **_):
        emissions = torch.zeros(*input_ids.shape, model.config.num_labels)
        emissions[..., 0] = input_ids[:, 1:2].float()  # the window's first content token
        emissions[..., 1] = torch.arange(input_ids.shape[1]).float()  # position in the window
        return KoElectraCrfOutput(logits=emissions, predictions=model.tagger.decode(emissions, tag_mask))

    model.forward = forward
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    rows = stitched_emissions(ner, text, batch_size=3)[0]
    (encoded,) = encode_texts([text], tokenizer, "subword")
    windows = encoded.windows(40, 12)
    assert len(windows) > 5
    for k, row in enumerate(rows):
        best = max(
            windows, key=lambda window, k=k: min(k - window[0], window[1] - 1 - k) if window[0] <= k < window[1] else -1
        )
        assert int(row[0]) == encoded.token_ids[best[0]]
        assert int(row[1]) == len(encoded.prefix_ids) + k - best[0]


# --------------------------------------------------------------------------------------------------------------
# Inference-time control: the k best analyses, constraints, a lexicon (#34)


def unit_tag_ids(ner, text: str, entities: list[dict]) -> torch.Tensor:
    """The tag ids (1, U) of the text's units that give `entities` (aggregated): B-X on an entity's first unit, I-X on
    the others, O elsewhere; an independent route back from the output to the tags."""
    config = ner.model.config
    (encoded,) = encode_texts([text], ner.tokenizer, config.encoder_tokenization)
    tags = []
    for start, _ in encoded.unit_spans(config.tag_unit):
        entity = next((e for e in entities if e["start"] <= start < e["end"]), None)
        tags.append("O" if entity is None else f"{'B' if start == entity['start'] else 'I'}-{entity['entity_group']}")
    return torch.tensor([[config.label2id[tag] for tag in tags]])


def crf_log_probability(ner, emissions: torch.Tensor, tags: torch.Tensor, restricted=None) -> float:
    """log P(tags | text) in float64 by the forward algorithm, the log-partition over valid BIO sequences, and with
    `restricted` emissions (a forced span's other tags at -1e4) conditioned on the restriction."""
    crf = copy.deepcopy(ner.model.crf).double()
    crf.constrain_training = True
    emissions = emissions.double()
    log_p = crf.log_likelihood(emissions, tags).item()
    if restricted is not None:
        log_p += crf.log_partition(emissions).item() - crf.log_partition(restricted.double()).item()
    return log_p


def test_top_k_gives_the_k_most_probable_analyses_in_order(tiny_pipeline):
    """Each analysis's probability is P(its tags | text) (the forward algorithm on the stitched emissions, not the
    k-best recursion), in non-increasing order, all analyses distinct, the first one the ordinary output."""
    for text in (TINY_TEXT, TINY_TEXT * 3):
        analyses = tiny_pipeline(text, aggregation_strategy="simple", top_k=4)
        assert len(analyses) == 4 and all(set(a) == {"entities", "probability"} for a in analyses)
        assert analyses[0]["entities"] == tiny_pipeline(text, aggregation_strategy="simple")
        probabilities = [a["probability"] for a in analyses]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len({json.dumps(a["entities"]) for a in analyses}) == 4
        emissions = stitched_emissions(tiny_pipeline, text)
        for analysis in analyses:
            assert all(e["word"] == text[e["start"] : e["end"]] for e in analysis["entities"])
            tags = unit_tag_ids(tiny_pipeline, text, analysis["entities"])
            expected = math.exp(crf_log_probability(tiny_pipeline, emissions, tags))
            assert analysis["probability"] == pytest.approx(expected, rel=1e-3, abs=1e-30)
    assert tiny_pipeline([TINY_TEXT, "서울"], top_k=2)[1][0]["probability"] > 0
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive int"):
            tiny_pipeline(TINY_TEXT, top_k=top_k)


def test_a_call_with_controls_decodes_a_text_once(tiny_pipeline, monkeypatch):
    """top_k, constraints and a lexicon are decoded in postprocess, under them: the batch's Viterbi path and
    marginals, which they replace, are not computed first. A plain call still decodes each batch once."""
    text = "서울 삼성전자 본사"  # one window (the tiny model's windows hold 30 tokens): decoded with its batch
    assert len(encode_texts([text], tiny_pipeline.tokenizer, "subword")[0].token_ids) < 30
    calls = []
    tagger = tiny_pipeline.model.tagger
    for name in ("decode", "tag_probabilities", "k_best"):
        method = getattr(tagger, name)
        monkeypatch.setattr(tagger, name, lambda *args, _n=name, _m=method, **kw: calls.append(_n) or _m(*args, **kw))
    controls = {"top_k": 2}, {"constraints": [{"start": 0, "end": 2, "label": "LC"}]}, {"lexicon": {"서울": "LC"}}
    for control in controls:
        calls.clear()
        tiny_pipeline(text, aggregation_strategy="none", **control)
        assert calls == ["k_best", "tag_probabilities"], control
    calls.clear()
    tiny_pipeline(text, aggregation_strategy="none")
    assert calls == ["decode", "tag_probabilities"]


def test_constraints_force_and_forbid_entities_and_condition_the_probability(tiny_pipeline):
    text = TINY_TEXT
    i = text.index("삼성전자")
    forced = {"start": i, "end": i + 4, "label": "PS"}
    result = tiny_pipeline(text, aggregation_strategy="simple", constraints=[forced], return_sequence_probability=True)
    assert result["conditioned_on"] == [forced]
    assert {"entity_group": "PS", "word": "삼성전자", "start": i, "end": i + 4} in [
        {key: e[key] for key in ("entity_group", "word", "start", "end")} for e in result["entities"]
    ]
    # Oracle: P(tags | text) / P(the forced entity | text), the latter from the emissions restricted to it.
    emissions = stitched_emissions(tiny_pipeline, text)
    label2id = tiny_pipeline.model.config.label2id
    restricted = emissions.clone()
    for u, tag in zip(range(i - 6, i - 2), ["B-PS", "I-PS", "I-PS", "I-PS"], strict=True):  # 4 units, 6 spaces before
        restricted[0, u, [k for k in range(restricted.shape[-1]) if k != label2id[tag]]] = -1e4
    restricted[0, i - 2, label2id["I-PS"]] = -1e4
    tags = unit_tag_ids(tiny_pipeline, text, result["entities"])
    expected = math.exp(crf_log_probability(tiny_pipeline, emissions, tags, restricted))
    assert result["sequence_probability"] == pytest.approx(expected, rel=1e-3)

    anything = tiny_pipeline(text, aggregation_strategy="simple", constraints=[{**forced, "label": "ANY"}])
    assert [(e["start"], e["end"]) for e in anything if e["start"] < i + 4 and e["end"] > i] == [(i, i + 4)]
    for label in ("O", "NONE"):
        nothing = tiny_pipeline(text, aggregation_strategy="none", constraints=[{"start": 0, "end": 9, "label": label}])
        assert nothing and all(e["start"] >= 9 for e in nothing)


def test_constraints_apply_to_the_stitched_text_and_the_callers_offsets(tiny_pipeline):
    """Through the windows of a long text, and in the offsets of a text that is not NFC."""
    long_text = TINY_TEXT * 3
    i = 2 * len(TINY_TEXT) + TINY_TEXT.index("서울")
    for analysis in tiny_pipeline(long_text, aggregation_strategy="first", top_k=2,
                                  constraints=[{"start": i, "end": i + 2, "label": "OG"}]):  # fmt: skip
        assert {"entity_group": "OG", "word": "서울", "start": i, "end": i + 2} in [
            {key: e[key] for key in ("entity_group", "word", "start", "end")} for e in analysis["entities"]
        ]
    decomposed = unicodedata.normalize("NFD", TINY_TEXT)
    start = decomposed.index(unicodedata.normalize("NFD", "삼성전자"))
    end = start + len(unicodedata.normalize("NFD", "삼성전자"))
    entities = tiny_pipeline(decomposed, aggregation_strategy="simple",
                             constraints=[{"start": start, "end": end, "label": "DT"}])  # fmt: skip
    assert ("DT", start, end, decomposed[start:end]) in [
        (e["entity_group"], e["start"], e["end"], e["word"]) for e in entities
    ]


def test_character_units_take_constraints_inside_a_word(tmp_path):
    tokenizer = character_tokenizer(tmp_path / "tokenizer")
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8, tag_unit="character")
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    i = TINY_TEXT.index("서울")  # "서울에서": the entity ends inside the word, before its particle
    entities = ner(
        TINY_TEXT * 2, aggregation_strategy="simple", constraints=[{"start": i, "end": i + 2, "label": "LC"}]
    )
    assert ("LC", i, i + 2) in [(e["entity_group"], e["start"], e["end"]) for e in entities]


@pytest.mark.parametrize(
    "constraints,message",
    [
        ([{"start": 0, "end": 999, "label": "PS"}], "out of range"),
        ([{"start": 3, "end": 3, "label": "PS"}], "0 <= start < end"),
        ([{"start": 0, "end": 3, "label": "XX"}], "label must be one of"),
        ([{"start": 0, "end": 3}], "a constraint is"),
        ([{"start": 0, "end": 3, "label": "PS"}, {"start": 0, "end": 3, "label": "OG"}], "contradicts"),
        ([{"start": 0, "end": 3, "label": "PS"}, {"start": 2, "end": 5, "label": "O"}], "contradicts"),
        ([{"start": 4, "end": 7, "label": "LC"}], "edges of the model's units"),  # starts at a space
        ([{"start": 0, "end": 2, "label": "PS"}, {"start": 2, "end": 3, "label": "ANY"}], None),  # two entities: fine
    ],
)
def test_bad_constraints_are_clear_errors(tiny_pipeline, constraints, message):
    if message is None:
        entities = tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", constraints=constraints)
        assert [(e["start"], e["end"]) for e in entities[:2]] == [(0, 2), (2, 3)]
        return
    with pytest.raises(ValueError, match=message):
        tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", constraints=constraints)


def test_constraints_need_one_text(tiny_pipeline):
    with pytest.raises(ValueError, match="pass them with a single string"):
        tiny_pipeline([TINY_TEXT], constraints=[{"start": 0, "end": 2, "label": "PS"}])


def test_lexicon_matches_are_the_longest_at_grapheme_boundaries():
    lexicon = {"삼성": "OG", "삼성전자": "OG", "🇷🇺": "LC", "e": "PS"}
    assert lexicon_matches("삼성전자와 삼성", lexicon) == [(0, 4, "OG"), (6, 8, "OG")]
    assert lexicon_matches("🇰🇷🇺🇸", lexicon) == []  # 🇷🇺 would cut two flags
    assert lexicon_matches("e\u0301 e", lexicon) == [(3, 4, "PS")]  # not the e of é


def test_lexicon_hard_soft_and_from_files(tiny_pipeline, tmp_path, monkeypatch):
    lexicon = {"삼성전자": "OG", "서울": "LC"}
    (tmp_path / "lexicon.tsv").write_text("삼성전자\tOG\n\n서울\tLC\n", encoding="utf-8")
    (tmp_path / "lexicon.json").write_text(json.dumps(lexicon, ensure_ascii=False), encoding="utf-8")
    i, j = TINY_TEXT.index("삼성전자"), TINY_TEXT.index("서울")
    expected = {("OG", i, i + 4), ("LC", j, j + 2)}
    hard = tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", lexicon=lexicon)
    assert expected <= {(e["entity_group"], e["start"], e["end"]) for e in hard}
    for source in (tmp_path / "lexicon.tsv", str(tmp_path / "lexicon.json")):
        assert tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", lexicon=source) == hard
    plain = tiny_pipeline(TINY_TEXT, aggregation_strategy="simple")
    monkeypatch.setattr(pipeline_module, "LEXICON_BONUS", 0.0)  # no bonus: the model's own analysis
    assert tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", lexicon=lexicon, lexicon_mode="soft") == plain
    monkeypatch.setattr(pipeline_module, "LEXICON_BONUS", 50.0)  # an overwhelming bonus: the lexicon's analysis
    soft = tiny_pipeline(TINY_TEXT, aggregation_strategy="simple", lexicon=lexicon, lexicon_mode="soft")
    assert expected <= {(e["entity_group"], e["start"], e["end"]) for e in soft}
    (tmp_path / "bad.tsv").write_text("삼성전자 OG\n", encoding="utf-8")
    for kwargs, message in (({"lexicon": {"삼성": "XX"}}, "not the model's"), ({"lexicon_mode": "x"}, "lexicon_mode"),
                            ({"lexicon": tmp_path / "bad.tsv"}, "line 1 is not")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            tiny_pipeline(TINY_TEXT, **kwargs)


def test_a_hard_lexicon_match_that_cuts_a_token_is_left_out_and_said(tmp_path, caplog):
    """With token units, "삼성" inside the token "삼성전자" cannot be an entity of its own: left out, with a warning."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "삼성전자", *sorted(set("삼성전자 주가")), "##가", "##주"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = ElectraTokenizerFast(vocab=str(tmp_path / "vocab.txt"), do_lower_case=False)
    ner = KoElectraCrfTokenClassificationPipeline(model=tiny_model(len(vocab), tag_unit="token"), tokenizer=tokenizer)
    with caplog.at_level("WARNING"):
        tagged = ner("삼성전자 주가", aggregation_strategy="simple", lexicon={"삼성": "OG", "주가": "QT"})
    assert ("QT", 5, 7) in {(e["entity_group"], e["start"], e["end"]) for e in tagged}
    assert not any(e["start"] == 0 and e["end"] == 2 for e in tagged)
    assert "lexicon: ['삼성'] cut a token of the model" in caplog.text
