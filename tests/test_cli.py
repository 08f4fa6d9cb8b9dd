"""The `koelectra-crf` subcommands end to end on a tiny random model and a small KLUE TSV file."""

import io
import json
import math
import os
import pty
import select
import subprocess
import sys
import time
import warnings

import datasets
import huggingface_hub
import pytest
import torch
from conftest import shared_path
from processes import run_command
from test_analysis import assert_valid_png
from tiny import character_tokenizer, tiny_model
from transformers import AutoModelForTokenClassification, AutoTokenizer

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline, formats
from koelectra_crf.alignment import NerDataCollator, spans_to_char_tags
from koelectra_crf.analysis import calibration
from koelectra_crf.analysis.calibration import SEARCH_OCTAVES, STEPS_PER_OCTAVE, calibrate
from koelectra_crf.analysis.errors import CATEGORIES
from koelectra_crf.cli import COMMANDS, main
from koelectra_crf.data import (
    example_tag_names,
    load_klue_ner,
    read_klue_tsv,
    strip_entity_marks,
    tokenize_and_align,
)
from koelectra_crf.metrics import klue_ner_metrics
from koelectra_crf.pseudo_label import CONFIDENCES, confidence_path, klue_block, load_pseudo_labelled
from koelectra_crf.usage import DEBUG_VARIABLE, UsageError, refusing

KLUE_VALID = "data/klue-ner-v1.1/klue-ner-v1.1_dev-valid.tsv"
SUFFIXES = {"label-studio": ".json", "conll": ".conll", "conll-char": ".conll", "klue": ".tsv"}  # others: .jsonl
MARKED = [
    "<김철수:PS>는 <서울:LC>에서 <2024년 3월 1일:DT> <오전 9시:TI>에 <삼성전자:OG> 사과 <3개:QT>를 샀다.",
    "<이재용:PS> 회장이 <서울 강남구:LC> 본사를 찾았다.",
    "오늘은 날씨가 맑고 바람이 분다.",
    "<ABC:OG> 주식 <123:QT>주를 <李舜臣:PS>이 샀다 😀",
    "<삼성전자:OG>는 <3월:DT>에 <서울:LC>에서 <이재용:PS> 회장과 만났다. " * 3,
]


@pytest.fixture(scope="module")
def klue_file(tmp_path_factory):
    """The sentences in the official v1.1 TSV format."""
    blocks = [klue_block(f"test-{k}", *strip_entity_marks(marked)) for k, marked in enumerate(MARKED)]
    path = tmp_path_factory.mktemp("data") / "test.tsv"
    path.write_text("## 토큰, 레이블 구분자 : \\t\n" + "".join(blocks), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(klue_file, tmp_path_factory):
    """A saved tiny model (windows of 32 tokens), fitted a little to the test file: some entities right, some not."""
    folder = tmp_path_factory.mktemp("model")
    tokenizer = character_tokenizer(folder / "tokenizer", "".join(strip_entity_marks(m)[0] for m in MARKED))
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    rows = tokenize_and_align(load_klue_ner(test_file=klue_file)["test"], tokenizer, model.config)
    batch = NerDataCollator(tokenizer.pad_token_id)(rows.to_list())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    KoElectraCrfTokenClassificationPipeline(model=model.eval(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference_pipeline(model_dir):
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))


def run(*args) -> None:
    main([str(a) for a in args])


def refusal(capsys, *args, alone: bool = True) -> str:
    """The one line with which `koelectra-crf ARGS` refuses its input: the last on stderr, exit status 2, no traceback;
    `alone`: the only output (refused before any work: no progress bar of a model loading)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(*args)
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr and stderr.endswith("\n"), stderr
    assert len(stderr.splitlines()) == 1 or not alone, stderr
    return stderr.splitlines()[-1]


def test_evaluate_writes_klue_metrics_charts_and_predictions(model_dir, klue_file, reference_pipeline, tmp_path):
    run("evaluate", model_dir, "--test_file", klue_file, "--output_dir", tmp_path, "--device", "cpu", "--batch_size", 2)

    sentences = read_klue_tsv(klue_file)
    texts = [s["sentence"] for s in sentences]
    predicted = [
        spans_to_char_tags(len(text), [(e["start"], e["end"], e["entity_group"]) for e in entities])
        for text, entities in zip(texts, reference_pipeline(texts, aggregation_strategy="simple"), strict=True)
    ]
    expected = klue_ner_metrics([s["ner_tags"] for s in sentences], predicted, [s["tokens"] for s in sentences])
    assert json.loads((tmp_path / "metrics.json").read_text()) == expected
    report = (tmp_path / "classification_report.txt").read_text()
    assert f"{expected['entity_f1']:.2f}" in report and all(t in report for t in ("PS", "LC", "OG", "DT", "TI", "QT"))

    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["guid"] for r in records] == [s["guid"] for s in sentences]
    assert 0 < expected["entity_f1"] and sum(len(r["predicted"]) for r in records) > 0
    assert records[1]["gold"][0] == {"entity_group": "PS", "word": "이재용", "start": 0, "end": 3}

    counts = json.loads((tmp_path / "confusion_matrix.json").read_text())["counts"]
    assert sum(map(sum, counts)) == sum(len([c for c in s["tokens"] if c != " "]) for s in sentences)
    assert_valid_png(tmp_path / "entity_f1.png")
    assert_valid_png(tmp_path / "confusion_matrix.png")


def test_predict_prints_one_json_line_per_text(model_dir, reference_pipeline, tmp_path, capsys, monkeypatch):
    texts = ["김철수는 서울에서 사과를 샀다.", "이재용 회장이 찾았다."]
    expected = reference_pipeline(texts, aggregation_strategy="simple")

    def check(output: str, ids: list[str]) -> None:
        lines = [json.loads(line) for line in output.splitlines()]
        assert [line["id"] for line in lines] == ids
        assert [line["text"] for line in lines] == texts
        for line, entities in zip(lines, expected, strict=True):
            assert [{**e, "score": 0} for e in line["entities"]] == [{**e, "score": 0} for e in entities]
            # Batched (padded) and one by one, the scores agree to float precision.
            assert [e["score"] for e in line["entities"]] == pytest.approx([e["score"] for e in entities], abs=1e-5)
        assert sum(len(line["entities"]) for line in lines) > 0

    run("predict", model_dir, *texts, "--device", "cpu")
    check(capsys.readouterr().out, ["arg-1", "arg-2"])
    (tmp_path / "texts.txt").write_text(texts[0] + "\n\n" + texts[1] + "\n", encoding="utf-8")
    run("predict", model_dir, "--input", tmp_path / "texts.txt", "--device", "cpu")
    check(capsys.readouterr().out, ["line-1", "line-3"])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n".join(texts)))
    run("predict", model_dir, "--device", "cpu")
    check(capsys.readouterr().out, ["line-1", "line-3"])


def test_predict_gives_the_k_best_analyses_and_applies_a_lexicon(model_dir, reference_pipeline, tmp_path, capsys):
    texts = ["김철수는 서울에서 사과를 샀다.", "이재용 회장이 찾았다."]
    (tmp_path / "lexicon.tsv").write_text("서울\tOG\n이재용\tPS\n", encoding="utf-8")
    for mode in ("hard", "soft"):
        run("predict", model_dir, *texts, "--device", "cpu", "--top_k", "3", "--lexicon", tmp_path / "lexicon.tsv",
            "--lexicon_mode", mode)  # fmt: skip
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        expected = reference_pipeline(texts, aggregation_strategy="simple", top_k=3,
                                      lexicon={"서울": "OG", "이재용": "PS"}, lexicon_mode=mode)  # fmt: skip
        assert [line["text"] for line in lines] == texts
        for line, analyses in zip(lines, expected, strict=True):
            assert [a["probability"] for a in line["analyses"]] == pytest.approx(
                [a["probability"] for a in analyses], rel=1e-3
            )
            assert [[(e["start"], e["end"], e["entity_group"]) for e in a["entities"]] for a in line["analyses"]] == [
                [(e["start"], e["end"], e["entity_group"]) for e in a["entities"]] for a in analyses
            ]
    hard = reference_pipeline(texts, aggregation_strategy="simple", top_k=1, lexicon=tmp_path / "lexicon.tsv")
    assert ("OG", 5, 7) in [(e["entity_group"], e["start"], e["end"]) for e in hard[0][0]["entities"]]


def test_predict_answers_each_line_typed_at_a_terminal(model_dir, reference_pipeline, tmp_path):
    """A text typed at a terminal is tagged as soon as its line is entered, not once a batch of texts has come."""
    texts = ["김철수는 서울에서 사과를 샀다.", "이재용 회장이 찾았다."]
    terminal, stdin = pty.openpty()
    command = [sys.executable, "-m", "koelectra_crf", "predict", str(model_dir), "--device", "cpu", "--batch_size", "8"]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as errors:
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=errors)
    os.close(stdin)
    try:
        for text, entities in zip(texts, reference_pipeline(texts, aggregation_strategy="simple"), strict=True):
            os.write(terminal, text.encode() + b"\n")
            assert select.select([process.stdout], [], [], 120)[0], f"no answer to {text!r} before the next line"
            line = json.loads(process.stdout.readline())
            assert line["text"] == text
            assert [e["word"] for e in line["entities"]] == [e["word"] for e in entities]
        os.write(terminal, b"\x04")  # end of input, as Ctrl-D
        assert process.wait(timeout=60) == 0 and process.stdout.read() == b""
    finally:
        process.kill()
        os.close(terminal)
        print(f"--- stderr of {command} ---\n{stderr.read_text()}")  # shown by pytest if the test fails


def test_errors_writes_categories_and_examples(model_dir, klue_file, tmp_path):
    run("errors", model_dir, "--test_file", klue_file, "--output_dir", tmp_path, "--device", "cpu", "--examples", 2)
    report = json.loads((tmp_path / "errors.json").read_text())
    assert list(report["counts"]) == list(CATEGORIES)
    assert sum(report["counts"].values()) == report["pairs"] > 0
    assert report["counts"]["correct"] > 0 and report["counts"]["correct"] < report["pairs"]
    gold_entities = sum(len(strip_entity_marks(m)[1]) for m in MARKED)
    paired_gold = report["counts"]["missed"] + sum(
        n for gold_type, row in report["type_confusion"].items() if gold_type != "O" for n in row.values()
    )
    assert paired_gold >= gold_entities  # every gold entity is in at least one pair
    assert all(len(examples) <= 2 for examples in report["examples"].values())
    markdown = (tmp_path / "errors.md").read_text()
    assert "# Error analysis" in markdown and "## Type confusion" in markdown


def test_errors_compares_models_side_by_side(model_dir, klue_file, tmp_path, capsys):
    run("errors", model_dir, "--test_file", klue_file, "--output_dir", tmp_path / "one", "--device", "cpu")
    single = json.loads((tmp_path / "one" / "errors.json").read_text())
    capsys.readouterr()
    run("errors", model_dir, "--compare", model_dir, "--test_file", klue_file, "--output_dir", tmp_path / "two",
        "--device", "cpu")  # fmt: skip
    printed = capsys.readouterr().out
    for n in (0, 1):
        assert json.loads((tmp_path / "two" / f"{n}-{model_dir.name}" / "errors.json").read_text()) == single
    assert (tmp_path / "two" / "comparison.md").read_text() == printed
    boundary = single["counts"]["boundary"]
    expected_cell = f"{boundary} ({single['percentages']['boundary']:.1f}%)"
    assert f"| boundary | {expected_cell} | {expected_cell} |" in printed


def validation_ece(model_dir, data, temperature: float, bins: int) -> dict[str, float]:
    """Each level's ECE of the model on `data` with its emissions divided by `temperature` (the oracle of the report's
    `validation_ece`)."""
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():  # emissions are linear in the classifier: dividing it divides them
        model.classifier.weight.div_(temperature)
        model.classifier.bias.div_(temperature)
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    return {level: summary["ece"] for level, summary in calibrate(ner, data, bins).items()}


def test_calibration_reports_ece_before_and_after_temperature(model_dir, klue_file, tmp_path, capsys):
    """A model made unsure by halving its emissions: the fit sharpens it again (T < 1) and, as that calibrates the
    validation data better at every level, the test data is reported with it too."""
    unsure = tmp_path / "unsure"
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():  # emissions halved: the classifier halved
        model.classifier.weight.div_(2.0)
        model.classifier.bias.div_(2.0)
    KoElectraCrfTokenClassificationPipeline(
        model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir)
    ).save_pretrained(unsure)
    run("calibration", unsure, "--test_file", klue_file, "--validation_file", klue_file, "--output_dir", tmp_path,
        "--device", "cpu", "--bins", 5)  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["num_bins"] == 5
    fitted = report["fitted_temperature"]
    steps = math.log2(fitted) * STEPS_PER_OCTAVE  # on the search's grid, inside its bounds
    assert steps == round(steps) and -SEARCH_OCTAVES * STEPS_PER_OCTAVE < steps < 0
    assert not report["temperature_at_search_bound"]
    data = load_klue_ner(test_file=klue_file)["test"]
    expected = {"T = 1": validation_ece(unsure, data, 1.0, 5), "fitted": validation_ece(unsure, data, fitted, 5)}
    for name, eces in expected.items():
        assert report["validation_ece"][name] == pytest.approx(eces)
    assert all(expected["fitted"][level] < expected["T = 1"][level] for level in expected["T = 1"])
    assert report["raised_validation_ece"] == [] and report["temperature"] == fitted
    for stage in ("before", "after"):
        for level in ("token", "entity", "entity_token_mean"):
            summary = report[stage][level]
            assert len(summary["bins"]) == 5 and sum(b["count"] for b in summary["bins"]) == summary["count"] > 0
            assert 0.0 <= summary["ece"] <= 1.0
        # The same predicted entities, scored two ways: same count and accuracy, different confidences.
        exact, mean = report[stage]["entity"], report[stage]["entity_token_mean"]
        assert exact["count"] == mean["count"] and exact["accuracy"] == mean["accuracy"]
        assert exact["mean_confidence"] != mean["mean_confidence"]
    assert printed[0].startswith("T = 1: token ECE ") and len(printed) == 2
    assert printed[1].startswith(f"T = {fitted:.3g} (fitted on --validation_file): token ECE ")
    # Every tagged token of every sentence is scored (the tiny tokenizer has one token per character).
    assert report["before"]["token"]["count"] == sum(len(strip_entity_marks(m)[0].replace(" ", "")) for m in MARKED)
    assert_valid_png(tmp_path / "reliability_diagram.png")


def test_calibration_keeps_t_1_when_the_fitted_temperature_calibrates_validation_worse(
    model_dir, klue_file, tmp_path, capsys, monkeypatch
):
    """A fit at the lowest temperature searched (as a model that is right and unsure gets): said to be at the bound,
    and, as it makes the validation ECE worse, not applied."""
    lowest = 2.0**-SEARCH_OCTAVES
    data = load_klue_ner(test_file=klue_file)["test"]
    before, sharpened = validation_ece(model_dir, data, 1.0, 5), validation_ece(model_dir, data, lowest, 5)
    worse = [level for level in before if sharpened[level] > before[level]]
    assert worse, "precondition: the sharpest temperature calibrates this model worse"
    monkeypatch.setattr(calibration, "fit_temperature", lambda model, windows: (lowest, True))
    run("calibration", model_dir, "--test_file", klue_file, "--validation_file", klue_file, "--output_dir", tmp_path,
        "--device", "cpu", "--bins", 5)  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["temperature"] == 1.0 and "after" not in report and report["raised_validation_ece"] == worse
    fitted = f"the temperature fitted on --validation_file, T = {lowest:.3g},"
    assert printed[1] == f"{fitted} is at a bound of the search (2^-8 to 2^8): the fit may lie beyond it"
    changes = ", ".join(f"{level} {before[level]:.4f} -> {sharpened[level]:.4f}" for level in worse)
    assert printed[2] == f"{fitted} raises the validation ECE ({changes}): not applied, T = 1 kept"
    assert len(printed) == 3


def test_attention_draws_heatmaps_and_shares_by_layer(model_dir, tmp_path, capsys):
    run("attention", model_dir, "<김철수:PS>는 <서울:LC>에서 사과를 샀다.", "--layers", 0, -1, "--heads", 1,
        "--output_dir", tmp_path, "--device", "cpu")  # fmt: skip
    report = json.loads((tmp_path / "attention.json").read_text())
    assert report["text"] == "김철수는 서울에서 사과를 샀다." and report["entities_from"] == "marks"
    assert [report["tokens"][i] for i in report["entity_tokens"]] == ["김", "##철", "##수", "서", "##울"]
    shares = report["share_to_entities_by_layer_and_head"]
    assert len(shares) == 2 and all(len(layer) == 2 and all(0 < s < 1 for s in layer) for layer in shares)
    assert report["share_if_uniform"] == pytest.approx(5 / len(report["tokens"]))
    assert_valid_png(tmp_path / "attention_heatmaps.png")
    assert_valid_png(tmp_path / "attention_to_entities.png")
    line = refusal(capsys, "attention", model_dir, "김철수", "--heads", 2, "--output_dir", tmp_path, alone=False)
    assert line.startswith("koelectra-crf attention: error: the model has 2 layers and 2 heads")
    assert line.endswith("--layers takes -2 to 1, --heads 0 to 1")


def test_benchmark_writes_json_and_table(model_dir, tmp_path, capsys):
    sentences = tmp_path / "sentences.tsv"
    sentences.write_text("".join(f"id-{k}\t김철수는 서울에서 {k}개를 샀다.\n" for k in range(6)), encoding="utf-8")
    run("benchmark", model_dir, "--input", sentences, "--num_sentences", 4, "--batch_sizes", 1, 2,
        "--output_dir", tmp_path / "out")  # fmt: skip
    report = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert report["sentences"] == 4 and report["results"][0]["device"] == "cpu"
    for result in report["results"]:
        latency = result["latency_batch_1"]
        assert 0 < latency["p50_ms"] <= latency["p95_ms"]
        assert set(result["sentences_per_second"]) == {"1", "2"} and min(result["sentences_per_second"].values()) > 0
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| device | p50 ms (batch 1) | p95 ms (batch 1) | sent/s batch 1 | sent/s batch 2 |" in table
    assert table in capsys.readouterr().out


def test_pseudo_labels_of_a_labelled_file_are_scored_where_each_threshold_keeps_them(
    model_dir, klue_file, reference_pipeline, tmp_path, capsys
):
    gold = read_klue_tsv(klue_file)
    results = reference_pipeline([g["sentence"] for g in gold], aggregation_strategy="simple",
                                 return_sequence_probability=True)  # fmt: skip
    probabilities = sorted(result["sequence_probability"] for result in results)
    middle = len(gold) // 2  # halfway between two sentences' probabilities: no float rounding decides which is kept
    thresholds = [0.0, (probabilities[middle - 1] + probabilities[middle]) / 2, 1.1]
    assert probabilities[middle - 1] * 1.01 < probabilities[middle]
    run("pseudo-label", model_dir, "--input", klue_file, "--output", tmp_path / "pseudo.tsv", "--device", "cpu",
        "--thresholds", *thresholds)  # fmt: skip
    assert [r["guid"] for r in read_klue_tsv(tmp_path / "pseudo.tsv")] == [g["guid"] for g in gold]
    rows = json.loads((tmp_path / "pseudo.tsv.kept.json").read_text())
    assert rows == json.loads(capsys.readouterr().out.split("skipped (a tab or a mark in it)\n")[1])
    for row, threshold in zip(rows, thresholds, strict=True):
        kept = [(g, r) for g, r in zip(gold, results, strict=True) if r["sequence_probability"] >= threshold]
        assert (row["threshold"], row["kept"], row["kept_share"]) == (threshold, len(kept), len(kept) / len(gold))
        if not kept:
            assert "entity_f1" not in row
            continue
        predicted = [
            spans_to_char_tags(len(g["sentence"]), [(e["start"], e["end"], e["entity_group"]) for e in r["entities"]])
            for g, r in kept
        ]
        expected = klue_ner_metrics([g["ner_tags"] for g, _ in kept], predicted, [g["tokens"] for g, _ in kept])
        assert row["entity_f1"] == pytest.approx(expected["entity_f1"], nan_ok=True)
        assert row["char_f1"] == pytest.approx(expected["char_f1"])
    assert 0 < rows[1]["kept"] < rows[0]["kept"] == len(gold) and rows[2]["kept"] == 0

    (tmp_path / "raw.txt").write_text("김철수는 서울에서\n", encoding="utf-8")
    line = refusal(capsys, "pseudo-label", model_dir, "--input", tmp_path / "raw.txt", "--output", tmp_path / "raw.tsv",
                   "--thresholds", 0.5)  # fmt: skip
    assert "not a labelled KLUE TSV file" in line


def test_pseudo_label_writes_klue_tsv_that_reads_back_with_confidences(
    model_dir, klue_file, reference_pipeline, tmp_path, capsys
):
    texts = [strip_entity_marks(m)[0] for m in MARKED]
    lines = [f"id-{i}\t{text}" for i, text in enumerate(texts)] + ["", texts[0], "a\tb\tc", "<서울:LC>에서"]
    (tmp_path / "raw.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pseudo = tmp_path / "pseudo" / "pseudo.tsv"  # its folder is made
    run("pseudo-label", model_dir, "--input", tmp_path / "raw.tsv", "--output", pseudo, "--device", "cpu",
        "--batch_size", 2)  # fmt: skip
    first = pseudo.read_bytes()
    run("pseudo-label", model_dir, "--input", tmp_path / "raw.tsv", "--output", pseudo, "--device", "cpu")
    assert pseudo.read_bytes() == first  # an earlier pseudo-labelled file is replaced
    gold = tmp_path / "gold.tsv"  # anything else is not, nor the input
    gold.write_bytes(klue_file.read_bytes())
    for source, reason in ((tmp_path / "raw.tsv", "exists and is not a pseudo-labelled file"), (gold, "is the input")):
        line = refusal(capsys, "pseudo-label", model_dir, "--input", source, "--output", gold, "--device", "cpu")
        assert reason in line
    assert gold.read_bytes() == klue_file.read_bytes()
    records = read_klue_tsv(pseudo)
    kept = [*texts, texts[0]]  # blank line dropped; a tab inside the text, or a mark, cannot be written as KLUE TSV
    assert [r["guid"] for r in records] == [f"id-{i}" for i in range(len(texts))] + [f"line-{len(texts) + 2}"]
    assert [r["sentence"] for r in records] == kept
    expected = reference_pipeline(kept, aggregation_strategy="simple", return_sequence_probability=True)
    confidences = [json.loads(line) for line in confidence_path(pseudo).read_text().splitlines()]
    for record, result, confidence in zip(records, expected, confidences, strict=True):
        spans = [(e["start"], e["end"], e["entity_group"]) for e in result["entities"]]
        assert record["ner_tags"] == spans_to_char_tags(len(record["sentence"]), spans)
        assert confidence["guid"] == record["guid"]
        # (batches of 2 against one batch: the same numbers up to float32 rounding)
        assert confidence["sequence_probability"] == pytest.approx(result["sequence_probability"], rel=1e-4)
        lowest = min((e["score"] for e in result["entities"]), default=1.0)
        assert confidence["min_entity_probability"] == pytest.approx(lowest, rel=1e-4)

    # Self-training reads it back: the sentences at or above a confidence threshold, labels as written.
    for key in CONFIDENCES:
        threshold = sorted(c[key] for c in confidences)[len(confidences) // 2]
        kept = load_pseudo_labelled(pseudo, threshold, key)
        assert kept["guid"] == [c["guid"] for c in confidences if c[key] >= threshold]
        written = [r["ner_tags"] for r, c in zip(records, confidences, strict=True) if c[key] >= threshold]
        assert [example_tag_names(example, KLUE_LABELS) for example in kept] == written


def test_evaluate_under_spacing_noise_writes_a_robustness_table(model_dir, klue_file, reference_pipeline, tmp_path):
    common = ["--test_file", klue_file, "--device", "cpu", "--batch_size", 2]
    run("evaluate", model_dir, *common, "--output_dir", tmp_path / "plain")
    run("evaluate", model_dir, *common, "--output_dir", tmp_path / "spacing", "--spacing", "as-is", "noisy", "none",
        "--spacing_remove_rate", 0.5, "--spacing_insert_rate", 0.2, "--spacing_seed", 3)  # fmt: skip

    robustness = json.loads((tmp_path / "spacing/robustness.json").read_text())
    assert {key: robustness[key] for key in ("remove_rate", "insert_rate", "seed", "respace")} == {
        "remove_rate": 0.5, "insert_rate": 0.2, "seed": 3, "respace": False,
    }  # fmt: skip
    assert list(robustness["conditions"]) == ["as-is", "noisy", "none"]
    assert robustness["conditions"]["as-is"] == json.loads((tmp_path / "plain/metrics.json").read_text())
    sentences = read_klue_tsv(klue_file)
    for condition, metrics in robustness["conditions"].items():
        assert json.loads((tmp_path / "spacing" / condition / "metrics.json").read_text()) == metrics
        records = [json.loads(line) for line in (tmp_path / "spacing" / condition / "predictions.jsonl").open()]
        # The texts tagged are the sentences with their spacing changed, nothing else; scored against their gold.
        texts = [record["text"] for record in records]
        assert [text.replace(" ", "") for text in texts] == [s["sentence"].replace(" ", "") for s in sentences]
        predicted = [
            spans_to_char_tags(len(text), [(e["start"], e["end"], e["entity_group"]) for e in entities])
            for text, entities in zip(texts, reference_pipeline(texts, aggregation_strategy="simple"), strict=True)
        ]
        gold = [spans_to_char_tags(len(r["text"]), [(g["start"], g["end"], g["entity_group"]) for g in r["gold"]])
                for r in records]  # fmt: skip
        assert klue_ner_metrics(gold, predicted, [list(text) for text in texts]) == metrics
        if condition == "none":
            assert not any(" " in text for text in texts)
    noisy = [json.loads(line)["text"] for line in (tmp_path / "spacing/noisy/predictions.jsonl").open()]
    assert noisy != [s["sentence"] for s in sentences]
    table = (tmp_path / "spacing/robustness.md").read_text()
    assert f"| noisy | {robustness['conditions']['noisy']['entity_f1']:.2f} |" in table


def test_spacing_rates_outside_0_to_1_are_refused_before_any_work(capsys):
    for flag, value in (("--spacing_remove_rate", "1.5"), ("--spacing_insert_rate", "a")):
        with pytest.raises(SystemExit):
            run("evaluate", "no-such-model", "--spacing", "noisy", flag, value)
        assert f"{flag}: must be a number from 0 to 1, got '{value}'" in capsys.readouterr().err


def test_predict_respaces_with_kiwi_when_asked(model_dir, reference_pipeline, capsys):
    texts = ["김철수는서울에서사과를샀다.", "이재용회장이찾았다."]
    run("predict", model_dir, *texts, "--device", "cpu", "--respace")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = reference_pipeline(texts, respace=True, aggregation_strategy="simple")
    assert [line["text"] for line in lines] == texts
    for line, entities in zip(lines, expected, strict=True):
        assert [{**e, "score": 0} for e in line["entities"]] == [{**e, "score": 0} for e in entities]
        assert all(e["word"] == line["text"][e["start"] : e["end"]] for e in line["entities"])
    assert expected != reference_pipeline(texts, aggregation_strategy="simple")  # precondition: re-spacing matters


def test_a_missing_optional_package_is_a_one_line_refusal_saying_what_to_install(model_dir, capsys, monkeypatch):
    from koelectra_crf import alignment

    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # as if not installed: importing it raises ImportError
    alignment._kiwi.cache_clear()
    try:
        line = refusal(capsys, "predict", model_dir, "김철수는서울에서", "--device", "cpu", "--respace", alone=False)
    finally:
        alignment._kiwi.cache_clear()
    assert line.startswith("koelectra-crf predict: error: ") and line.endswith("pip install kiwipiepy")
    monkeypatch.setitem(sys.modules, "broken_module", None)
    with pytest.raises(ImportError):  # any other ImportError keeps its traceback
        with refusing("koelectra-crf predict"):
            import broken_module  # noqa: F401


def test_every_refusal_is_one_line_naming_the_problem_and_exit_status_2(model_dir, klue_file, tmp_path, capsys):
    """Input a command refuses is one line on stderr that names what is wrong and what to do, exit status 2, no
    traceback; before the model loads where the input can be checked without it."""
    three_columns = tmp_path / "three-columns.tsv"
    three_columns.write_text("## g1\t김철수\n김\tB-PS\n철\tI-PS\textra\n수\tI-PS\n", encoding="utf-8")
    export = tmp_path / "export"
    (export / "notes").mkdir(parents=True)
    refusals = {
        ("evaluate", model_dir, "--test_file", tmp_path / "missing.tsv"): (
            f"koelectra-crf evaluate: error: --test_file {tmp_path / 'missing.tsv'}: does not exist"
        ),
        ("evaluate", model_dir, "--test_file", three_columns): (
            f"{three_columns}:3: expected 2 tab-separated columns 'CHAR<tab>TAG', found 3"
        ),
        ("evaluate", model_dir, "--test_file", klue_file, "--batch_size", "eight"): (
            "argument --batch_size: invalid int value: 'eight' (`koelectra-crf evaluate --help` lists the options)"
        ),
        ("evaluate", model_dir, "--test_file", klue_file, "--device", "gpu"): "argument --device: 'gpu' is not a",
        ("errors", tmp_path / "no-model", "--test_file", klue_file): f"{tmp_path / 'no-model'} is no folder here, nor",
        ("calibration", tmp_path, "--test_file", klue_file): "is a folder without config.json, not a model folder",
        ("export", model_dir, "--output", model_dir): (
            f"--output {model_dir} is the model's own folder: an export writes config.json and the tokenizer over "
            f"the model's; choose a new folder (e.g. --output {model_dir}-onnx)"
        ),
        ("export", model_dir, "--output", export): f"--output {export} is not empty and holds no earlier export",
        ("predict", model_dir, "--input", tmp_path / "texts.txt"): f"--input {tmp_path / 'texts.txt'}: does not exist",
        (
            "predict",
            model_dir,
            "김",
            "--lexicon",
            tmp_path / "l.tsv",
        ): f"--lexicon {tmp_path / 'l.tsv'}: does not exist",
        ("predict", model_dir, "김", "--top_k", "0"): "argument --top_k: must be a positive integer, got '0'",
        ("ablation", "--output_dir", tmp_path, "--config", tmp_path / "preset.json"): "--config",
    }
    for args, expected in refusals.items():
        line = refusal(capsys, *args)
        assert line.startswith(f"koelectra-crf {args[0]}: error: ") and expected in line, (args, line)
    assert sorted(path.name for path in export.iterdir()) == ["notes"]


def test_a_refusal_shows_its_traceback_with_the_debug_variable(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(UsageError, match="is the model's own folder"):
        run("export", model_dir, "--output", model_dir)


def test_evaluate_offline_without_test_file_says_to_give_one_at_once(model_dir, tmp_path, capsys, monkeypatch):
    """Offline (the tests' HF_DATASETS_OFFLINE=1), with nothing cached: no retries, the flag that gives the data."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    line = refusal(capsys, "evaluate", model_dir, "--output_dir", tmp_path / "out")
    assert time.monotonic() - start < 10
    assert line == (
        "koelectra-crf evaluate: error: klue/ner is not in the local cache and the Hub is offline (HF_HUB_OFFLINE or "
        "HF_DATASETS_OFFLINE): give the data as KLUE NER TSV files with --test_file"
    )
    assert not (tmp_path / "out").exists()


def test_the_console_command_refuses_in_one_line_of_stderr(model_dir, tmp_path):
    """The installed entry point (`python -m koelectra_crf`), as a user runs it: nothing else on stderr."""
    completed = run_command(
        [sys.executable, "-m", "koelectra_crf", "evaluate", model_dir, "--test_file", tmp_path / "missing.tsv"],
        status=2, timeout=300,
    )  # fmt: skip
    expected = f"--test_file {tmp_path / 'missing.tsv'}: does not exist; give the path of an existing file"
    assert completed.stderr == f"koelectra-crf evaluate: error: {expected}\n"
    assert completed.stdout == ""


# Any labelled data: convert, evaluate in every format, predict what training reads


@pytest.fixture(scope="module")
def mixed_examples(klue_file):
    """The test file's sentences and the first 30 of KLUE's validation file."""
    return formats.read_examples(klue_file) + formats.read_examples(shared_path(KLUE_VALID))[:30]


def test_convert_writes_every_format_that_reads_back_the_same(klue_file, tmp_path, capsys):
    expected = formats.read_examples(klue_file)
    for name, options in [
        ("a.jsonl", []),
        ("a.doccano.jsonl", ["--output_format", "doccano"]),
        ("a.json", []),
        ("a.conll", ["--output_tag_scheme", "bioes"]),
        ("a.chars.conll", ["--output_format", "conll-char", "--output_tag_scheme", "iob1"]),
        ("a.tsv", []),
    ]:
        run("convert", klue_file, tmp_path / name, *options)
        assert capsys.readouterr().out == f"{len(expected)} examples written to {tmp_path / name}\n"
        read_as = "conll-char" if "chars" in name else "auto"
        assert formats.read_examples(tmp_path / name, read_as) == expected, name
    run("convert", tmp_path / "a.chars.conll", tmp_path / "b.jsonl", "--input_format", "conll-char",
        "--tag_scheme", "iob1")  # fmt: skip
    assert formats.read_examples(tmp_path / "b.jsonl") == expected


def test_convert_refuses_bad_data_in_one_line_naming_file_and_line(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "서울", "label": [[0, 2, "LC"]]}\n{"text": "부산", "label": [[0, 5, "LC"]]}\n')
    line = refusal(capsys, "convert", source, tmp_path / "out.conll")
    assert f"{source}:2" in line and "outside the text" in line
    assert not (tmp_path / "out.conll").exists()
    assert "cannot tell the output format" in refusal(capsys, "convert", source, tmp_path / "out.xyz")  # before reading


def test_convert_keeps_only_the_types_asked_for(klue_file, tmp_path, capsys):
    run("convert", klue_file, tmp_path / "fewer.tsv", "--keep_types", "PS", "OG")
    kept = formats.read_examples(tmp_path / "fewer.tsv")
    original = formats.read_examples(klue_file)
    assert [example["text"] for example in kept] == [example["text"] for example in original]
    for before, after in zip(original, kept, strict=True):
        assert after["entities"] == [entity for entity in before["entities"] if entity[2] in ("PS", "OG")]
    assert formats.entity_types(kept) == ["PS", "OG"]
    line = refusal(capsys, "convert", klue_file, tmp_path / "none.tsv", "--keep_types", "PS", "PRD")
    assert line.endswith("no entity of type PRD in the data (its types: ['PS', 'LC', 'OG', 'DT', 'TI', 'QT'])")
    assert not (tmp_path / "none.tsv").exists()


def test_convert_never_overwrites_a_file_unless_told(klue_file, tmp_path, capsys):
    target = tmp_path / "out.jsonl"
    target.write_text("mine\n", encoding="utf-8")
    line = refusal(capsys, "convert", klue_file, target)
    assert line.endswith(f"OUT {target} exists: give --overwrite to replace it, or another path")
    assert target.read_text(encoding="utf-8") == "mine\n"
    run("convert", klue_file, target, "--overwrite")
    assert formats.read_examples(target) == formats.read_examples(klue_file)


def test_evaluating_the_same_sentences_in_every_format_gives_identical_metrics(
    model_dir, mixed_examples, tmp_path, capsys
):
    klue = tmp_path / "data.tsv"
    formats.write_examples(mixed_examples, klue)
    files = {"klue": klue}
    for name, data_format in [("jsonl", "jsonl"), ("doccano", "doccano"), ("label-studio", "label-studio"),
                              ("conll", "conll"), ("conll-char", "conll-char")]:  # fmt: skip
        files[name] = tmp_path / f"data-{name}{SUFFIXES.get(name, '.jsonl')}"
        formats.convert(klue, files[name], output_format=data_format)
    formats.examples_to_dataset(mixed_examples).save_to_disk(tmp_path / "dataset")
    metrics = {}
    for name, path in files.items():
        flags = ["--data_format", "conll-char"] if name == "conll-char" else []
        run("evaluate", model_dir, "--test_file", path, *flags, "--output_dir", tmp_path / name, "--device", "cpu")
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    run("evaluate", model_dir, "--dataset_name", tmp_path / "dataset", "--split", "train", "--output_dir",
        tmp_path / "datasets", "--device", "cpu")  # fmt: skip
    metrics["datasets"] = json.loads((tmp_path / "datasets" / "metrics.json").read_text())
    assert metrics["klue"]["entity_f1"] > 0 and metrics["klue"]["PS_support"] > 0
    assert all(scores == metrics["klue"] for scores in metrics.values()), metrics
    # errors and calibration read the same data the same way
    run(
        "errors",
        model_dir,
        "--test_file",
        files["label-studio"],
        "--output_dir",
        tmp_path / "errors",
        "--device",
        "cpu",
    )
    run("errors", model_dir, "--test_file", klue, "--output_dir", tmp_path / "errors-klue", "--device", "cpu")
    assert (tmp_path / "errors" / "errors.json").read_text() == (tmp_path / "errors-klue" / "errors.json").read_text()


def test_evaluating_data_of_a_type_the_model_lacks_is_refused_naming_it(model_dir, mixed_examples, tmp_path, capsys):
    renamed = [
        {**e, "entities": [(s, t, "PRD" if k == "OG" else k) for s, t, k in e["entities"]]} for e in mixed_examples
    ]
    formats.write_examples(renamed, tmp_path / "prd.jsonl")
    line = refusal(capsys, "evaluate", model_dir, "--test_file", tmp_path / "prd.jsonl", "--device", "cpu", alone=False)
    assert "['PRD']" in line and "['PS', 'LC', 'OG', 'DT', 'TI', 'QT']" in line


@pytest.mark.parametrize("output_format", formats.WRITE_FORMATS)
def test_predicted_annotations_read_back_as_training_data(
    model_dir, reference_pipeline, tmp_path, capsys, output_format
):
    texts = [strip_entity_marks(marked)[0] for marked in MARKED]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    output = tmp_path / f"out{SUFFIXES.get(output_format, '.jsonl')}"
    run(
        "predict", model_dir, "--input", source, "--output", output, "--output_format", output_format, "--device", "cpu"
    )
    expected = [
        sorted((e["start"], e["end"], e["entity_group"]) for e in entities)
        for entities in reference_pipeline(texts, aggregation_strategy="simple")
    ]
    assert any(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Label Studio's pre-annotations are read, and said so
        examples = formats.read_examples(output, "conll-char" if output_format == "conll-char" else "auto")
    assert [e["id"] for e in examples] == [f"line-{number}" for number in range(1, len(texts) + 1)]
    assert [e["text"] for e in examples] == texts
    assert [e["entities"] for e in examples] == expected
    if output_format == "jsonl":
        return  # a jsonl --output is resumed by a second run (tested above), not written again
    # A second run would lose what the user corrected in the file: refused, unless told
    flags = ["--input", source, "--output", output, "--output_format", output_format]
    line = refusal(capsys, "predict", model_dir, *flags)
    assert line.endswith(f"--output {output} exists: give --overwrite to replace it, or another path")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (as above)
        assert formats.read_examples(output, "conll-char" if output_format == "conll-char" else "auto") == examples


def test_predict_output_format_needs_an_output_file(model_dir, capsys):
    assert "--output_format conll writes a file" in refusal(
        capsys, "predict", model_dir, "텍스트", "--output_format", "conll"
    )


def test_evaluate_report_follows_the_model_types(tmp_path):
    """A model of other types (PRD, PS): metrics, report and confusion matrix are over its labels, scored as KLUE's."""
    examples = [
        formats.make_example(0, "갤럭시 폰을 김철수가 샀다", [(0, 5, "PRD"), (7, 10, "PS")], "test"),
        formats.make_example(1, "김영희는 아이폰을 샀다", [(0, 3, "PS"), (5, 8, "PRD")], "test"),
    ]
    formats.write_examples(examples, tmp_path / "data.jsonl", "doccano")
    labels = formats.bio_labels(["PS", "PRD"])
    tokenizer = character_tokenizer(tmp_path / "tokenizer", "".join(e["text"] for e in examples))
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, labels=labels, max_length=32, stride=8)
    KoElectraCrfTokenClassificationPipeline(model=model.eval(), tokenizer=tokenizer).save_pretrained(tmp_path / "m")
    run("evaluate", tmp_path / "m", "--test_file", tmp_path / "data.jsonl", "--output_dir", tmp_path / "eval",
        "--device", "cpu")  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    predicted = [
        spans_to_char_tags(len(e["text"]), [(p["start"], p["end"], p["entity_group"]) for p in entities])
        for e, entities in zip(examples, ner([e["text"] for e in examples], aggregation_strategy="simple"), strict=True)
    ]
    gold = [spans_to_char_tags(len(e["text"]), e["entities"]) for e in examples]
    assert metrics == klue_ner_metrics(gold, predicted, [list(e["text"]) for e in examples], labels)
    assert metrics["PRD_support"] == 2 and "OG_f1" not in metrics
    assert "PRD" in (tmp_path / "eval" / "classification_report.txt").read_text()
    assert json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())["labels"] == labels


# A command line that starts at once: each command imports only what it uses

RUN_AND_LIST_IMPORTS = """
import json, sys
from koelectra_crf.cli import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print(json.dumps(sorted(name for name in json.loads(sys.argv[2]) if name in sys.modules)))
"""
HEAVY = ["torch", "transformers", "datasets", "accelerate", "onnx", "onnxruntime", "matplotlib", "hub_card",
         "transformers.trainer", "koelectra_crf.train", "koelectra_crf.trainer"]  # fmt: skip


def imported_by(arguments: list, tmp_path) -> tuple[list[str], str]:
    """Which of `HEAVY` a fresh process imports to run `koelectra-crf ARGUMENTS`, and what it printed."""
    completed = run_command(
        [sys.executable, "-c", RUN_AND_LIST_IMPORTS, json.dumps([str(a) for a in arguments]), json.dumps(HEAVY)],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    *printed, imported = completed.stdout.splitlines()
    return json.loads(imported), "\n".join(printed)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_transformers(command, tmp_path):
    imported, printed = imported_by(["--help"] if command is None else [command, "--help"], tmp_path)
    assert printed.startswith(f"usage: koelectra-crf{'' if command is None else ' ' + command}")
    assert imported == []


def test_predict_imports_neither_the_training_side_nor_datasets_nor_onnx(model_dir, tmp_path):
    imported, printed = imported_by(["predict", model_dir, "김철수는 서울에서", "--device", "cpu"], tmp_path)
    assert json.loads(printed)["text"] == "김철수는 서울에서"
    # accelerate: transformers' own model loading imports it
    assert imported == ["accelerate", "torch", "transformers"]


def test_evaluation_and_training_never_import_the_onnx_runtime(model_dir, klue_file, tmp_path):
    arguments = ["evaluate", model_dir, "--test_file", klue_file, "--device", "cpu", "--output_dir", tmp_path / "out"]
    imported, _ = imported_by(arguments, tmp_path)
    assert "datasets" in imported and not {"onnx", "onnxruntime"} & set(imported)
    script = "import sys, koelectra_crf.train; print(sorted({'onnx', 'onnxruntime'} & set(sys.modules)))"
    completed = run_command([sys.executable, "-c", script], timeout=300)
    assert completed.stdout.splitlines()[-1] == "[]"


def test_importing_the_package_imports_nothing_until_a_name_is_used():
    script = """
import json, sys
import koelectra_crf
from koelectra_crf import options
before = sorted({"torch", "transformers"} & set(sys.modules))
config = koelectra_crf.KoElectraCrfConfig
from transformers import AutoConfig
print(json.dumps([before, AutoConfig.for_model("koelectra-crf").__class__ is config]))
"""
    completed = run_command([sys.executable, "-c", script], timeout=300)
    assert json.loads(completed.stdout.splitlines()[-1]) == [[], True]


def test_the_ablation_studies_the_command_offers_are_the_studies():
    from koelectra_crf.ablation import STUDIES
    from koelectra_crf.options import ABLATION_STUDIES

    assert tuple(STUDIES) == ABLATION_STUDIES
