"""Fine-tune an encoder + BiLSTM + CRF on KLUE NER or any labelled Korean NER data, in the style of `run_ner.py`.

    accelerate launch training/run.py --config training/configs/klue-koelectra-base.json
    python -m koelectra_crf.train --config training/configs/smoke.json --output_dir outputs/smoke

(`training/run.py` is this module's `main`.) The data: `--train_file`/`--validation_file`/`--test_file` in any format
of `koelectra_crf.formats` (doccano, Label Studio, CoNLL columns, KLUE TSV), a `--dataset_name` (tokens + ner_tags, as
run_ner's), or the Hub's klue/ner; the entity types are the training data's or `--entity_types`, and
`--model_name_or_path` continues from a trained model (shared labels keep their weights), and `--adapt_on` first
continues the encoder's masked-LM training on raw text of the task (`koelectra_crf.adapt`).

`--config PRESET.json` sets defaults; any flag on the command line overrides them. Every `TrainingArguments` flag
works, plus the recipe's own (`--fgm_epsilon`, `--rdrop_alpha`, `--head_learning_rate`, `--early_stopping_patience`)
and every setting of the model's head, named and defaulted as in `KoElectraCrfConfig` (`--use_bilstm`, `--max_length`,
`--crf_constrain_training`, ...). The output folder holds a model that loads with `trust_remote_code=True`, its
tokenizer, `eval_results.json`, the evaluation predictions and a model card (README.md). Input it refuses (a flag
value, a missing or malformed file, an output folder that holds a previous run) ends it with one line on stderr and
exit status 2 (`usage.refusing`).
"""

import dataclasses
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from datasets import DatasetDict, concatenate_datasets, get_dataset_split_names, load_from_disk
from huggingface_hub import HfApi
from transformers import (
    AutoConfig,
    AutoTokenizer,
    EarlyStoppingCallback,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    set_seed,
)

from hub_card.render import render_model_card
from koelectra_crf import KoElectraCrfConfig, KoElectraCrfForTokenClassification, formats
from koelectra_crf.alignment import NerDataCollator, morpheme_codes
from koelectra_crf.configuration_koelectra_crf import ENTITY_TYPES, RENAMED_SETTINGS
from koelectra_crf.data import label_names, load_klue_ner, tokenize_and_align, with_label_names
from koelectra_crf.evaluation import SentencePrediction, check_types
from koelectra_crf.inputs import read_texts
from koelectra_crf.metrics import label_types
from koelectra_crf.pseudo_label import confidence_path, load_pseudo_labelled
from koelectra_crf.spacing import (
    DEFAULT_INSERT_RATE,
    DEFAULT_REMOVE_RATE,
    SpacingAugmentation,
    SpacingAugmentationCallback,
    check_rate,
)
from koelectra_crf.threads import choose_cpu_threads
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments
from koelectra_crf.usage import OneLineErrors, UsageError, existing_file, refusing

logger = logging.getLogger(__name__)
# `--push_to_hub` uploads the model folder, not the checkpoints, logs and training state next to it.
ADAPTED_ENCODER_FOLDER = "adapted-encoder"
"""Where `--adapt_on` writes the adapted encoder, inside `--output_dir`."""
NOT_UPLOADED_FOLDERS = ("checkpoint-", "runs", ADAPTED_ENCODER_FOLDER)
NOT_UPLOADED_FILES = {"train_results.json", "all_results.json", "trainer_state.json", "training_args.bin",
                      "upload_manifest.json"}  # fmt: skip
RESUME_LAST = ("last", "true")
"""`--resume_from_checkpoint` values that mean the latest `checkpoint-N` in `--output_dir`."""
TRAIN_RESULTS_FILE = "train_results.json"
"""Written in `--output_dir` once training has ended: a run whose folder holds it has nothing left to resume."""
# What `--overwrite_output_dir` deletes of the previous run: what the new run would not replace but mix with its own
# (old checkpoints would be resumed from or rotated, the Trainer merges into all_results.json, a test split's files
# would outlive it). The rest (model, tokenizer, card) is replaced as the new run writes it.
PREVIOUS_RUN_LEFTOVERS = ("checkpoint-*", "*_results.json", "predictions_*.jsonl", ADAPTED_ENCODER_FOLDER)
ADAPT_ON_TRAINING_DATA = "train"
"""`--adapt_on train`: adapt the encoder on the training split's own sentences."""
NOT_ADAPTED = ("none", "")
"""`--adapt_on` values that turn a preset's adaptation off."""


@dataclass
class ModelArguments:
    """Where the encoder and the tokenizer come from."""

    encoder_name_or_path: str = field(
        default="monologg/koelectra-base-v3-discriminator", metadata={"help": "Pretrained encoder (Hub id or folder)."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A trained koelectra-crf model (folder or Hub id) to continue from, instead of a fresh head "
                          "on --encoder_name_or_path or --random_encoder_config: its encoder, head settings and "
                          "tokenizer. Its labels become the training data's; those both share keep their weights (by "
                          "name), new ones start fresh."},
    )  # fmt: skip
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Defaults to the model's (--model_name_or_path) or else the encoder's."}
    )
    random_encoder_config: str | None = field(
        default=None,
        metadata={"help": "JSON encoder config: randomly initialised encoder instead of pretrained weights "
                          "(smoke runs, speed benchmarks)."},
    )  # fmt: skip
    adapt_on: str | None = field(
        default=None,
        metadata={"help": "Task-adaptive pretraining before fine-tuning: raw text of the task's domain (a file as "
                          f"`koelectra-crf adapt --input` reads it), or `{ADAPT_ON_TRAINING_DATA}` for the training "
                          "split's own sentences. The encoder's masked-LM training continues on it with `adapt`'s "
                          f"recipe and the run's --seed, in --output_dir/{ADAPTED_ENCODER_FOLDER} (reused when "
                          "finished, resumed when interrupted), and fine-tuning starts from it. "
                          f"{' or '.join(repr(value) for value in NOT_ADAPTED)}: no adaptation."},
    )  # fmt: skip

    def __post_init__(self):
        if self.adapt_on is not None and self.adapt_on.lower() in NOT_ADAPTED:
            self.adapt_on = None


def _head_arguments() -> type:
    """A dataclass of the head's settings, made from `KoElectraCrfConfig`'s own fields: the same names, defaults
    and help (the config docstring's Args) as the config, so each setting is declared once. A renamed setting
    (`RENAMED_SETTINGS`) still takes its old flag, so that older command lines keep working."""
    config_fields = {f.name: f for f in dataclasses.fields(KoElectraCrfConfig)}
    docs = dict(re.findall(r"^ {8}(\w+) \(`[^\n]*\n((?: {12}.*\n)+)", KoElectraCrfConfig.__doc__, re.MULTILINE))
    head = []
    for name, annotation in vars(KoElectraCrfConfig)["__annotations__"].items():
        if name == "encoder":  # comes from ModelArguments
            continue
        metadata = {"help": " ".join(docs[name].split())}
        old_flags = [f"--{old}" for old, new in RENAMED_SETTINGS.items() if new == name]
        if old_flags:
            metadata["aliases"] = old_flags
        head.append((name, annotation, field(default=config_fields[name].default, metadata=metadata)))
    return dataclasses.make_dataclass("HeadArguments", head)


HeadArguments = _head_arguments()


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None,
        metadata={"help": "Labelled data in any format `koelectra-crf convert` reads: doccano or our JSONL, Label "
                          "Studio JSON, CoNLL columns, KLUE TSV (see --data_format). Without files or "
                          "--dataset_name: the Hub's klue/ner."},
    )  # fmt: skip
    validation_file: str | None = None
    test_file: str | None = None
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Instead of files, as run_ner's: a datasets folder (save_to_disk) or Hub dataset with "
                          "tokens and ner_tags; its train and validation splits (and test, if it has one)."},
    )  # fmt: skip
    dataset_config_name: str | None = field(default=None, metadata={"help": "The --dataset_name's configuration."})
    data_format: str = field(
        default="auto",
        metadata={"help": f"Format of the data files: one of {', '.join(formats.READ_FORMATS)} (auto: by extension "
                          "and content)."},
    )  # fmt: skip
    tag_scheme: str = field(
        default="auto", metadata={"help": f"Tag scheme of column data: {', '.join(formats.TAG_SCHEMES)}."}
    )
    token_unit: str = field(
        default="auto", metadata={"help": f"Tokens of column data: {', '.join(formats.TOKEN_UNITS)}."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "A --dataset_name's original-text column (default: text, if it has one)."}
    )
    entity_types: list[str] | None = field(
        default=None,
        metadata={"help": "The model's entity types, in this order (default: the training data's, KLUE's six in "
                          "KLUE's order first, then the others sorted). Must hold every type of the data."},
    )  # fmt: skip
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    pseudo_label_file: str | None = field(
        default=None,
        metadata={"help": "Self-training: a `koelectra-crf pseudo-label` TSV whose confident sentences join the "
                          "training data (labels by name); the model still starts from the pretrained encoder."},
    )  # fmt: skip
    pseudo_label_threshold: float = field(
        default=0.0, metadata={"help": "Keep pseudo-labelled sentences whose confidence is at least this."}
    )
    pseudo_label_confidence: str = field(
        default="sequence_probability",
        metadata={"help": "Which confidence the threshold applies to: sequence_probability (P of the whole tagged "
                          "sentence) or min_entity_probability (P of its least likely entity)."},
    )  # fmt: skip
    spacing_augmentation: float = field(
        default=0.0,
        metadata={"help": "Share of the training sentences whose spacing is perturbed (spaces removed and inserted, "
                          "labels exact), drawn afresh every epoch: for text with missing or wrong spaces. 0 = off."},
    )  # fmt: skip
    spacing_remove_rate: float = field(
        default=DEFAULT_REMOVE_RATE,
        metadata={"help": "With --spacing_augmentation: the share of a perturbed sentence's spaces removed."},
    )
    spacing_insert_rate: float = field(
        default=DEFAULT_INSERT_RATE,
        metadata={"help": "With --spacing_augmentation: the share of the gaps between a perturbed sentence's "
                          "characters (not spaces) given a space."},
    )  # fmt: skip

    def __post_init__(self):
        for name in ("spacing_augmentation", "spacing_remove_rate", "spacing_insert_rate"):
            check_rate(f"--{name}", getattr(self, name))


@dataclass
class OutputArguments:
    """What happens to `--output_dir` (TrainingArguments has no overwrite flag since transformers 5) and the card."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an --output_dir that holds a previous run: its checkpoints and results "
                          "are deleted, its model replaced. Without it such a folder is refused unless "
                          f"--resume_from_checkpoint ({'/'.join(RESUME_LAST)} or a path) continues the run."},
    )  # fmt: skip
    license: str | None = field(
        default=None,
        metadata={"help": "License in the model card (default: the training data's: cc-by-sa-4.0 for the Hub's KLUE, "
                          "other for local files)."},
    )  # fmt: skip
    push_dry_run: bool = field(default=False, metadata={"help": "Build the Hub folder and list it; upload nothing."})


ARGUMENT_CLASSES = (ModelArguments, HeadArguments, DataArguments, NerTrainingArguments, OutputArguments)


class _ArgumentParser(OneLineErrors, HfArgumentParser):
    """HfArgumentParser whose errors (an unknown flag, a bad value) are one line."""


def parse_arguments(argv: list[str]) -> tuple:
    """HfArgumentParser over the argument dataclasses (model, head, data, training, card);
    `--config FILE.json` gives defaults that flags override. Refuses (`UsageError`) a preset that is missing, not a
    JSON object or holds unknown settings, and flags that do not go together (`TrainingArguments`' own checks)."""
    parser = _ArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", help="JSON preset: defaults for any of the flags below, which override it")
    # TrainingArguments documents a path only; `checkpoint_to_resume` also takes `last`/`true`.
    resume = parser._option_string_actions["--resume_from_checkpoint"]
    resume.help = f"A checkpoint-N folder to resume from, or {'/'.join(RESUME_LAST)} for the latest in --output_dir."
    if "--config" in argv:
        position = argv.index("--config")
        if argv.count("--config") > 1:
            raise UsageError("--config is given more than once: give one preset (flags override its settings)")
        if position + 1 == len(argv):
            parser.error("argument --config: expected one argument")
        preset_file = existing_file("--config", argv[position + 1])
        try:
            preset = json.loads(preset_file.read_text(encoding="utf-8"))
        except ValueError as error:  # not JSON, or not UTF-8
            raise UsageError(f"--config {preset_file}: not a JSON file ({error})") from None
        if not isinstance(preset, dict):
            raise UsageError(f"--config {preset_file}: expected a JSON object of settings, not {type(preset).__name__}")
        # A preset written before a setting was renamed names it as its old flag did.
        preset = {RENAMED_SETTINGS.get(name, name): value for name, value in preset.items()}
        unknown = set(preset) - {action.dest for action in parser._actions} | ({"config"} & set(preset))
        if unknown:
            raise UsageError(f"--config {preset_file}: unknown settings {sorted(unknown)} (`--help` lists them)")
        parser.set_defaults(**preset)
        argv = argv[:position] + argv[position + 2 :]
    try:
        # The last two: a namespace with `config`, and what no flag took.
        *arguments, _, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # settings that do not go together (TrainingArguments' checks)
        raise UsageError(str(error)) from error
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (`--help` lists the flags)")
    return tuple(arguments)


def check_input(model_args: ModelArguments, head_args, data_args: DataArguments, training_args) -> None:
    """Refuse (`UsageError`), before any work, files that do not exist or do not make the splits training needs,
    head settings that the model's config refuses (or that need Kiwi where it is not installed), and an upload
    without a repository."""
    files = {
        "--train_file": data_args.train_file,
        "--validation_file": data_args.validation_file,
        "--test_file": data_args.test_file,
        "--pseudo_label_file": data_args.pseudo_label_file,
        "--random_encoder_config": model_args.random_encoder_config,
        "--adapt_on": None if model_args.adapt_on == ADAPT_ON_TRAINING_DATA else model_args.adapt_on,
    }
    for flag, path in files.items():
        if path is not None:
            existing_file(flag, path)
    train, validation, test = (data_args.train_file, data_args.validation_file, data_args.test_file)
    if (train is None) != (validation is None) or (test is not None and train is None):
        raise UsageError(
            "--train_file and --validation_file go together (and --test_file with them): give both, or none of the "
            "three to train on the Hub's klue/ner"
        )
    if train is not None and data_args.dataset_name is not None:
        raise UsageError("give --train_file/--validation_file or --dataset_name, not both")
    if model_args.adapt_on is not None and (model_args.model_name_or_path or model_args.random_encoder_config):
        flag = "--model_name_or_path" if model_args.model_name_or_path else "--random_encoder_config"
        raise UsageError(
            f"--adapt_on adapts the pretrained --encoder_name_or_path, which {flag} replaces: give one of the two "
            "(--adapt_on none turns a preset's adaptation off)"
        )
    for flag, value, allowed in (
        ("--data_format", data_args.data_format, formats.READ_FORMATS),
        ("--tag_scheme", data_args.tag_scheme, formats.TAG_SCHEMES),
        ("--token_unit", data_args.token_unit, formats.TOKEN_UNITS),
    ):
        if value not in allowed:
            raise UsageError(f"{flag} {value}: must be one of {', '.join(allowed)}")
    try:
        KoElectraCrfConfig(**dataclasses.asdict(head_args))
    except ValueError as error:
        raise UsageError(f"{error} (see `--help` for the head's settings)") from None
    if head_args.morpheme_features:
        try:
            morpheme_codes([""])  # loads Kiwi now, so that training without it stops before any work
        except ImportError as error:
            raise UsageError(f"--morpheme_features: {error}") from None
    pseudo = data_args.pseudo_label_file
    if pseudo is not None and not confidence_path(Path(pseudo)).is_file():
        raise UsageError(
            f"--pseudo_label_file {pseudo}: its confidences ({confidence_path(Path(pseudo))}) are missing; "
            "`koelectra-crf pseudo-label` writes both"
        )
    if training_args.push_to_hub and training_args.hub_model_id is None:
        raise UsageError("--push_to_hub needs --hub_model_id (the repository to upload to, e.g. YOU/koelectra-crf)")


def load_data(data_args: DataArguments) -> DatasetDict:
    """The splits `train`, `validation` (and `test` when given) of labelled data in any format
    (`formats.load_split`): the files, the `--dataset_name`'s splits, or the Hub's klue/ner. Labels travel by name."""
    options = {"tag_scheme": data_args.tag_scheme, "token_unit": data_args.token_unit,
               "text_column": data_args.text_column}  # fmt: skip
    name = data_args.dataset_name
    if name is not None:
        try:
            if Path(name).is_dir():
                saved = load_from_disk(name)
                splits = list(saved) if isinstance(saved, DatasetDict) else []  # a lone Dataset has no splits
            else:
                splits = get_dataset_split_names(name, data_args.dataset_config_name)
        except (OSError, ValueError) as error:
            raise UsageError(f"--dataset_name {name}: cannot be loaded ({str(error).splitlines()[0]})") from error
        if not {"train", "validation"} <= set(splits):
            raise UsageError(f"--dataset_name {name}: training needs a train and a validation split, it has {splits}")
        return DatasetDict({
            split: formats.load_split(
                name, "--dataset_name", "datasets", config_name=data_args.dataset_config_name, split=split, **options
            )
            for split in ("train", "validation", "test") if split in splits
        })  # fmt: skip
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if data_args.train_file is None:
        return load_klue_ner()
    return DatasetDict({
        split: formats.load_split(path, f"--{split}_file", data_args.data_format, **options)
        for split, path in files.items() if path is not None
    })  # fmt: skip


def training_labels(raw: DatasetDict, entity_types: list[str] | None) -> list[str]:
    """The model's labels: `formats.bio_labels(entity_types)`, else the training data's (its `ner_tags` names: KLUE's
    13 for KLUE data, `formats.bio_labels(formats.entity_types(...))` for any other). Refuses (`UsageError`) a split
    with a type the labels lack."""
    if entity_types is None:
        labels = label_names(raw["train"])
    else:
        try:
            labels = formats.bio_labels(entity_types)
        except ValueError as error:
            raise UsageError(f"--entity_types: {error}") from None
    for split, dataset in raw.items():
        try:
            check_types(dataset, labels)
        except UsageError as error:
            flag = "--entity_types" if entity_types is not None else "the training data"
            raise UsageError(f"the {split} split: {error} (set by {flag})") from None
    return labels


def card_examples(dataset, count: int = 3) -> list[str]:
    """The first `count` texts of `dataset` with an entity: widget examples of the model's own types."""
    names = label_names(dataset)
    texts = [row["sentence"] for row in dataset if any(names[i] != "O" for i in row["ner_tags"])]
    return texts[:count] or list(dataset["sentence"][:count])


def spacing_recipe(data_args: DataArguments) -> str:
    """The model card's line for `--spacing_augmentation`."""
    if not data_args.spacing_augmentation:
        return "off"
    share, remove, insert = data_args.spacing_augmentation, data_args.spacing_remove_rate, data_args.spacing_insert_rate
    return (
        f"{share:.0%} of the sentences each epoch ({remove:.0%} of their spaces removed, {insert:.0%} of gaps spaced)"
    )


def build_model(model_args: ModelArguments, head_args, labels: list[str], vocab_size: int):
    head = dataclasses.asdict(head_args)
    if model_args.model_name_or_path is not None:
        parent = KoElectraCrfForTokenClassification.from_pretrained(model_args.model_name_or_path, dtype=torch.float32)
        ignored = {name: value for name, value in head.items() if getattr(parent.config, name) != value}
        if ignored:
            logger.warning(
                "the head comes from %s, whose settings stand over %s", model_args.model_name_or_path, ignored
            )
        return parent if parent.config.label_names == labels else parent.with_labels(labels)
    if model_args.random_encoder_config is None:
        return KoElectraCrfForTokenClassification.from_encoder(model_args.encoder_name_or_path, labels, **head)
    encoder_dict = json.loads(Path(model_args.random_encoder_config).read_text(encoding="utf-8"))
    encoder = AutoConfig.for_model(**{**encoder_dict, "vocab_size": vocab_size})
    return KoElectraCrfForTokenClassification(KoElectraCrfConfig(encoder=encoder, labels=labels, **head))


def use_special_tokens_of(tokenizer, model) -> None:
    """Give the model's config the tokenizer's pad/bos/eos ids, as the Trainer would, but before it: the Trainer then
    has nothing to realign and nothing to warn about (the encoder's config often names other ids, e.g. e5's)."""
    config = model.config.get_text_config()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is not None:
            setattr(config, name, getattr(tokenizer, name))


def write_evaluation_predictions(path: Path, predictions: list[SentencePrediction]) -> None:
    """One JSON line per evaluated sentence: its guid, text and predicted character tags (`predictions_SPLIT.jsonl`;
    `formats.write_predictions` is the one that writes the pipeline's entities in a data format)."""
    with path.open("w", encoding="utf-8") as file:
        for p in predictions:
            record = {"guid": p.guid, "sentence": p.text, "tags": p.predicted_tags}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, head_args, data_args, training_args, output_args = parse_arguments(
        sys.argv[1:] if argv is None else argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_input(model_args, head_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint is not None and (output_dir / TRAIN_RESULTS_FILE).is_file():
        return results_of_finished_run(output_dir)
    # Before any work: a run that would lose or mix with a previous one stops here.
    checkpoint = prepare_output_dir(
        output_dir, training_args, output_args.overwrite_output_dir, adapting=model_args.adapt_on is not None
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    # The Trainer would push checkpoints and a card of its own; the finished folder is uploaded below instead.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    set_seed(training_args.seed)

    raw = load_data(data_args)
    labels = training_labels(raw, data_args.entity_types)
    limit_splits_and_add_pseudo_labels(raw, data_args)
    base_encoder = model_args.encoder_name_or_path
    if model_args.adapt_on is not None:
        model_args.encoder_name_or_path = str(adapted_encoder(model_args, raw, output_dir, training_args))
        set_seed(training_args.seed)  # the head starts as it would from the adapted folder given as the encoder
    tokenizer, model = load_tokenizer_and_model(model_args, head_args, labels)
    use_special_tokens_of(tokenizer, model)
    choose_cpu_threads(model, processes=training_args.world_size)
    if training_args.device.type == "cpu":  # pinned memory only helps copies to a GPU (torch warns about it)
        training_args.dataloader_pin_memory = False

    trainer = build_trainer(model, tokenizer, raw, data_args, training_args)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    predictions = {"validation": trainer.last_predictions}
    if "test" in raw:
        trainer.save_metrics("test", trainer.evaluate(raw["test"], metric_key_prefix="test"))
        predictions["test"] = trainer.last_predictions
    if trainer.is_world_process_zero():
        for split, split_predictions in predictions.items():
            write_evaluation_predictions(output_dir / f"predictions_{split}.jsonl", split_predictions)
        card = render_model_card(
            trainer.accelerator.unwrap_model(trainer.model), tokenizer, metrics,
            base_model=model_args.model_name_or_path
            or (base_encoder if model_args.random_encoder_config is None else None),
            train_file=data_args.train_file or data_args.dataset_name,
            validation_file=data_args.validation_file or data_args.dataset_name, training_args=training_args,
            license=output_args.license, model_id=training_args.hub_model_id,
            example_texts=None if set(label_types(labels)) <= set(ENTITY_TYPES) else card_examples(raw["validation"]),
            spacing_augmentation=spacing_recipe(data_args), adaptation=adaptation_recipe(model_args.adapt_on),
        )  # fmt: skip
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        if push_to_hub or output_args.push_dry_run:
            upload(output_dir, training_args.hub_model_id, dry_run=output_args.push_dry_run)
    return metrics


def adapted_encoder(
    model_args: ModelArguments, raw: DatasetDict, output_dir: Path, training_args: NerTrainingArguments
) -> Path:
    """`--adapt_on`: the encoder adapted to its text (`adapt.adapt_before_fine_tuning`)."""
    from koelectra_crf.adapt import adapt_before_fine_tuning  # adapt builds on this module's output-folder rules

    if model_args.adapt_on == ADAPT_ON_TRAINING_DATA:
        texts = list(raw["train"]["sentence"])
    else:
        texts = read_texts(model_args.adapt_on)
    return adapt_before_fine_tuning(model_args.encoder_name_or_path, texts, output_dir, training_args)


def adaptation_recipe(adapt_on: str | None) -> str:
    """The model card's line for `--adapt_on`."""
    if adapt_on is None:
        return "none"
    text = "the training sentences" if adapt_on == ADAPT_ON_TRAINING_DATA else f"`{Path(adapt_on).name}`"
    return f"masked-LM training of the encoder on {text} before fine-tuning (`koelectra-crf adapt`'s recipe)"


def results_of_finished_run(output_dir: Path) -> dict[str, float]:
    """What `--resume_from_checkpoint` gives in a folder whose training has ended: a warning that nothing is left to
    resume and the run's evaluation results, the folder untouched (rerunning a finished job is then harmless)."""
    logger.warning(
        "%s holds a run whose training has ended (%s): nothing to resume, nothing changed. To train it again, "
        "start afresh there with --overwrite_output_dir true (without --resume_from_checkpoint), or choose "
        "another --output_dir.",
        output_dir,
        TRAIN_RESULTS_FILE,
    )
    results = output_dir / "eval_results.json"
    return json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}


def prepare_output_dir(
    output_dir: Path, training_args: NerTrainingArguments, overwrite: bool, *, adapting: bool
) -> str | None:
    """The checkpoint to resume from (`checkpoint_to_resume`, which refuses a folder whose run would be lost), after
    deleting what a previous run left when starting afresh with `overwrite` (once, by the main process). A run
    `adapting` (`--adapt_on`) that stopped before its first fine-tuning checkpoint resumes its adaptation instead."""
    resume = training_args.resume_from_checkpoint
    if adapting and resume is not None and resume.lower() in RESUME_LAST and latest_checkpoint(output_dir) is None:
        if (output_dir / ADAPTED_ENCODER_FOLDER).is_dir():
            return None  # `adapt_before_fine_tuning` reuses or resumes the adaptation; fine-tuning starts then
    checkpoint = checkpoint_to_resume(output_dir, resume, overwrite)
    if checkpoint is None and overwrite:
        with training_args.main_process_first(local=False, desc="clearing the output folder"):
            if training_args.should_save:
                delete_previous_run(output_dir)
    return checkpoint


def limit_splits_and_add_pseudo_labels(raw: DatasetDict, data_args: DataArguments) -> None:
    """Cut the training and validation splits to `--max_train_samples`/`--max_eval_samples`, then add the confident
    sentences of `--pseudo_label_file` to the training split (self-training), in place. `main` calls it once the
    labels are chosen, which therefore come from the uncut data."""
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))
    if data_args.pseudo_label_file is not None:
        pseudo = load_pseudo_labelled(
            data_args.pseudo_label_file, data_args.pseudo_label_threshold, data_args.pseudo_label_confidence
        )
        logger.info("self-training: %d pseudo-labelled sentences join %d labelled ones", len(pseudo), len(raw["train"]))
        raw["train"] = concatenate_datasets([raw["train"], with_label_names(pseudo, label_names(raw["train"]))])


def load_tokenizer_and_model(
    model_args: ModelArguments, head_args: HeadArguments, labels: list[str]
) -> tuple[PreTrainedTokenizerBase, KoElectraCrfForTokenClassification]:
    """The tokenizer (`--tokenizer_name_or_path`, else the model's or the encoder's) and the model to train
    (`build_model`). One that cannot be found or read is refused (`UsageError`) naming the flags it came from."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name_or_path or model_args.model_name_or_path or model_args.encoder_name_or_path
        )
        return tokenizer, build_model(model_args, head_args, labels, len(tokenizer))
    except OSError as error:  # what transformers raises for a model, encoder or tokenizer it cannot find or read
        flags = (
            [f"--model_name_or_path {model_args.model_name_or_path}"]
            if model_args.model_name_or_path
            else [f"--encoder_name_or_path {model_args.encoder_name_or_path}"]
        )
        if model_args.tokenizer_name_or_path:
            flags.append(f"--tokenizer_name_or_path {model_args.tokenizer_name_or_path}")
        reason = str(error).splitlines()[0]
        raise UsageError(f"{' / '.join(flags)}: cannot be loaded ({reason}); give a folder or a Hub id") from error


def build_trainer(
    model: KoElectraCrfForTokenClassification,
    tokenizer: PreTrainedTokenizerBase,
    raw: DatasetDict,
    data_args: DataArguments,
    training_args: NerTrainingArguments,
) -> NerTrainer:
    """The `NerTrainer` over the training rows (made afresh every epoch with `--spacing_augmentation`, else once)
    and the raw validation split (evaluated by characters, not rows), with early stopping when asked."""
    callbacks = []
    if data_args.spacing_augmentation:  # rows made per epoch, seeded by the run's seed (see spacing.py)
        train_dataset = SpacingAugmentation(
            raw["train"], tokenizer, model.config, data_args.spacing_augmentation,
            data_args.spacing_remove_rate, data_args.spacing_insert_rate, training_args.seed,
        )  # fmt: skip
        callbacks.append(SpacingAugmentationCallback(train_dataset))
    else:
        with training_args.main_process_first(desc="tokenizing"):
            train_dataset = tokenize_and_align(raw["train"], tokenizer, model.config)
    if training_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    return NerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=raw["validation"],
        data_collator=NerDataCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def latest_checkpoint(folder: Path) -> Path | None:
    """The `checkpoint-N` folder (as the Trainer names them) in `folder` with the highest N; None when it holds none
    (or does not exist)."""
    steps = {int(path.name.removeprefix("checkpoint-")): path for path in folder.glob("checkpoint-*")
             if path.is_dir() and re.fullmatch(r"checkpoint-[0-9]+", path.name)}  # fmt: skip
    return steps[max(steps)] if steps else None


def checkpoint_to_resume(output_dir: Path, resume_from_checkpoint: str | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from (None: train from the start), after making sure that a run in `output_dir`
    loses nothing that nobody asked to lose (as transformers' `run_ner.py` does).

    `resume_from_checkpoint` is a checkpoint folder, or `last`/`true` for the latest `checkpoint-N` in
    `output_dir`. Without it, a non-empty `output_dir` holds a previous run: refused unless `overwrite`.
    Raises `UsageError` with what to do instead.
    """
    if resume_from_checkpoint is not None:
        if resume_from_checkpoint.lower() in RESUME_LAST:
            last = latest_checkpoint(output_dir)
            if last is None:
                raise UsageError(
                    f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} holds no checkpoint-N folder "
                    "to resume from (a run saves them with --save_strategy); leave out --resume_from_checkpoint to "
                    "train from the start"
                )
            return str(last)
        if not Path(resume_from_checkpoint).is_dir():
            raise UsageError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: no such checkpoint folder (give a checkpoint-N "
                f"folder, or {'/'.join(RESUME_LAST)} for the latest in --output_dir)"
            )
        return resume_from_checkpoint
    previous = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    if previous and not overwrite:
        shown = ", ".join(previous[:5]) + (", ..." if len(previous) > 5 else "")
        raise UsageError(
            f"--output_dir {output_dir} is not empty ({shown}): it holds a previous run. Continue it with "
            "--resume_from_checkpoint last (its latest checkpoint-N), replace it with --overwrite_output_dir true "
            "(its checkpoints and results are deleted), or choose another --output_dir."
        )
    return None


def delete_previous_run(output_dir: Path) -> None:
    """Delete what a previous run left in `output_dir` that the new one would not replace (`PREVIOUS_RUN_LEFTOVERS`)."""
    for pattern in PREVIOUS_RUN_LEFTOVERS:
        for path in output_dir.glob(pattern):
            logger.info("--overwrite_output_dir: deleting %s", path)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def upload(folder: Path, repo_id: str | None, dry_run: bool) -> list[str]:
    """Upload the model folder with huggingface_hub (or, dry run, list what would be uploaded)."""
    relative_paths = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    files = sorted(
        str(path) for path in relative_paths
        if not path.parts[0].startswith(NOT_UPLOADED_FOLDERS) and path.name not in NOT_UPLOADED_FILES
    )  # fmt: skip
    if dry_run:
        logger.info("push dry run: would upload %d files to %s: %s", len(files), repo_id, files)
        (folder / "upload_manifest.json").write_text(json.dumps(files, indent=1), encoding="utf-8")
        return files
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=files)
    return files


def script_main() -> None:
    """`training/run.py` and `python -m koelectra_crf.train`: `main` with refused input as one line on stderr and exit
    status 2 (`usage.refusing`)."""
    with refusing(Path(sys.argv[0]).name):
        main()


if __name__ == "__main__":
    script_main()
