"""Render the model card of a trained folder from `template.md`, with metrics and example outputs computed by
the model itself (the Hub's hosted widget cannot run the custom pipeline, so the widget shows static outputs)."""

from pathlib import Path

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from koelectra_crf.configuration_koelectra_crf import MIN_TRANSFORMERS
from koelectra_crf.evaluation import evaluation_mode, model_labels
from koelectra_crf.metrics import label_types, metric_types
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

TEMPLATE = Path(__file__).with_name("template.md")
# Written for this project (news-like, invented people and companies).
EXAMPLE_TEXTS = [
    "김민준 한빛전자 대표는 2024년 3월 5일 오전 10시 서울 강남구 본사에서 신제품 3종을 공개했다.",
    "부산시는 다음 달 1일부터 시내버스 요금을 200원 올린다고 밝혔다.",
    "이서연 선수가 이끄는 대한체육회 대표팀은 어제 저녁 7시 인천에서 2골 차로 이겼다.",
]
NOT_COMPARABLE = (
    "These numbers are **not comparable with the KLUE leaderboard** unless the model was trained on the official "
    "KLUE train split and evaluated on the official dev split (KLUE README, KoELECTRA-base: 86.11 entity F1, "
    "92.56 character F1)."
)


def describe_data(train_file: str | None, validation_file: str | None) -> tuple[str, dict[str, str]]:
    """What the model was trained and evaluated on: a phrase for the card's text, and the model-index `dataset`.

    The Hub's `klue`/`ner` when no training file was given (the training script's default); otherwise the files,
    by name: they may hold anything in KLUE's format (the smoke sample, a re-split, another corpus), so they claim
    no Hub dataset.
    """
    if train_file is None:
        return (
            "KLUE NER (Hub `klue`/`ner`: train split for training, validation split for evaluation; news, web and "
            "review text)",
            {"type": "klue", "name": "KLUE NER (validation split)", "config": "ner", "split": "validation"},
        )
    train, validation = Path(train_file).name, Path(validation_file).name if validation_file else "none"
    return (
        f"local data: training file `{train}`, evaluation file `{validation}`",
        {"type": "local", "name": f"local file {validation}"},
    )


def render_model_card(
    model, tokenizer, metrics: dict[str, float], base_model: str | None, training_args,
    train_file: str | None = None, validation_file: str | None = None, license: str | None = None,
    model_id: str | None = None, example_texts: list[str] | None = None, spacing_augmentation: str = "off",
    adaptation: str = "none",
) -> str:  # fmt: skip
    """The README.md of a model folder: YAML metadata (model-index with the measured metrics, widget examples
    with the model's outputs), usage with `trust_remote_code=True`, results, recipe and limitations.

    `train_file`/`validation_file` are the training script's: None for the Hub's KLUE NER, which alone makes the
    card claim `datasets: [klue]` ([`describe_data`]). `license` defaults to the training data's: KLUE's
    `cc-by-sa-4.0` for the Hub data, `other` for local files (whose license the card cannot know).

    The widget examples carry text only: the Hub's widget-example schema (huggingface.js `WidgetExample`) has no
    output type for token classification, and its hosted widget does not run custom code; the model's outputs for
    them are in the card's text instead. They are `example_texts` when given (texts of the training data's own
    types), else news-like texts written for KLUE's types: a model of other types gets the first three validation
    texts with an entity from the training script. `spacing_augmentation` and `adaptation` (the encoder's
    task-adaptive pretraining) are the recipe's lines for them."""
    example_texts = example_texts or EXAMPLE_TEXTS
    model_id = model_id or "your-name/koelectra-crf-klue-ner"
    data_description, evaluated_on = describe_data(train_file, validation_file)
    on_klue = train_file is None
    license = license or ("cc-by-sa-4.0" if on_klue else "other")
    outputs = example_outputs(model, tokenizer, example_texts)
    results = {name.removeprefix("eval_"): value for name, value in metrics.items()}
    shown = ["entity_f1", "char_f1", "entity_precision", "entity_recall"] + [f"{t}_f1" for t in metric_types(results)]
    metadata = card_metadata(
        model_id, license, on_klue, hub_base_model(base_model), example_texts, evaluated_on, results
    )
    config = model.config
    parts = [f"`{config.encoder.model_type}` encoder"] + ["BiLSTM"] * config.use_bilstm
    if config.morpheme_features:  # the one thing the remote code needs beyond torch and transformers
        parts.insert(1, "Kiwi morpheme features (tagging needs `pip install kiwipiepy`)")
    examples = "\n\n".join(
        f"> {text}\n\n" + "\n".join(f"- `{e['word']}` {e['entity_group']} ({e['score']:.2f})" for e in output)
        for text, output in zip(example_texts, outputs, strict=True)
    )
    return TEMPLATE.read_text(encoding="utf-8").format(
        metadata=yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False).strip(),
        title=model_id.split("/")[-1],
        architecture=" + ".join(parts + ["CRF" if config.use_crf else "softmax"]),
        data_description=data_description,
        results_table="\n".join(f"| {name} | {results[name]:.2f} |" for name in shown if name in results),
        comparability=NOT_COMPARABLE,
        model_id=model_id,
        min_transformers=MIN_TRANSFORMERS,
        example_text=example_texts[0],
        examples=examples,
        training=training_recipe(model, base_model, training_args, spacing_augmentation, adaptation),
    )


def example_outputs(model, tokenizer, texts: list[str]) -> list[list[dict]]:
    """The CRF pipeline's entities for `texts` (`aggregation_strategy="simple"`), as the model's own outputs are
    what the card shows for its examples; scores rounded to 4 digits, which is all a reader needs."""
    with evaluation_mode(model):
        ner = KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer, device=model.device)
        outputs = ner(texts, aggregation_strategy="simple")
    return [[{**entity, "score": round(float(entity["score"]), 4)} for entity in result] for result in outputs]


def hub_base_model(base_model: str | None) -> str | None:
    """The Hub model id a card's `base_model` metadata may name, or None.

    The Hub refuses a card whose `base_model` is not a model id (the push fails), so a local folder is named only
    in the card's text: `base_model` is the name as given when it is a Hub id and no local path, the repository of a
    folder in the Hub cache (`.../models--OWNER--NAME/snapshots/REVISION`, what `snapshot_download` returns), else
    absent."""
    if not base_model:
        return None
    path = Path(base_model)
    if path.exists():
        snapshots = path.resolve().parent
        cached = snapshots.parent.name  # models--OWNER--NAME
        is_snapshot = snapshots.name == "snapshots" and cached.startswith("models--")
        return cached.removeprefix("models--").replace("--", "/") if is_snapshot else None
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        return None
    return base_model


def card_metadata(
    model_id: str, license: str, on_klue: bool, base_model: str | None, example_texts: list[str],
    evaluated_on: dict[str, str], results: dict[str, float],
) -> dict:  # fmt: skip
    """The card's YAML metadata: what the Hub indexes (license, tags, the `klue` dataset only when trained on the
    Hub's KLUE NER, the base model's Hub id when it has one: [`hub_base_model`]), the widget's example texts and the
    model-index with the measured F1 scores."""
    return {
        "language": ["ko"],
        "license": license,
        "library_name": "transformers",
        "pipeline_tag": "token-classification",
        "tags": ["ner", "crf", "korean"] + ["klue"] * on_klue,
        **({"datasets": ["klue"]} if on_klue else {}),
        **({"base_model": base_model} if base_model else {}),
        "widget": [
            {"text": text, "example_title": f"example {i + 1}"} for i, text in enumerate(example_texts)
        ],
        "model-index": [{
            "name": model_id.split("/")[-1],
            "results": [{
                "task": {"type": "token-classification", "name": "Named entity recognition"},
                "dataset": evaluated_on,
                "metrics": [
                    {"type": "f1", "name": "entity F1 (KLUE)", "value": round(results["entity_f1"], 2)},
                    {"type": "f1", "name": "character F1 (KLUE)", "value": round(results["char_f1"], 2)},
                ],
            }],
        }],
    }  # fmt: skip


def training_recipe(model, base_model: str | None, training_args, spacing_augmentation: str, adaptation: str) -> str:
    """The card's training section: one `- setting: value` line per setting of the model's config and of
    `training_args` that a reader needs to reproduce the run, the encoder's adaptation and the spacing
    augmentation's."""
    config = model.config
    return "\n".join(
        f"- {name}: {value}" for name, value in {
            "base model": base_model or "randomly initialised encoder (smoke run)",
            "encoder adaptation": adaptation,
            "morpheme features (Kiwi)": "yes" if config.morpheme_features else "no",
            "entity types": ", ".join(label_types(model_labels(model))),
            "tokenization": (
                f"{config.encoder_tokenization}, windows of {config.max_length} tokens, stride {config.stride}"
            ),
            "encoder / head learning rate": f"{training_args.learning_rate} / {training_args.head_learning_rate}",
            "batch size": training_args.per_device_train_batch_size * max(1, training_args.world_size),
            "epochs (max)": training_args.num_train_epochs,
            "warmup": training_args.warmup_steps,
            "gradient clipping": training_args.max_grad_norm,
            "FGM epsilon": training_args.fgm_epsilon,
            "R-Drop alpha": training_args.rdrop_alpha,
            "multi-sample dropout": config.multi_sample_dropout,
            "spacing augmentation": spacing_augmentation,
            "mixed precision": "fp16" if training_args.fp16 else "bf16" if training_args.bf16 else "no",
        }.items()
    )  # fmt: skip
