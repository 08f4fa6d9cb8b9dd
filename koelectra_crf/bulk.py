"""Bulk tagging (`koelectra-crf predict MODEL --input FILE --output FILE.jsonl`): one JSON line per input text, in
input order, streamed as the pipeline produces them, resumable, and shared among the processes of
`accelerate launch`.

- Input (`input_format`): text lines, `<id>\\t<text>` lines (`tsv`), JSONL with a `text` field or a KLUE TSV file,
  read by `inputs.read_records` (see there for the formats, their ids and `auto`).
- Output: `{"id": ..., "text": ..., "entities": [...]}` per text, the input's id and text, the entities as the pipeline
  gives them with `aggregation_strategy="simple"` (with `top_k`: `"analyses"` in place of `"entities"`).
- Resuming: a rerun keeps the complete lines already written (after checking that their ids and texts are the
  input's, in order), drops a line cut short, and tags the rest.
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
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from koelectra_crf.alignment import LONE_SURROGATE
from koelectra_crf.inputs import TextRecord, count_records, read_records, refuse_input_as_output, tagged_records
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.usage import UsageError

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state(device: str | None = None) -> "PartialState":
    """This process's place among those of `accelerate launch` or torchrun (one process when run alone). Without a
    GPU, or on `device="cpu"`, processes meet over gloo (accelerate's MULTI_CPU), else over the GPUs' backend."""
    from accelerate import PartialState  # here: accelerate's package imports its training side too

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def output_line(record_id: str | int, text: str, entities: list[dict]) -> str:
    """The output line of one text, newline included: its id, the text and its `entities`, or with `top_k` its
    `analyses` (each `{"entities", "probability"}`). Characters are written as they are, except lone surrogates
    (which a JSONL input can hold as `\\ud800` escapes, and UTF-8 cannot): escaped the same way, so that the line
    reads back as the input's text."""
    key = "analyses" if entities and "probability" in entities[0] else "entities"
    line = json.dumps({"id": record_id, "text": text, key: entities}, ensure_ascii=False)
    return LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", line) + "\n"


def resume(path: Path, records: Iterable[TextRecord], truncate: bool = True) -> int:
    """How many of `records` the file at `path` already holds, as complete lines in order (0 when it does not exist).

    A last line without its newline (the run was stopped while writing it) is cut off when `truncate`; a complete
    line whose id or text is not the input's at its position is an error: the output belongs to another input.
    """
    if not path.exists():
        return 0
    records = iter(records)
    done, complete = 0, 0  # lines checked, and their bytes
    with open(path, "rb") as file:
        for line in file:  # binary: lines end at b"\n" only, as output lines do
            if not line.endswith(b"\n"):
                break
            record = next(records, None)
            if record is None:
                raise UsageError(f"{path} has more lines than the {done} texts of the input: another input's output?")
            number = done + 1
            try:
                written = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                written = None
            if not isinstance(written, dict) or "text" not in written or not {"entities", "analyses"} & written.keys():
                raise UsageError(f"{path}:{number}: not an output line ({line[:100]!r}): another file?")
            if "id" not in written:
                raise UsageError(
                    f'{path}:{number}: an output line without "id", written by an earlier koelectra-crf: tag into a '
                    "new --output"
                )
            if written["text"] != record.text:
                raise UsageError(f"{path}:{number}: its text is not the input's text {number}: another input's output?")
            if written["id"] != record.id:
                raise UsageError(
                    f"{path}:{number}: its id {written['id']!r} is not the input's id {record.id!r} of text {number}: "
                    "another input's output?"
                )
            done, complete = done + 1, complete + len(line)
    if truncate and complete < path.stat().st_size:
        with open(path, "r+b") as file:
            file.truncate(complete)
    return done


def _tag_into_file(
    ner: KoElectraCrfTokenClassificationPipeline,
    records: Callable[[], Iterator[TextRecord]],
    total: int,
    path: Path,
    batch_size: int,
    description: str,
    show_progress: bool,
) -> None:
    """Tag the `total` texts that `records()` reads into `path`, resuming after the lines it already holds."""
    done = resume(path, records())
    to_tag = islice(records(), done, None)
    with open(path, "a", encoding="utf-8") as f, tqdm(
        total=total, initial=done, desc=description, unit="text", disable=not show_progress
    ) as progress:  # fmt: skip
        for record, entities in tagged_records(ner, to_tag, batch_size, aggregation_strategy="simple"):
            f.write(output_line(*record, entities))
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
    total = count_records(input_path, input_format)

    def records(start: int = 0, end: int | None = None) -> Iterator[TextRecord]:
        return islice(read_records(input_path, input_format), start, end)

    if state.num_processes == 1:
        _tag_into_file(ner, records, total, output_path, batch_size, "tagging", show_progress=True)
        return total

    with state.main_process_first():  # the main process cuts a partial line before the others count lines
        done = resume(output_path, records(), truncate=state.is_main_process)
    left, processes = total - done, state.num_processes
    shards = [(done + left * r // processes, done + left * (r + 1) // processes) for r in range(processes)]
    parts = [output_path.with_name(f"{output_path.name}.part-{start}-{end}") for start, end in shards]
    start, end = shards[state.process_index]
    description = f"tagging (process 0 of {processes})"
    _tag_into_file(ner, partial(records, start, end), end - start, parts[state.process_index], batch_size, description,
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
