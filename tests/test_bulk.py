"""Bulk tagging (`koelectra-crf predict MODEL --input FILE --output FILE.jsonl`): input formats, order, resuming,
and several processes writing the output of one."""

import json
import os
import re
import sys
import tracemalloc

import pytest
import torch
from processes import run_command
from test_cli import refusal
from tiny import TINY_TEXT, character_tokenizer, tiny_model

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.bulk import output_line, resume, tag_file
from koelectra_crf.cli import main
from koelectra_crf.data import strip_entity_marks
from koelectra_crf.inputs import read_records
from koelectra_crf.pseudo_label import klue_block

MARKED = [
    "<김철수:PS>는 <서울:LC>에서 <2024년 3월 1일:DT> <오전 9시:TI>에 <삼성전자:OG> 사과 <3개:QT>를 샀다.",
    "<이재용:PS> 회장이 <서울 강남구:LC> 본사를 찾았다.",
    "오늘은 날씨가 맑고 바람이 분다.",
    "<ABC:OG> 주식 <123:QT>주를 <李舜臣:PS>이 샀다 😀",
    "<삼성전자:OG>는 <3월:DT>에 <서울:LC>에서 <이재용:PS> 회장과 만났다. " * 4,  # several windows
] * 3
TEXTS = [strip_entity_marks(marked)[0] for marked in MARKED]
SENTENCE_IDS = [f"klue-ner-v1_train_{k:05d}_wikitree" for k in range(len(TEXTS))]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model (windows of 32 tokens) whose random head predicts entities now and then, and its pipeline."""
    folder = tmp_path_factory.mktemp("model")
    tokenizer = character_tokenizer(folder / "vocab", texts=TEXTS + [TINY_TEXT])
    torch.manual_seed(0)
    model = tiny_model(tokenizer.vocab_size, max_length=32, stride=8)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.linspace(1.0, 0.0, len(KLUE_LABELS)))
    ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)
    ner.save_pretrained(folder)
    return folder, ner


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The same texts as text lines (with a blank line), JSONL, a KLUE TSV file and `<id>\\t<sentence>` lines (as
    KLUE's raw `klue-ner-train-sentences.tsv`)."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "texts.txt").write_text("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n", encoding="utf-8")
    lines = [f"{sentence_id}\t{text}\n" for sentence_id, text in zip(SENTENCE_IDS, TEXTS, strict=True)]
    (folder / "klue-ner-train-sentences.tsv").write_text("".join(lines), encoding="utf-8")
    records = [json.dumps({"id": k, "text": text}, ensure_ascii=False) for k, text in enumerate(TEXTS)]
    (folder / "texts.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    blocks = [klue_block(f"test-{k}", *strip_entity_marks(marked)) for k, marked in enumerate(MARKED)]
    (folder / "klue.tsv").write_text("## 토큰, 레이블 구분자 : \\t\n" + "".join(blocks), encoding="utf-8")
    return folder


def predict(*args) -> None:
    main(["predict", *map(str, args), "--device", "cpu"])


def test_every_input_format_gives_one_line_per_text_in_order_with_its_id(saved, inputs, tmp_path):
    folder, ner = saved
    expected = ner(TEXTS, aggregation_strategy="simple", batch_size=4)
    assert sum(map(len, expected)) > 0
    ids = {
        "texts.txt": [f"line-{number}" for number in (1, 2, *range(4, len(TEXTS) + 2))],  # line 3 is blank
        "texts.jsonl": list(range(len(TEXTS))),
        "klue.tsv": [f"test-{k}" for k in range(len(TEXTS))],
        "klue-ner-train-sentences.tsv": SENTENCE_IDS,
    }
    outputs = []
    for name, name_ids in ids.items():
        assert [tuple(record) for record in read_records(inputs / name)] == list(zip(name_ids, TEXTS, strict=True))
        predict(folder, "--input", inputs / name, "--output", tmp_path / f"{name}.jsonl", "--batch_size", 4)
        lines = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [list(line) for line in lines] == [["id", "text", "entities"]] * len(TEXTS)
        assert [line["id"] for line in lines] == name_ids
        assert [line["text"] for line in lines] == TEXTS
        assert [line["entities"] for line in lines] == json.loads(json.dumps(expected))
        outputs.append([line | {"id": None} for line in lines])
    assert all(output == outputs[0] for output in outputs)
    with pytest.raises(ValueError, match=r'texts.txt:1: expected a JSON object with a "text" string'):
        list(read_records(inputs / "texts.txt", "jsonl"))


def test_id_and_sentence_lines_tag_the_sentence_and_write_the_id(saved, inputs, tmp_path, capsys):
    """`<id>\\t<sentence>` lines (KLUE's raw sentence file) are told by a tab in the first line whatever the file's
    name: the sentence alone is tagged, its id written beside it, printed or to a file; `--input_format text` tags
    each whole line instead."""
    folder, ner = saved
    source = tmp_path / "sentences.txt"
    source.write_bytes((inputs / "klue-ner-train-sentences.tsv").read_bytes())
    expected = json.loads(json.dumps(ner(TEXTS, aggregation_strategy="simple", batch_size=4)))
    predict(folder, "--input", source, "--output", tmp_path / "out.jsonl", "--batch_size", 4)
    capsys.readouterr()
    predict(folder, "--input", source, "--batch_size", 4)
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in printed.splitlines()]
    assert [(line["id"], line["text"], line["entities"]) for line in lines] == list(
        zip(SENTENCE_IDS, TEXTS, expected, strict=True)
    )
    predict(folder, "--input", source, "--input_format", "text", "--batch_size", 4)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["id"], line["text"]) for line in lines] == [
        (f"line-{number}", f"{sentence_id}\t{text}")
        for number, (sentence_id, text) in enumerate(zip(SENTENCE_IDS, TEXTS, strict=True), start=1)
    ]


def test_a_rerun_continues_after_the_last_complete_line(saved, inputs, tmp_path, capsys):
    folder, _ = saved
    complete = tmp_path / "outputs" / "complete.jsonl"  # its folder is made
    predict(folder, "--input", inputs / "texts.txt", "--output", complete, "--batch_size", 1)
    reference = complete.read_bytes()
    lines = reference.splitlines(keepends=True)

    stopped = tmp_path / "stopped.jsonl"  # as if stopped while writing line 4
    stopped.write_bytes(b"".join(lines[:3]) + lines[3][:10])
    assert resume(stopped, read_records(inputs / "texts.txt"), truncate=False) == 3
    predict(folder, "--input", inputs / "texts.txt", "--output", stopped, "--batch_size", 1)
    assert stopped.read_bytes() == reference
    predict(folder, "--input", inputs / "texts.txt", "--output", stopped, "--batch_size", 1)  # nothing left to do
    assert stopped.read_bytes() == reference

    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(TEXTS)) + "\n", encoding="utf-8")
    refused = refusal(capsys, "predict", folder, "--input", other, "--output", stopped, alone=False)
    assert refused.endswith(f"{stopped}:1: its text is not the input's text 1: another input's output?")
    refused = refusal(capsys, "predict", folder, "--input", inputs / "texts.jsonl", "--output", stopped, alone=False)
    assert refused.endswith(f"{stopped}:1: its id 'line-1' is not the input's id 0 of text 1: another input's output?")
    without_ids = tmp_path / "without-ids.jsonl"  # as an earlier koelectra-crf wrote it: refused, left as it was
    without_ids.write_text(json.dumps({"text": TEXTS[0], "entities": []}) + "\n", encoding="utf-8")
    refused = refusal(capsys, "predict", folder, "--input", inputs / "texts.txt", "--output", without_ids, alone=False)
    assert refused.endswith(f'{without_ids}:1: an output line without "id", written by an earlier koelectra-crf: tag '
                            "into a new --output")  # fmt: skip
    assert json.loads(without_ids.read_text(encoding="utf-8")) == {"text": TEXTS[0], "entities": []}
    jsonl = (inputs / "texts.jsonl").read_bytes()
    refused = refusal(capsys, "predict", folder, "--input", inputs / "texts.jsonl", "--output", inputs / "texts.jsonl",
                      alone=False)  # fmt: skip
    assert refused.endswith(f"--output {inputs / 'texts.jsonl'} is the input file: choose another --output")
    assert (inputs / "texts.jsonl").read_bytes() == jsonl
    notes = tmp_path / "notes.txt"  # not an output of predict (a copy of the JSONL input, say): refused, left as it was
    for content in (b"my notes\n", b'["a list"]\n', b"\xff\n", jsonl):
        notes.write_bytes(content + b"half a line")
        refused = refusal(capsys, "predict", folder, "--input", inputs / "texts.txt", "--output", notes, alone=False)
        assert re.fullmatch(rf"koelectra-crf predict: error: {notes}:1: not an output line .*another file\?", refused)
        assert notes.read_bytes() == content + b"half a line"


def test_a_rerun_with_top_k_resumes_its_analyses(saved, inputs, tmp_path):
    folder, _ = saved
    output = tmp_path / "analyses.jsonl"
    arguments = ["--input", inputs / "texts.txt", "--output", output, "--top_k", 2, "--batch_size", 1]
    predict(folder, *arguments)
    written = output.read_bytes()
    lines = [json.loads(line) for line in written.decode("utf-8").splitlines()]
    assert [list(line) for line in lines] == [["id", "text", "analyses"]] * len(TEXTS)
    output.write_bytes(written[: len(written) // 2])  # as if stopped halfway
    predict(folder, *arguments)
    assert output.read_bytes() == written


def test_lone_surrogates_of_a_jsonl_input_are_tagged_and_written_back_as_escapes(saved, tmp_path, capsys):
    """A JSON `\\ud800` escape is a lone surrogate in Python, which UTF-8 cannot hold: the output line escapes it
    again (valid UTF-8, the input's text when read back), the entities are the pipeline's, a rerun resumes, and
    printing (no `--output`) gives the same lines."""
    folder, ner = saved
    texts = ["김철수\ud800는 서울에서 2024년 3월 1일\udfff 만났다.", TEXTS[0]]
    source = tmp_path / "escaped.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    assert "\\ud800" in source.read_text(encoding="utf-8")
    output = tmp_path / "out.jsonl"
    predict(folder, "--input", source, "--output", output, "--batch_size", 1)
    written = output.read_bytes()
    lines = [json.loads(line) for line in written.decode("utf-8").splitlines()]
    assert [line["text"] for line in lines] == texts
    expected = [ner(text, aggregation_strategy="simple") for text in texts]
    assert sum(map(len, expected)) > 0
    assert [[{**e, "score": None} for e in line["entities"]] for line in lines] == [
        [{**e, "score": None} for e in entities] for entities in expected
    ]
    assert [e["score"] for line in lines for e in line["entities"]] == pytest.approx(
        [e["score"] for entities in expected for e in entities], abs=1e-5
    )
    predict(folder, "--input", source, "--output", output)
    assert output.read_bytes() == written
    capsys.readouterr()
    predict(folder, "--input", source, "--batch_size", 1)
    assert capsys.readouterr().out.encode("utf-8") == written  # strict UTF-8: no raw surrogate printed


def test_lines_break_only_at_line_ends(saved, tmp_path):
    """U+2028, U+2029 and U+0085 are line breaks to `str.splitlines` but characters of a text line, and a JSON string
    may hold them unescaped: each text keeps them, gets one output line, and a rerun reads that output back."""
    folder, ner = saved
    texts = ["김철수는\u2028서울에서 만났다.", "삼성전자\u2029주식\x85 3개", TEXTS[0]]
    for name, content in [
        ("texts.txt", "\r\n".join(texts) + "\r\n"),
        ("texts.jsonl", "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)),
    ]:
        (tmp_path / name).write_text(content, encoding="utf-8", newline="")
        assert "\u2028" in (tmp_path / name).read_text(encoding="utf-8")
        assert [record.text for record in read_records(tmp_path / name)] == texts
        output = tmp_path / f"{name}.out.jsonl"
        predict(folder, "--input", tmp_path / name, "--output", output, "--batch_size", 1)
        written = output.read_bytes()
        assert [json.loads(line)["text"] for line in written.split(b"\n")[:-1]] == texts
        assert resume(output, read_records(tmp_path / name), truncate=False) == len(texts)
        predict(folder, "--input", tmp_path / name, "--output", output)
        assert output.read_bytes() == written


def test_memory_does_not_grow_with_the_input(tmp_path):
    """Tagging a 100,000-line file holds a few batches of it, not the file: peak Python allocations stay under a
    tenth of what its texts take, on the first run and on a rerun that checks its output."""
    line = "삼성전자는 3월에 서울에서 이재용 회장과 만났다."
    source = tmp_path / "big.txt"
    source.write_text((line + "\n") * 100_000, encoding="utf-8")
    whole = sys.getsizeof(line) * 100_000  # the texts as a list of strings, without the list

    def tag_nothing(texts, batch_size, aggregation_strategy):  # the pipeline's streaming call, minus the model
        return ([] for _ in texts)

    output = tmp_path / "big.jsonl"
    for _ in range(2):
        tracemalloc.start()
        assert tag_file(tag_nothing, source, output, batch_size=8) == 100_000
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < whole / 10, (peak, whole)
    assert output.read_text(encoding="utf-8") == "".join(output_line(f"line-{n}", line, []) for n in range(1, 100_001))


def test_printing_without_output_reads_the_same_formats(saved, inputs, capsys):
    folder, _ = saved
    predict(folder, "--input", inputs / "klue.tsv", "--batch_size", 4)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == TEXTS
    with pytest.raises(SystemExit):
        predict(folder, "김철수", "--output", "out.jsonl")  # --output needs --input


@pytest.mark.slow
def test_two_processes_write_the_output_of_one_byte_for_byte(saved, inputs, tmp_path):
    """`python -m koelectra_crf predict` in one process, then `accelerate launch` with 2 CPU processes resuming a
    stopped output: the same bytes (batch size 1: no padding, so no batch-dependent float rounding)."""
    folder, _ = saved
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    arguments = ["-m", "koelectra_crf", "predict", str(folder), "--input", str(inputs / "texts.jsonl"), "--batch_size",
                 "1", "--output"]  # fmt: skip
    single = tmp_path / "single.jsonl"
    run_command([sys.executable, *arguments, single], env=env, timeout=300)
    reference = single.read_bytes()
    assert len(reference.splitlines()) == len(TEXTS)

    double = tmp_path / "double.jsonl"
    double.write_bytes(b"".join(reference.splitlines(keepends=True)[:2]) + b'{"text": "')  # stopped on line 3
    # On a machine without GPU `--multi_gpu` is the launcher that starts the processes (`--cpu` starts one).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517"]  # fmt: skip
    completed = run_command([*launch, *arguments, double], env=env, timeout=600)
    assert "tagging (process 0 of 2)" in completed.stderr
    assert double.read_bytes() == reference
    assert sorted(path.name for path in tmp_path.iterdir()) == ["double.jsonl", "single.jsonl"]  # parts removed
