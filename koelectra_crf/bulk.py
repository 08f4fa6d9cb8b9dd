"""Bulk tagging (`koelectra-crf predict MODEL --input FILE --output FILE.jsonl`): one JSON line per input text, in
input order, streamed as the pipeline produces them, resumable, and shared among the processes of
`accelerate launch`.

- Input (`input_format`): `text` (one text per line, blank lines skipped), `jsonl` (objects with a `text` field)
  or `klue` (a KLUE NER TSV file: its sentences). `auto`: `jsonl` for a `.jsonl` file, `klue` for a file that
  starts with a `## ` line, `text` otherwise.
- Output: `{"text": ..., "entities": [...]}` per text, the entities as the pipeline gives them with
  `aggregation_strategy="simple"`.
- Resuming: a rerun keeps the complete lines already written (after checking that their texts are the input's,
  in order), drops a line cut short, and tags the rest.
- Memory does not grow with the file: the input is read as it is tagged (after a first pass that counts its texts
  and checks every line, so that a bad line fails before any tagging), and the output is checked line by line.
- Processes: under `accelerate launch --num_processes N` (on a machine without GPU add `--multi_gpu`, accelerate's
  name for its torchrun launcher: with `--cpu` it starts one process; `torchrun --nproc_per_node N` works too),
  the texts left to tag are cut into N consecutive shards; process r writes its shard to `OUTPUT.part-START-END`
  (resumable the same way), and once all are done the main process appends the parts to the output in order and
  removes them. With `batch_size=1` the output is byte for byte that of one process. With larger batches the
  windows batched (and padded) together differ, which changes scores in their last float digits (and could
  change a tag only where two paths score within that of each other).
"""

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice, tee
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from koelectra_crf.alignment import LONE_SURROGATE
from koelectra_crf.data import is_klue_tsv, read_klue_tsv, refuse_input_as_output, utf8_required
from koelectra_crf.options import INPUT_FORMATS
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.usage import UsageError

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state(device: str | None = None) -> "PartialState":
    """This process's place among those of `accelerate launch` or torchrun (one process when run alone). Without a
    GPU, or on `device="cpu"`, processes meet over gloo (accelerate's MULTI_CPU), else over the GPUs' backend."""
    from accelerate import PartialState  # here: accelerate's package imports its training side too

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def detect_input_format(path: Path) -> str:
    """`jsonl`, `klue` or `text` for `input_format="auto"` (see the module docstring): the texts' format, not a
    labelled data format (`formats.detect_format`)."""
    if path.suffix == ".jsonl":
        return "jsonl"
    return "klue" if is_klue_tsv(path) else "text"


def read_texts(path: str | Path, input_format: str = "auto") -> Iterator[str]:
    """The texts of an input file, in order, read as they are asked for (see the module docstring for the formats).

    Lines end at `\\n`, `\\r\\n` or `\\r` (not at the other characters `str.splitlines` breaks at, such as
    U+2028, which a JSON string may hold as it is). A KLUE TSV file, a labelled file read and checked by
    `data.read_klue_tsv`, is held whole.
    """
    path = Path(path)
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if input_format == "auto":
        input_format = detect_input_format(path)
    if input_format == "klue":
        return (sentence["sentence"] for sentence in read_klue_tsv(path))
    return _read_lines(path, input_format)


def _read_lines(path: Path, input_format: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\n")  # universal newlines: every line break reads as "\n"
            if not line.strip():
                continue
            if input_format == "text":
                yield line
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UsageError(f'{path}:{number}: expected a JSON object with a "text" string, got {line[:200]!r}')
            yield record["text"]


def count_texts(path: str | Path, input_format: str = "auto") -> int:
    """How many texts `read_texts` gives, checking the whole input on the way (a bad line fails before tagging)."""
    return sum(1 for _ in read_texts(path, input_format))


def output_line(text: str, entities: list[dict]) -> str:
    """The output line of one text, newline included: its `entities`, or with `top_k` its `analyses` (each
    `{"entities", "probability"}`). Characters are written as they are, except lone surrogates
    (which a JSONL input can hold as `\\ud800` escapes, and UTF-8 cannot): escaped the same way, so that the line
    reads back as the input's text."""
    key = "analyses" if entities and "probability" in entities[0] else "entities"
    line = json.dumps({"text": text, key: entities}, ensure_ascii=False)
    return LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", line) + "\n"


def tagged_lines(ner: KoElectraCrfTokenClassificationPipeline, texts: Iterable[str], batch_size: int) -> Iterator[str]:
    """The output line of each of `texts`, in order, as the pipeline produces them (it reads a few batches ahead)."""
    texts, to_tag = tee(texts)
    # A generator makes the pipeline stream its results in order (a list would come back only once all are done).
    results = ner((text for text in to_tag), batch_size=batch_size, aggregation_strategy="simple")
    for text, entities in zip(texts, results, strict=True):
        yield output_line(text, entities)


def resume(path: Path, texts: Iterable[str], truncate: bool = True) -> int:
    """How many of `texts` the file at `path` already holds, as complete lines in order (0 when it does not exist).

    A last line without its newline (the run was stopped while writing it) is cut off when `truncate`; a complete
    line whose text is not the input's at its position is an error: the output belongs to another input.
    """
    if not path.exists():
        return 0
    texts = iter(texts)
    done, complete = 0, 0  # lines checked, and their bytes
    with open(path, "rb") as file:
        for line in file:  # binary: lines end at b"\n" only, as output lines do
            if not line.endswith(b"\n"):
                break
            text = next(texts, None)
            if text is None:
                raise UsageError(f"{path} has more lines than the {done} texts of the input: another input's output?")
            number = done + 1
            try:
                record = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                record = None
            if not isinstance(record, dict) or not {"text", "entities"} <= record.keys():
                raise UsageError(f"{path}:{number}: not an output line ({line[:100]!r}): another file?")
            if record["text"] != text:
                raise UsageError(f"{path}:{number}: its text is not the input's text {number}: another input's output?")
            done, complete = done + 1, complete + len(line)
    if truncate and complete < path.stat().st_size:
        with open(path, "r+b") as file:
            file.truncate(complete)
    return done


def _tag_into_file(
    ner: KoElectraCrfTokenClassificationPipeline,
    texts: Callable[[], Iterator[str]],
    total: int,
    path: Path,
    batch_size: int,
    description: str,
    show_progress: bool,
) -> None:
    """Tag the `total` texts that `texts()` reads into `path`, resuming after the lines it already holds."""
    done = resume(path, texts())
    with open(path, "a", encoding="utf-8") as f, tqdm(
        total=total, initial=done, desc=description, unit="text", disable=not show_progress
    ) as progress:  # fmt: skip
        for line in tagged_lines(ner, islice(texts(), done, None), batch_size):
            f.write(line)
            f.flush()  # what is written is kept by a rerun: write it now
            progress.update()


def tag_file(
    ner: KoElectraCrfTokenClassificationPipeline,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 8,
    input_format: str = "auto",
) -> int:
    """Tag every text of `input_path` into `output_path` (see the module docstring); return how many texts the
    output holds. Every process of an `accelerate launch` calls it with the same arguments."""
    state = process_state()
    output_path = Path(output_path)
    refuse_input_as_output(input_path, output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    total = count_texts(input_path, input_format)

    def texts(start: int = 0, end: int | None = None) -> Iterator[str]:
        return islice(read_texts(input_path, input_format), start, end)

    if state.num_processes == 1:
        _tag_into_file(ner, texts, total, output_path, batch_size, "tagging", show_progress=True)
        return total

    with state.main_process_first():  # the main process cuts a partial line before the others count lines
        done = resume(output_path, texts(), truncate=state.is_main_process)
    left, processes = total - done, state.num_processes
    shards = [(done + left * r // processes, done + left * (r + 1) // processes) for r in range(processes)]
    parts = [output_path.with_name(f"{output_path.name}.part-{start}-{end}") for start, end in shards]
    start, end = shards[state.process_index]
    description = f"tagging (process 0 of {processes})"
    _tag_into_file(ner, partial(texts, start, end), end - start, parts[state.process_index], batch_size, description,
                   state.is_local_main_process)  # fmt: skip
    state.wait_for_everyone()
    if state.is_main_process:
        with open(output_path, "ab") as f:
            for part in parts:
                with open(part, "rb") as lines:
                    shutil.copyfileobj(lines, f)
        # This run's parts, and those of earlier runs stopped before their merge (other shards): merged or stale.
        for part in output_path.parent.glob(f"{output_path.name}.part-*"):
            part.unlink()
    state.wait_for_everyone()
    return total
