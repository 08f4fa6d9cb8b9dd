"""The `koelectra-crf` command: predict, evaluate, analyse, benchmark and ablate a KoELECTRA-CRF model.

    koelectra-crf predict MODEL [TEXT ...] [--input FILE]       (no text and no file: one text per stdin line)
    koelectra-crf predict MODEL --input FILE --output FILE.jsonl   (resumable; shared by `accelerate launch` processes)
    koelectra-crf export MODEL --output DIR [--quantize int8|int8-full]   (ONNX graph for onnxruntime; CRF outside)
    koelectra-crf pseudo-label MODEL --input FILE --output FILE.tsv  (KLUE TSV + confidences, for self-training)
    koelectra-crf evaluate MODEL [--test_file FILE] [--output_dir DIR] [--spacing as-is noisy none] [--respace]
    koelectra-crf errors MODEL [--compare MODEL ...] [--test_file FILE] [--output_dir DIR] [--examples N]
    koelectra-crf calibration MODEL [--test_file FILE] [--output_dir DIR] [--bins N] [--validation_file FILE]
    koelectra-crf attention MODEL SENTENCE [--layers L ...] [--heads H ...] [--output_dir DIR]
    koelectra-crf benchmark MODEL --input FILE [--num_sentences N] [--batch_sizes B ...] [--output_dir DIR]
    koelectra-crf ablation --config PRESET.json --output_dir DIR [--seeds N] [--status | --report | --check] [-- ARGS]
    koelectra-crf adapt ENCODER --input FILE --output DIR [TRAINING FLAGS]   (masked-LM training on raw text)
    koelectra-crf convert IN OUT [--input_format F] [--output_format F] [--output_tag_scheme S]   (labelled data)
    koelectra-crf predict MODEL --input FILE --output FILE --output_format doccano|label-studio|conll|...

MODEL is a model folder or a Hub id; for predict, evaluate, errors and benchmark also an ONNX export (CPU only).
The data (`--test_file`) is labelled data in any format `koelectra-crf convert` reads (doccano or our JSONL, Label
Studio JSON, CoNLL columns, KLUE TSV; `--data_format` when the extension does not tell), a datasets folder or Hub
dataset (`--dataset_name`), or the Hub `klue` validation split when none is given.
Input a command refuses is one line on stderr, exit status 2; KOELECTRA_CRF_DEBUG=1 shows its traceback.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from koelectra_crf import options
from koelectra_crf.usage import OneLineErrors, UsageError, existing_file, new_output, refusing

if TYPE_CHECKING:
    from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

FILE_ARGUMENTS = ("input", "test_file", "validation_file", "config")
"""Arguments that name a file to read: checked before any command starts."""


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("--device", type=_device, help="e.g. cpu, cuda, cuda:1 (default: the GPU when there is one)")


def _device(name: str) -> str:
    """`--device`: a torch device name, and a CUDA device only where there is one."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{name!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name!r}: this machine has no CUDA GPU (use --device cpu)")
    return name


def _batch_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=int, default=8, help="sentences per forward pass (default: 8)")


def _format_arguments(parser: argparse.ArgumentParser) -> None:
    """How labelled data is read (`formats.read_examples`): its format, tag scheme, token unit, text column."""
    parser.add_argument(
        "--data_format", choices=options.READ_FORMATS, default="auto",
        help="format of the data files (default: auto, by extension and content): jsonl (doccano's too), doccano, "
        "label-studio, conll (word columns), conll-char, klue (KLUE NER TSV)",
    )  # fmt: skip
    parser.add_argument("--tag_scheme", choices=options.TAG_SCHEMES, default="auto", help="of column data")
    parser.add_argument("--token_unit", choices=options.TOKEN_UNITS, default="auto", help="of column data")
    parser.add_argument("--text_column", help="a datasets dataset's original-text column (default: text, if any)")


def _data_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--test_file",
        help="labelled data in any format (see --data_format) (default: the Hub klue/ner validation split)",
    )
    parser.add_argument(
        "--dataset_name", help="instead of --test_file: a datasets folder or Hub dataset with tokens and ner_tags"
    )
    parser.add_argument("--dataset_config_name", help="its configuration (as run_ner's)")
    parser.add_argument("--split", default="validation", help="its split (default: %(default)s)")
    _format_arguments(parser)
    parser.add_argument("--max_sentences", type=int, help="only the first N sentences of the data")
    _batch_size_argument(parser)
    _output_argument(parser, command)


def _share(value: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        share = float(value)
    except ValueError:
        share = None
    if share is None or not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {value!r}")
    return share


def _respace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--respace", action="store_true",
        help="re-space each text with Kiwi before tagging (for text with missing or wrong spaces; needs kiwipiepy: "
        "pip install 'koelectra-crf[korean]'); offsets stay the text's",
    )  # fmt: skip


def _output_argument(parser: argparse.ArgumentParser, command: str) -> None:
    default = Path("koelectra-crf-output", command)
    parser.add_argument("--output_dir", type=Path, default=default, help=f"(default: {default})")


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="entities of texts, one JSON line per text")
    _model_arguments(predict)
    predict.add_argument("texts", nargs="*", help="texts to tag (default: --input, else stdin)")
    predict.add_argument(
        "--input", type=Path, help="file of texts: text lines, <id>\\t<text> lines, JSONL with a `text` field, KLUE TSV"
    )
    predict.add_argument(
        "--input_format", choices=options.INPUT_FORMATS, default="auto",
        help="(default: auto: jsonl for *.jsonl, klue for a file starting with '## ', tsv for *.tsv or a file whose "
        "first non-blank line holds a tab, else text)",
    )  # fmt: skip
    predict.add_argument(
        "--output", type=Path,
        help="write the JSON lines to this file instead of printing them: streamed with a progress bar, a rerun "
        "resumes after the last complete line; under `accelerate launch` the processes share the input",
    )  # fmt: skip
    predict.add_argument(
        "--output_format", choices=options.WRITE_FORMATS, default="jsonl",
        help="jsonl (default): a JSON line per text, streamed and resumable; doccano, label-studio (pre-annotations "
        "with scores), conll, conll-char, klue: data to correct in an annotation tool and train on (needs --output)",
    )  # fmt: skip
    predict.add_argument(
        "--overwrite", action="store_true",
        help="with --output_format other than jsonl: replace an existing --output (a jsonl --output resumes instead)",
    )  # fmt: skip
    _batch_size_argument(predict)
    _respace_argument(predict)
    predict.add_argument(
        "--top_k", type=_positive_int,
        help="the K most probable analyses of each text, each with its probability P(tags | text): the line's "
        '"analyses" instead of "entities"',
    )  # fmt: skip
    predict.add_argument(
        "--lexicon", type=Path,
        help="user lexicon: a JSON mapping or lines 'surface<TAB>type'; its longest matches are tagged with its type",
    )  # fmt: skip
    predict.add_argument(
        "--lexicon_mode", choices=("hard", "soft"), default="hard",
        help="hard: each match must be an entity of its type; soft: a bonus to its tags that the model may overrule",
    )  # fmt: skip


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="ONNX graph (encoder + BiLSTM + emissions) for onnxruntime")
    export.add_argument("model", help="model folder or Hub id")
    export.add_argument(
        "--output", type=Path, required=True,
        help="folder to write (graph, CRF, config, tokenizer): new, empty, or an earlier export to replace",
    )  # fmt: skip
    export.add_argument(
        "--quantize",
        choices=options.QUANTIZATIONS,
        help="int8 weights (onnxruntime dynamic quantization) but the feed-forward output projections; int8-full: all",
    )


def _add_pseudo_label(commands: argparse._SubParsersAction) -> None:
    pseudo = commands.add_parser("pseudo-label", help="tag raw sentences into KLUE TSV with their confidences")
    _model_arguments(pseudo)
    pseudo.add_argument(
        "--input", type=Path, required=True, help="one sentence per line, <id>\\t<sentence>, or a KLUE TSV file"
    )
    pseudo.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        help="with a labelled KLUE TSV input: score the sentences each threshold keeps against their gold tags",
    )
    pseudo.add_argument(
        "--confidence", choices=options.CONFIDENCES, default="sequence_probability", help="for --thresholds"
    )
    pseudo.add_argument(
        "--output",
        type=Path,
        required=True,
        help=f"KLUE TSV file; confidences go to FILE{options.CONFIDENCE_SUFFIX}",
    )
    _batch_size_argument(pseudo)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="KLUE metrics, report, charts and per-sentence predictions")
    evaluate.add_argument(
        "--spacing", nargs="+", choices=options.SPACING_CONDITIONS, metavar="CONDITION",
        help="score the text under each spacing condition: as-is (as written), noisy (--spacing_remove_rate of its "
        "spaces removed, --spacing_insert_rate of the gaps between characters given one), none (no spaces); writes "
        "each condition's report to OUTPUT_DIR/CONDITION and a robustness table (robustness.md, robustness.json)",
    )  # fmt: skip
    evaluate.add_argument(
        "--spacing_remove_rate", type=_share, default=options.DEFAULT_REMOVE_RATE, help="(default: %(default)s)"
    )
    evaluate.add_argument(
        "--spacing_insert_rate", type=_share, default=options.DEFAULT_INSERT_RATE, help="(default: %(default)s)"
    )
    evaluate.add_argument("--spacing_seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    _respace_argument(evaluate)
    _model_arguments(evaluate)
    _data_arguments(evaluate, "evaluate")


def _add_errors(commands: argparse._SubParsersAction) -> None:
    errors_parser = commands.add_parser("errors", help="error categories, type confusion and examples")
    errors_parser.add_argument("--examples", type=int, default=5, help="examples per category (default: 5)")
    errors_parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="MODEL",
        help="more models to analyse on the same data; writes each one's analysis in OUTPUT_DIR/<n>-<name> and a "
        "side-by-side comparison.md",
    )
    _model_arguments(errors_parser)
    _data_arguments(errors_parser, "errors")


def _add_calibration(commands: argparse._SubParsersAction) -> None:
    calibration_parser = commands.add_parser("calibration", help="ECE and reliability diagram of the CRF marginals")
    calibration_parser.add_argument(
        "--bins",
        type=int,
        default=options.CALIBRATION_BINS,
        help=f"equal-width confidence bins (default: {options.CALIBRATION_BINS})",
    )
    calibration_parser.add_argument(
        "--validation_file",
        help="labelled data (any format, as --test_file) to fit a temperature on (then ECE is reported before/after)",
    )
    _model_arguments(calibration_parser)
    _data_arguments(calibration_parser, "calibration")


def _add_attention(commands: argparse._SubParsersAction) -> None:
    attention_parser = commands.add_parser("attention", help="attention heatmaps and attention to entity tokens")
    _model_arguments(attention_parser)
    attention_parser.add_argument(
        "sentence",
        help="the sentence; KLUE marks such as <서울:LC> name its entities "
        "(otherwise the model's predictions are used)",
    )
    attention_parser.add_argument(
        "--layers", type=int, nargs="+", default=[0, -1], help="layers to draw, negative from the last (default: 0 -1)"
    )
    attention_parser.add_argument("--heads", type=int, nargs="+", help="heads to draw (default: all)")
    _output_argument(attention_parser, "attention")


def _add_benchmark(commands: argparse._SubParsersAction) -> None:
    benchmark_parser = commands.add_parser("benchmark", help="latency and throughput on CPU and GPU")
    benchmark_parser.add_argument("model", help="model folder or Hub id")
    benchmark_parser.add_argument(
        "--devices",
        nargs="+",
        type=_device,
        help="(default: the CPU, and the GPU if any)",
    )
    benchmark_parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="sentences, one per line or <id>\\t<sentence> (such as KLUE's klue-ner-train-sentences.tsv)",
    )
    benchmark_parser.add_argument("--num_sentences", type=int, default=500, help="(default: 500)")
    benchmark_parser.add_argument(
        "--batch_sizes", type=int, nargs="+", default=[1, 8, 32], help="throughput batch sizes (default: 1 8 32)"
    )
    _output_argument(benchmark_parser, "benchmark")


def _add_ablation(commands: argparse._SubParsersAction) -> None:
    ablation_parser = commands.add_parser("ablation", help="train the six ablation variants over seeds (resumable)")
    ablation_parser.add_argument("--config", type=Path, help="training preset (JSON); needed to train")
    ablation_parser.add_argument("--output_dir", type=Path, required=True, help="one folder per variant and seed")
    ablation_parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    ablation_parser.add_argument(
        "--study",
        choices=options.ABLATION_STUDIES,
        default="ablation",
        help="which variants: the original project's six (ablation), or plain fine-tuning against the subword and "
        "character heads (heads) (default: %(default)s)",
    )
    mode = ablation_parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="list every variant × seed as done, running or missing")
    mode.add_argument("--report", action="store_true", help="write ablation.md and ablation.png from the results")
    mode.add_argument(
        "--check", action="store_true", help="parse every run's training arguments and print its command; train nothing"
    )
    ablation_parser.add_argument("extra", nargs="*", help="after --: arguments for every training run")


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert_parser = commands.add_parser(
        "convert", help="labelled data from one format to another (doccano, Label Studio, CoNLL, KLUE TSV, datasets)"
    )
    convert_parser.add_argument("source", metavar="IN", help="a file, a datasets folder or a Hub dataset name")
    convert_parser.add_argument("target", metavar="OUT", type=Path, help="the file to write")
    convert_parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    convert_parser.add_argument(
        "--keep_types", nargs="+", metavar="TYPE",
        help="keep only the entities of these types (the others' characters become O): data for a model of fewer types",
    )  # fmt: skip
    convert_parser.add_argument("--input_format", choices=options.READ_FORMATS, default="auto", help="(default: auto)")
    convert_parser.add_argument(
        "--output_format", choices=("auto", *options.WRITE_FORMATS), default="auto",
        help="(default: auto, by OUT's extension: .jsonl, .json: label-studio, .conll, .tsv: klue)",
    )  # fmt: skip
    convert_parser.add_argument("--tag_scheme", choices=options.TAG_SCHEMES, default="auto", help="of IN's tags")
    convert_parser.add_argument(
        "--output_tag_scheme", choices=options.TAG_SCHEMES[1:], default="bio", help="of OUT's tags (default: bio)"
    )
    convert_parser.add_argument("--token_unit", choices=options.TOKEN_UNITS, default="auto", help="of IN's tokens")
    convert_parser.add_argument("--text_column", help="a datasets IN's original-text column (default: text, if any)")
    convert_parser.add_argument("--dataset_config_name", help="a Hub dataset's configuration")
    convert_parser.add_argument("--split", help="a datasets IN's split (may be left out when it has one)")


def _add_adapt(commands: argparse._SubParsersAction) -> None:
    adapt_parser = commands.add_parser(
        "adapt",
        help="continue an encoder's masked-LM training on raw text (task-adaptive pretraining)",
        epilog="Every other flag goes to the training: any TrainingArguments flag (--num_train_epochs, "
        "--learning_rate, --resume_from_checkpoint last, ...), --validation_file (held-out text: its masked-LM loss "
        "and perplexity at each --eval_strategy evaluation), --mlm_probability, --max_length, --overwrite_output_dir. "
        "Defaults: issue #35's recipe (2 epochs, batch 16, lr 1e-4, 6% warm-up, weight decay 0.01, a checkpoint "
        "every 200 steps).",
    )
    adapt_parser.add_argument("encoder", help="encoder folder or Hub id")
    adapt_parser.add_argument(
        "--input", type=Path, required=True, help="raw text: a text per line, <id>\\t<text> lines, or KLUE TSV"
    )
    adapt_parser.add_argument("--output", type=Path, required=True, help="the adapted encoder's folder")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="koelectra-crf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_predict, _add_export, _add_pseudo_label, _add_evaluate, _add_errors, _add_calibration, _add_attention,
        _add_benchmark, _add_ablation, _add_convert, _add_adapt,
    ):  # fmt: skip
        add_command(commands)
    return parser


def _load_pipeline(
    model: str, device: str | None, processes: int = 1, respace: bool = False, **pipeline_kwargs
) -> "KoElectraCrfTokenClassificationPipeline":
    """The model's pipeline, with CPU threads chosen for it (`threads.choose_cpu_threads`, sharing the cores among
    `processes`; OMP_NUM_THREADS wins); `respace`: it re-spaces every text with Kiwi first; `pipeline_kwargs` (e.g.
    `top_k`, `lexicon`) are its defaults for every call."""
    from koelectra_crf import onnx_model
    from koelectra_crf.loading import load_pipeline
    from koelectra_crf.threads import choose_cpu_threads

    ner = load_pipeline(model, device, respace=respace, **pipeline_kwargs)
    if not isinstance(ner.model, onnx_model.KoElectraCrfOnnxModel):  # onnxruntime took torch's threads at loading
        choose_cpu_threads(ner.model, processes)
    return ner


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def _predict(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from koelectra_crf import bulk, inputs, onnx_model

    control = {"top_k": args.top_k}
    if args.lexicon is not None:
        control.update(lexicon=existing_file("--lexicon", args.lexicon), lexicon_mode=args.lexicon_mode)
    control = {name: value for name, value in control.items() if value is not None}
    if args.output_format != "jsonl":
        if "top_k" in control:
            raise UsageError("--top_k gives analyses, which only jsonl holds: drop --top_k or --output_format")
        _predict_annotations(args, control)
        return
    if args.output:
        state = bulk.process_state(args.device)
        device = args.device
        if device is None and state.device.type != "cpu" and not onnx_model.is_onnx_folder(args.model):
            device = str(state.device)  # each process its own GPU
        ner = _load_pipeline(args.model, device, state.num_processes, args.respace, **control)
        bulk.tag_file(ner, args.input, args.output, args.batch_size, args.input_format)
        return
    batch_size = args.batch_size
    if args.texts:
        records = [inputs.TextRecord(f"arg-{number}", text) for number, text in enumerate(args.texts, start=1)]
        total = len(records)
    elif args.input:
        records = inputs.read_records(args.input, args.input_format)
        total = inputs.count_records(args.input, args.input_format)
    else:
        records, total = inputs.line_records(sys.stdin, "<stdin>"), None
        if sys.stdin.isatty():  # typed in: answer each text as it is entered, not once a batch of them is
            batch_size = 1
    ner = _load_pipeline(args.model, args.device, respace=args.respace, **control)
    tagged = inputs.tagged_records(ner, records, batch_size, aggregation_strategy="simple")
    for record, entities in tqdm(tagged, total=total, desc="tagging", unit="text"):
        # Each line as soon as it is tagged, for a reader at the other end of a pipe.
        print(bulk.output_line(*record, entities), end="", flush=True)


def _predict_annotations(args: argparse.Namespace, control: dict) -> None:
    """`predict --output_format` other than jsonl: the entities of every text of `--input` as data that an annotation
    tool and the training read (`formats.write_predictions`), written once all are tagged; `control` (a lexicon) goes
    to the pipeline."""
    from tqdm.auto import tqdm

    from koelectra_crf import formats, inputs

    inputs.refuse_input_as_output(args.input, args.output)
    new_output("--output", args.output, args.overwrite)
    records = list(inputs.read_records(args.input, args.input_format))
    ner = _load_pipeline(args.model, args.device, respace=args.respace, **control)
    tagged = inputs.tagged_records(ner, records, args.batch_size, aggregation_strategy="simple")
    results = [entities for _, entities in tqdm(tagged, total=len(records), desc="tagging", unit="text")]
    try:
        count = formats.write_predictions(
            [record.text for record in records], results, args.output, args.output_format,
            ids=[record.id for record in records],
        )  # fmt: skip
    except ValueError as error:  # a text the format cannot hold (checked before anything is written)
        raise UsageError(f"--output_format {args.output_format}: {error}") from error
    print(f"{count} texts written to {args.output} ({args.output_format})")


def _convert(args: argparse.Namespace) -> None:
    from koelectra_crf import formats

    new_output("OUT", args.target, args.overwrite)
    read_options = {"tag_scheme": args.tag_scheme, "token_unit": args.token_unit, "text_column": args.text_column,
                    "config_name": args.dataset_config_name, "split": args.split}  # fmt: skip
    try:
        output_format = formats.output_format_of(args.target) if args.output_format == "auto" else args.output_format
        count = formats.convert(
            args.source, args.target, args.input_format, output_format, args.output_tag_scheme,
            keep_types=args.keep_types, **read_options,
        )  # fmt: skip
    except UsageError:
        raise
    except (ValueError, OSError) as error:  # the readers' and writers' one-line errors name the file and record
        raise UsageError(str(error).splitlines()[0]) from error
    print(f"{count} examples written to {args.target}")


def _pseudo_label(args: argparse.Namespace) -> None:
    from koelectra_crf import inputs, pseudo_label

    if args.thresholds and not inputs.is_klue_tsv(args.input):
        raise UsageError(
            f"--thresholds scores against gold tags: {args.input} is not a labelled KLUE TSV file (give one, or leave "
            "out --thresholds)"
        )
    pseudo_label.check_output(args.input, args.output)  # before the model loads
    counts = pseudo_label.pseudo_label(
        _load_pipeline(args.model, args.device), args.input, args.output, args.batch_size
    )
    print(
        f"{counts['written']} sentences written to {args.output}, {counts['skipped']} skipped (a tab or a mark in it)"
    )
    if args.thresholds:
        rows = pseudo_label.kept_quality(args.output, args.input, args.thresholds, args.confidence)
        report_file = args.output.with_name(args.output.name + ".kept.json")
        report_file.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(rows, indent=2))


def _export(args: argparse.Namespace) -> None:
    from koelectra_crf import onnx_model
    from koelectra_crf.loading import load_model

    if Path(args.model).is_dir() and args.output.exists() and args.output.samefile(args.model):
        raise UsageError(
            f"--output {args.output} is the model's own folder: an export writes config.json and the tokenizer over "
            f"the model's; choose a new folder (e.g. --output {args.output.with_name(args.output.name + '-onnx')})"
        )
    onnx_model.check_export_folder(args.output)  # before the model loads
    model, tokenizer = load_model(args.model)
    folder = onnx_model.export_onnx(model, tokenizer, args.output, args.quantize)
    info = json.loads((folder / onnx_model.EXPORT_INFO_FILE).read_text(encoding="utf-8"))
    megabytes = (folder / onnx_model.ONNX_FILE).stat().st_size / 2**20
    print(f"{folder / onnx_model.ONNX_FILE}: {megabytes:.1f} MB, largest logit difference from PyTorch on a sample "
          f"{info['sample_max_abs_difference']:.2g}")  # fmt: skip


def _read_labelled(args: argparse.Namespace, source: str, flag: str, data_format: str, **dataset_options):
    """The labelled data of `source` as the command's reading options say (`formats.load_split`)."""
    from koelectra_crf import formats

    options = {"tag_scheme": args.tag_scheme, "token_unit": args.token_unit, "text_column": args.text_column}
    return formats.load_split(source, flag, data_format, **options, **dataset_options)


def _labelled_data(args: argparse.Namespace):
    """The labelled data of `--test_file` (any format), else of `--dataset_name`, else the Hub's klue/ner validation
    split; its first `--max_sentences` sentences."""
    from koelectra_crf.data import load_klue_split

    if args.test_file is not None:
        data = _read_labelled(args, args.test_file, "--test_file", args.data_format)
    elif args.dataset_name is not None:
        data = _read_labelled(args, args.dataset_name, "--dataset_name", "datasets",
                              config_name=args.dataset_config_name, split=args.split)  # fmt: skip
    else:
        return load_klue_split(None, args.max_sentences)
    return data if args.max_sentences is None else data.select(range(min(args.max_sentences, len(data))))


def _evaluate(args: argparse.Namespace) -> None:
    from koelectra_crf.analysis import report
    from koelectra_crf.evaluation import evaluate_dataset, evaluate_spacing

    data = _labelled_data(args)
    ner = _load_pipeline(args.model, args.device, respace=args.respace)
    if not args.spacing:
        metrics, predictions = evaluate_dataset(ner, data, args.batch_size)
        report.write_evaluation(metrics, predictions, args.output_dir)
        print(report.classification_report(metrics), end="")
        return
    rates = {"remove_rate": args.spacing_remove_rate, "insert_rate": args.spacing_insert_rate}
    results = evaluate_spacing(ner, data, args.spacing, **rates, seed=args.spacing_seed, batch_size=args.batch_size)
    for condition, (metrics, predictions) in results.items():
        report.write_evaluation(metrics, predictions, args.output_dir / condition)
    settings = {"model": args.model, "test_file": args.test_file, **rates, "seed": args.spacing_seed,
                "respace": args.respace}  # fmt: skip
    scores = {condition: metrics for condition, (metrics, _) in results.items()}
    print(report.write_robustness(scores, settings, args.output_dir), end="")


def _errors(args: argparse.Namespace) -> None:
    from koelectra_crf.analysis import errors
    from koelectra_crf.evaluation import predict_dataset

    data = _labelled_data(args)
    models = [args.model, *args.compare]
    reports = {}
    for n, model in enumerate(models):
        predictions = predict_dataset(_load_pipeline(model, args.device), data, args.batch_size)
        name = f"{n}-{Path(model).name}"
        folder = args.output_dir if len(models) == 1 else args.output_dir / name
        reports[name] = errors.write_error_analysis(predictions, folder, args.examples)
    if len(models) == 1:
        (report,) = reports.values()
        for category in errors.CATEGORIES:
            print(f"{category:<15}{report['counts'][category]:>8}{report['percentages'][category]:>8.2f}%")
        return
    comparison = errors.comparison_markdown(reports)
    (args.output_dir / "comparison.md").write_text(comparison, encoding="utf-8")
    print(comparison, end="")


def _calibration(args: argparse.Namespace) -> None:
    from koelectra_crf.analysis import calibration

    data = _labelled_data(args)
    validation = None
    if args.validation_file:
        validation = _read_labelled(args, args.validation_file, "--validation_file", args.data_format)
    report = calibration.write_calibration(
        _load_pipeline(args.model, args.device),
        data,
        args.output_dir,
        args.bins,
        args.batch_size,
        validation,
    )

    def scores(stage: str) -> str:
        return ", ".join(f"{level} ECE {summary['ece']:.4f}" for level, summary in report[stage].items())

    print(f"T = 1: {scores('before')} ({args.bins} equal-width bins)")
    if validation is None:
        return
    fitted = f"the temperature fitted on --validation_file, T = {report['fitted_temperature']:.3g},"
    if report["temperature_at_search_bound"]:
        octaves = calibration.SEARCH_OCTAVES
        print(f"{fitted} is at a bound of the search (2^-{octaves} to 2^{octaves}): the fit may lie beyond it")
    if report["raised_validation_ece"]:
        ece = report["validation_ece"]
        raised = ", ".join(f"{level} {ece['T = 1'][level]:.4f} -> {ece['fitted'][level]:.4f}"
                           for level in report["raised_validation_ece"])  # fmt: skip
        print(f"{fitted} raises the validation ECE ({raised}): not applied, T = 1 kept")
    elif "after" in report:
        print(f"T = {report['temperature']:.3g} (fitted on --validation_file): {scores('after')}")


def _attention(args: argparse.Namespace) -> None:
    from koelectra_crf.analysis import attention

    ner = _load_pipeline(args.model, args.device)
    report = attention.write_attention(ner, args.sentence, args.output_dir, args.layers, args.heads)
    shares = ", ".join(f"{share:.3f}" for share in report["share_to_entities_by_layer"])
    print(f"share of attention to entity tokens by layer: {shares} (uniform: {report['share_if_uniform']:.3f})")


def _benchmark(args: argparse.Namespace) -> None:
    from koelectra_crf import inputs
    from koelectra_crf.analysis import speed

    sentences = inputs.read_texts(args.input, args.num_sentences)
    results = speed.run_benchmark(args.model, sentences, args.batch_sizes, args.devices or speed.benchmark_devices())
    speed.write_benchmark(results, args.output_dir)
    print(speed.benchmark_table(results), end="")


def _ablation(args: argparse.Namespace) -> None:
    from koelectra_crf import ablation

    study = ablation.STUDIES[args.study]
    if args.status:
        print(ablation.status_table(args.output_dir, args.seeds, study), end="")
    elif args.report:
        print(ablation.write_report(args.output_dir, study), end="")
    elif args.check:
        for command in ablation.check_arguments(args.config, args.output_dir, args.seeds, args.extra, study):
            print(" ".join(command))
    else:
        ablation.run_ablation(args.config, args.output_dir, args.seeds, args.extra, study=study)


def _adapt(args: argparse.Namespace) -> None:
    from koelectra_crf import adapt

    adapt.main(["--encoder_name_or_path", args.encoder, "--input_file", str(args.input), "--output_dir",
                str(args.output), *args.extra])  # fmt: skip


COMMANDS = {
    "predict": _predict,
    "export": _export,
    "pseudo-label": _pseudo_label,
    "evaluate": _evaluate,
    "errors": _errors,
    "calibration": _calibration,
    "attention": _attention,
    "benchmark": _benchmark,
    "ablation": _ablation,
    "adapt": _adapt,
    "convert": _convert,
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `koelectra-crf` console script. Input that it refuses (`usage.UsageError`) ends it with one
    line on stderr and exit status 2."""
    parser = build_parser()
    # `adapt` passes the flags it does not know on to the training (`adapt.main` checks them).
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "adapt":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.extra = unknown if args.command == "adapt" else getattr(args, "extra", None)
    if args.command == "ablation" and not (args.status or args.report or args.config):
        parser.error("ablation: --config is needed to train or --check (or give --status or --report)")
    if getattr(args, "dataset_name", None) and args.test_file:
        parser.error(f"{args.command}: give --test_file or --dataset_name, not both")
    if args.command == "predict" and args.output and (args.texts or not args.input):
        parser.error("predict: --output tags the file given by --input (and no TEXT arguments)")
    if args.command == "predict" and args.output_format != "jsonl" and not args.output:
        parser.error(f"predict: --output_format {args.output_format} writes a file: give --input and --output")
    with refusing(f"{parser.prog} {args.command}"):
        for name in FILE_ARGUMENTS:
            if getattr(args, name, None) is not None:
                existing_file(f"--{name}", getattr(args, name))
        COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
