"""Serving: the ONNX export against the PyTorch pipeline, loading it without the training dependencies, the
commands that take an export folder, and the Inference Endpoints handler of a saved folder."""

import json
import os
import sys

import onnx
import pytest
import torch
from conftest import shared_path
from processes import run_command
from tiny import TINY_TEXT, character_tokenizer, run_as_hub_user, tiny_model
from transformers import AutoTokenizer
from transformers.dynamic_module_utils import get_imports

from koelectra_crf import KLUE_LABELS, KoElectraCrfForTokenClassification, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.cli import main
from koelectra_crf.data import read_klue_tsv
from koelectra_crf.loading import load_pipeline
from koelectra_crf.onnx_model import EXPORT_INFO_FILE, KoElectraCrfOnnxModel, export_onnx, load_onnx_pipeline

STRATEGIES = ["none", "simple", "first", "average", "max"]
TEXTS = [TINY_TEXT, "   김철수  서울 \t 2024년 😀😀 李 ABC   ", TINY_TEXT * 12]  # the last one: 9 windows


def tiny_pipeline(tokenizer, **config_kwargs) -> KoElectraCrfTokenClassificationPipeline:
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8, **config_kwargs)
    with torch.no_grad():  # a random head that still predicts entities now and then
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


def without_scores(results: list[list[dict]]) -> list[list[dict]]:
    return [
        [{key: value for key, value in entity.items() if key != "score"} for entity in entities] for entities in results
    ]


def assert_same_output(results: list[list[dict]], expected: list[list[dict]], tolerance: float = 1e-4) -> None:
    """Same entities (tags, offsets, words, token indices); scores (CRF marginals) within `tolerance`."""
    assert without_scores(results) == without_scores(expected)
    scores = [entity["score"] for entities in results for entity in entities]
    assert scores == pytest.approx([entity["score"] for entities in expected for entity in entities], abs=tolerance)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny token-unit model folder (windows of 32 tokens) and its PyTorch pipeline."""
    folder = tmp_path_factory.mktemp("model")
    ner = tiny_pipeline(character_tokenizer(folder / "vocab"), tag_unit="token")
    ner.save_pretrained(folder)
    return folder, ner


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    """The saved model exported by the command line (float32)."""
    folder = tmp_path_factory.mktemp("onnx")
    main(["export", str(saved[0]), "--output", str(folder)])
    return folder


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_pipeline_gives_the_pytorch_pipelines_output(saved, exported, batch_size):
    _, reference = saved
    info = json.loads((exported / EXPORT_INFO_FILE).read_text())
    assert info["quantize"] is None and info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["sample_max_abs_difference"] < 1e-4
    ner = load_onnx_pipeline(exported)
    assert isinstance(ner, KoElectraCrfTokenClassificationPipeline) and isinstance(ner.model, KoElectraCrfOnnxModel)
    # The PyTorch model's tagger class, over the exported CRF scores; no decoding method of its own.
    assert type(ner.model.tagger) is type(reference.model.tagger) and ner.model.tagger.crf is ner.model.crf
    assert not hasattr(ner.model, "decode")
    for strategy in STRATEGIES:
        expected = reference(TEXTS, aggregation_strategy=strategy, batch_size=batch_size)
        assert sum(map(len, expected)) > 0
        assert_same_output(ner(TEXTS, aggregation_strategy=strategy, batch_size=batch_size), expected)


# A forced entity and a lexicon for the CRF's controls (#34): "김철수" as OG, "서울" from the lexicon.
CONSTRAINTS = [{"start": 0, "end": 3, "label": "OG"}]
LEXICON = {"서울": "LC"}


def test_onnx_models_take_the_crfs_controls(saved, exported):
    """The k best analyses under constraints and a lexicon: the ONNX model's tagger is the PyTorch model's."""
    _, reference = saved
    ner = load_onnx_pipeline(exported)
    kwargs = {"aggregation_strategy": "simple", "top_k": 3, "constraints": CONSTRAINTS, "lexicon": LEXICON}
    results, expected = ner(TINY_TEXT, **kwargs), reference(TINY_TEXT, **kwargs)
    assert len(results) == 3 and results[0]["conditioned_on"] == CONSTRAINTS + [{"start": 5, "end": 7, "label": "LC"}]
    assert_same_output([a["entities"] for a in results], [a["entities"] for a in expected])
    assert [a["probability"] for a in results] == pytest.approx([a["probability"] for a in expected], rel=1e-3)


def test_each_attention_layer_is_one_onnx_node(saved, exported):
    nodes = [node.op_type for node in onnx.load(exported / "model.onnx").graph.node]
    assert nodes.count("Attention") == saved[1].model.encoder.config.num_hidden_layers
    assert "Softmax" not in nodes and "IsNaN" not in nodes  # not also decomposed


def test_onnx_logits_match_pytorch_for_any_batch_and_length(saved, exported):
    """Dynamic batch and length; padding does not leak into a row (the BiLSTM's backward pass starts at each row's
    end, as with the model's packed sequences)."""
    _, reference = saved
    onnx_model = KoElectraCrfOnnxModel.from_pretrained(exported)
    for texts in (["김"], [TINY_TEXT, "서울"], [TINY_TEXT[:5], TINY_TEXT * 2, "ABC 123"]):
        batch = reference.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = reference.model(**batch)
        output = onnx_model(**batch)
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(output.logits[mask], expected.logits[mask], rtol=1e-4, atol=1e-5)
        assert torch.equal(output.predictions, expected.predictions)


def test_character_units_export_too(tmp_path):
    reference = tiny_pipeline(character_tokenizer(tmp_path / "vocab"), tag_unit="character")
    export_onnx(reference.model, reference.tokenizer, tmp_path / "onnx")
    info = json.loads((tmp_path / "onnx" / EXPORT_INFO_FILE).read_text())
    assert info["inputs"][-4:] == ["tag_mask", "char_token_index", "char_position_ids", "char_codes"]
    ner = load_onnx_pipeline(tmp_path / "onnx")
    for strategy in ("none", "simple"):
        expected = reference(TEXTS, aggregation_strategy=strategy, batch_size=2)
        assert sum(map(len, expected)) > 0
        assert_same_output(ner(TEXTS, aggregation_strategy=strategy, batch_size=2), expected)


def float_matrices_read(graph) -> list[list[int]]:
    """The shapes of the float32 matrices that linear layers and embeddings of `graph` read."""
    shapes = {
        i.name: list(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
    }
    return [shapes[name] for n in graph.node if n.op_type in ("MatMul", "Gather") for name in n.input if name in shapes]


@pytest.mark.parametrize("quantize", ["int8", "int8-full"])
def test_int8_export_quantizes_the_weights_and_keeps_the_output_format(saved, tmp_path, quantize):
    folder, reference = saved
    main(["export", str(folder), "--output", str(tmp_path), "--quantize", quantize])
    assert json.loads((tmp_path / EXPORT_INFO_FILE).read_text())["quantize"] == quantize
    graph = onnx.load(tmp_path / "model.onnx").graph
    assert {"MatMulInteger", "DynamicQuantizeLSTM"} <= {node.op_type for node in graph.node}
    # Every linear layer and embedding reads int8 weights, but with "int8" the encoder's feed-forward output
    # projections (intermediate size -> hidden size), one per layer.
    encoder = reference.model.encoder.config
    kept = [[encoder.intermediate_size, encoder.hidden_size]] * encoder.num_hidden_layers if quantize == "int8" else []
    assert float_matrices_read(graph) == kept
    # A second export in the process keeps the length dynamic too (see onnx_model._forget_lstm_kernels).
    assert [[axis.dim_param for axis in i.type.tensor_type.shape.dim] for i in graph.input] == [["batch", "length"]] * 3
    ner = load_onnx_pipeline(tmp_path)
    for text, entities in zip(TEXTS, ner(TEXTS, aggregation_strategy="simple"), strict=True):
        assert all(entity["word"] == text[entity["start"] : entity["end"]] for entity in entities)
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_onnx(reference.model, reference.tokenizer, tmp_path / "other", quantize="int4")


def test_an_export_replaces_an_export_and_nothing_else(saved, tmp_path, capsys):
    folder, reference = saved
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")
    refusals = {folder: "is the model's own folder", tmp_path / "notes": "is not empty and holds no earlier export"}
    for target, reason in refusals.items():
        with pytest.raises(SystemExit):
            main(["export", str(folder), "--output", str(target)])
        assert f"koelectra-crf export: error: --output {target} {reason}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not empty and holds no earlier export"):
        export_onnx(reference.model, reference.tokenizer, folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    assert (tmp_path / "notes" / "config.json").read_text() == "{}"
    main(["export", str(folder), "--output", str(tmp_path / "onnx"), "--quantize", "int8"])
    main(["export", str(folder), "--output", str(tmp_path / "onnx")])  # an earlier export: replaced
    assert json.loads((tmp_path / "onnx" / EXPORT_INFO_FILE).read_text())["quantize"] is None
    assert_same_output(load_onnx_pipeline(tmp_path / "onnx")(TEXTS), reference(TEXTS))


NO_TRAINING_PACKAGES = """
import json, sys
for name in ("datasets", "accelerate", "evaluate", "seqeval", "sklearn", "matplotlib", "koelectra_crf.data"):
    sys.modules[name] = None  # importing any of them now fails
from koelectra_crf.onnx_model import load_onnx_pipeline
ner = load_onnx_pipeline(sys.argv[1])
print(json.dumps(ner(json.loads(sys.argv[2]), aggregation_strategy="simple")))
"""


def test_an_export_loads_without_the_training_dependencies(saved, exported, tmp_path):
    _, reference = saved
    completed = run_command(
        [sys.executable, "-c", NO_TRAINING_PACKAGES, exported, json.dumps(TEXTS)],
        cwd=tmp_path, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    entities = json.loads(completed.stdout.strip().splitlines()[-1])
    assert_same_output(entities, reference(TEXTS, aggregation_strategy="simple"))


def test_predict_takes_an_export_folder(saved, exported, tmp_path, capsys):
    _, reference = saved
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:2]) + "\n", encoding="utf-8")
    main(["predict", str(exported), "--input", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "out.jsonl")])
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines] == TEXTS[:2]
    assert_same_output([line["entities"] for line in lines], reference(TEXTS[:2], aggregation_strategy="simple"))
    with pytest.raises(ValueError, match="runs on the CPU"):  # (the command line refuses a GPU it lacks before)
        load_pipeline(str(exported), "cuda")


HANDLER_CALLS = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", f"{sys.argv[1]}/handler.py")
handler_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler_module)
handler = handler_module.EndpointHandler(sys.argv[1])
requests = json.loads(sys.argv[2])
print(json.dumps({"answers": [handler(request) for request in requests],
                  "imported_koelectra_crf": "koelectra_crf" in sys.modules}))
"""


def test_every_saved_folder_serves_requests_through_its_handler(saved, tmp_path):
    folder, reference = saved
    handler = folder / "handler.py"
    assert set(get_imports(handler)) <= {"torch", "transformers"} | sys.stdlib_module_names
    requests = [
        {"inputs": TINY_TEXT},  # aggregation_strategy "simple" unless asked otherwise
        {"inputs": TEXTS, "parameters": {"aggregation_strategy": "first", "ignore_labels": ["O", "DT"]}},
        {"inputs": TEXTS[2], "parameters": {"aggregation_strategy": "none", "stride": 20}},
        {"inputs": TINY_TEXT, "parameters": {"top_k": 3, "constraints": CONSTRAINTS, "lexicon": LEXICON}},
    ]
    result = run_as_hub_user(HANDLER_CALLS, folder, requests, tmp_path)
    assert result["imported_koelectra_crf"] is False
    expected = [
        reference(TINY_TEXT, aggregation_strategy="simple"),
        reference(TEXTS, aggregation_strategy="first", ignore_labels=["O", "DT"]),
        reference(TEXTS[2], aggregation_strategy="none", stride=20),
        reference(TINY_TEXT, aggregation_strategy="simple", top_k=3, constraints=CONSTRAINTS, lexicon=LEXICON),
    ]
    assert result["answers"] == json.loads(json.dumps(expected))
    assert not any(entity["entity_group"] == "DT" for entities in expected[1] for entity in entities)


@pytest.mark.slow
def test_onnx_gives_the_pytorch_entities_on_klue_validation_with_the_e5_encoder(klue_valid_file, tmp_path):
    """500 validation sentences and one text of 2,000+ characters (windows) through the real encoder: the fp32
    export's entities are the PyTorch pipeline's. A fresh head, scaled up so that its paths are not near ties that
    float rounding could flip (a trained head is confident in the same way)."""
    encoder = shared_path("encoders/multilingual-e5-small-ko")
    torch.manual_seed(0)
    model = KoElectraCrfForTokenClassification.from_encoder(str(encoder)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    reference = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(encoder))
    export_onnx(model, reference.tokenizer, tmp_path)
    ner = load_onnx_pipeline(tmp_path)
    texts = [sentence["sentence"] for sentence in read_klue_tsv(klue_valid_file)][:500]
    long_text = " ".join(texts[:40])
    assert len(texts) == 500 and len(long_text) >= 2_000
    texts.append(long_text)
    expected = reference(texts, aggregation_strategy="simple", batch_size=16)
    results = ner(texts, aggregation_strategy="simple", batch_size=16)
    assert sum(map(len, expected)) > 500
    assert_same_output(results, expected, tolerance=1e-3)


def test_an_export_says_only_what_it_wrote(saved, tmp_path, capfd):
    """None of torch's exporter notes a user can do nothing about (deprecations, LSTM weights as attributes, shared
    axis names, torchvision's absence, progress lines): one line on what was written."""
    import warnings

    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["export", str(saved[0]), "--output", str(tmp_path / "onnx")])
    printed = capfd.readouterr()
    assert [str(warning.message) for warning in caught] == []
    assert printed.out.strip().splitlines() == [printed.out.strip()] and "largest logit difference" in printed.out
    assert "torch.onnx" not in printed.out + printed.err and "torchvision" not in printed.err
