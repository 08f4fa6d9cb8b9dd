"""Fine-tune an encoder + BiLSTM + CRF on KLUE NER, in the style of transformers' `run_ner.py`.

    accelerate launch training/run.py --config training/configs/klue-koelectra-base.json
    python training/run.py --config training/configs/smoke.json --output_dir outputs/smoke

`--config PRESET.json` sets defaults; any flag on the command line overrides them. Every `TrainingArguments` flag
works, plus the recipe's own (`--fgm_epsilon`, `--rdrop_alpha`, `--head_learning_rate`,
`--early_stopping_patience`). The output folder holds a model that loads with `trust_remote_code=True`, its
tokenizer, `eval_results.json`, the evaluation predictions and a model card (README.md).
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from huggingface_hub import HfApi
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    EarlyStoppingCallback,
    HfArgumentParser,
    set_seed,
)

from hub_card.render import render_model_card
from koelectra_crf import KoElectraCrfConfig, KoElectraCrfForTokenClassification
from koelectra_crf.data import character_tokenizer, label_names, load_klue_ner, tokenize_and_align
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments

logger = logging.getLogger(__name__)
# `--push_to_hub` uploads the model folder, not the checkpoints, logs and training state next to it.
NOT_UPLOADED_FOLDERS = ("checkpoint-", "runs", "char-vocab")
NOT_UPLOADED_FILES = {"train_results.json", "all_results.json", "trainer_state.json", "training_args.bin",
                      "upload_manifest.json"}  # fmt: skip


@dataclass
class ModelArguments:
    encoder_name_or_path: str = field(
        default="monologg/koelectra-base-v3-discriminator", metadata={"help": "Pretrained encoder (Hub id or folder)."}
    )
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the encoder's."})
    random_encoder_config: str | None = field(
        default=None,
        metadata={"help": "JSON encoder config: randomly initialised encoder instead of pretrained weights "
                          "(smoke runs, speed benchmarks)."},
    )  # fmt: skip
    char_tokenizer_from_data: bool = field(
        default=False, metadata={"help": "Build a character WordPiece tokenizer from the training sentences."}
    )
    use_bilstm: bool = True
    use_crf: bool = True
    lstm_hidden_size: int = 256
    multi_sample_dropout: int = field(default=1, metadata={"help": "Dropout masks averaged for the emissions."})
    classifier_dropout: float = 0.1
    tokenization: str = field(default="subword", metadata={"help": "'subword' or 'char'."})


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "KLUE NER TSV; without files: Hub klue/ner."})
    validation_file: str | None = None
    test_file: str | None = None
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per window; longer sentences are windowed."})
    stride: int = field(default=32, metadata={"help": "Tokens shared by consecutive windows."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class CardArguments:
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card."})
    push_dry_run: bool = field(default=False, metadata={"help": "Build the Hub folder and list it; upload nothing."})


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, NerTrainingArguments, CardArguments]:
    """HfArgumentParser over the four dataclasses; `--config FILE.json` gives defaults that flags override."""
    parser = HfArgumentParser((ModelArguments, DataArguments, NerTrainingArguments, CardArguments))
    if "--config" in argv:
        position = argv.index("--config")
        preset = json.loads(Path(argv[position + 1]).read_text(encoding="utf-8"))
        unknown = set(preset) - {action.dest for action in parser._actions}
        if unknown:
            raise ValueError(f"{argv[position + 1]}: unknown settings {sorted(unknown)}")
        parser.set_defaults(**preset)
        argv = argv[:position] + argv[position + 2 :]
    return parser.parse_args_into_dataclasses(args=argv)


def build_model(model_args: ModelArguments, data_args: DataArguments, labels: list[str], vocab_size: int):
    head = {
        "use_bilstm": model_args.use_bilstm, "use_crf": model_args.use_crf,
        "lstm_hidden_size": model_args.lstm_hidden_size, "multi_sample_dropout": model_args.multi_sample_dropout,
        "classifier_dropout": model_args.classifier_dropout, "tokenization": model_args.tokenization,
        "max_length": data_args.max_seq_length, "stride": data_args.stride,
    }  # fmt: skip
    if model_args.random_encoder_config is None:
        return KoElectraCrfForTokenClassification.from_encoder(model_args.encoder_name_or_path, labels, **head)
    encoder_dict = json.loads(Path(model_args.random_encoder_config).read_text(encoding="utf-8"))
    encoder = AutoConfig.for_model(**{**encoder_dict, "vocab_size": vocab_size})
    return KoElectraCrfForTokenClassification(KoElectraCrfConfig(encoder=encoder, labels=labels, **head))


def write_predictions(path: Path, dataset, predictions: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8") as file:
        for example, tags in zip(dataset, predictions, strict=True):
            file.write(json.dumps({"guid": example["guid"], "sentence": example["sentence"], "tags": tags},
                                  ensure_ascii=False) + "\n")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args, card_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    # The Trainer would push checkpoints and a card of its own; the finished folder is uploaded below instead.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    set_seed(training_args.seed)

    raw = load_klue_ner(data_args.train_file, data_args.validation_file, data_args.test_file)
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))
    output_dir = Path(training_args.output_dir)
    if model_args.char_tokenizer_from_data:
        tokenizer = character_tokenizer(raw["train"]["sentence"], output_dir / "char-vocab")
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.encoder_name_or_path)
    model = build_model(model_args, data_args, label_names(raw["train"]), len(tokenizer))

    with training_args.main_process_first(desc="tokenizing"):
        train_dataset = tokenize_and_align(raw["train"], tokenizer, model.config)
    callbacks = []
    if training_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    trainer = NerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=raw["validation"],
        data_collator=DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
        for split, tags in predictions.items():
            write_predictions(output_dir / f"predictions_{split}.jsonl", raw[split], tags)
        card = render_model_card(
            trainer.accelerator.unwrap_model(trainer.model), tokenizer, metrics,
            base_model=model_args.encoder_name_or_path if model_args.random_encoder_config is None else None,
            data_description=describe_data(data_args), training_args=training_args, license=card_args.license,
            model_id=training_args.hub_model_id,
        )  # fmt: skip
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        if push_to_hub or card_args.push_dry_run:
            upload(output_dir, training_args.hub_model_id, dry_run=card_args.push_dry_run)
    return metrics


def describe_data(data_args: DataArguments) -> str:
    if data_args.train_file is None:
        return "KLUE NER (Hub `klue`/`ner`): train split for training, validation split for evaluation"
    train, validation = Path(data_args.train_file).name, Path(data_args.validation_file).name
    return f"training file `{train}`, evaluation file `{validation}`"


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
    if repo_id is None:
        raise ValueError("--push_to_hub needs --hub_model_id")
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=files)
    return files


if __name__ == "__main__":
    main()
