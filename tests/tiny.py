"""Tiny random models and tokenizers built inside the tests (no download, no ../shared)."""

from pathlib import Path

from transformers import BertConfig, ElectraConfig, ElectraTokenizerFast

from koelectra_crf import KLUE_LABELS, KoElectraCrfConfig, KoElectraCrfForTokenClassification

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_TEXT = "김철수는 서울에서 2024년 3월 1일 오전 9시에 삼성전자 사과 3개를 샀다. ABC 123 李 😀"


def character_tokenizer(folder: Path, text: str = TINY_TEXT) -> ElectraTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is the characters of `text` (each also as a ## continuation)."""
    chars = sorted({char for char in text if not char.isspace()})
    vocab = SPECIAL_TOKENS + chars + [f"##{char}" for char in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return ElectraTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False)


def tiny_encoder_config(vocab_size: int, model_type: str = "electra"):
    sizes = {"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "max_position_embeddings": 512}  # fmt: skip
    if model_type == "electra":
        return ElectraConfig(embedding_size=16, **sizes)
    return BertConfig(pad_token_id=0, **sizes)


def tiny_model(vocab_size: int, labels=KLUE_LABELS, model_type: str = "electra", **config_kwargs):
    config = KoElectraCrfConfig(
        encoder=tiny_encoder_config(vocab_size, model_type),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        lstm_hidden_size=8,
        **config_kwargs,
    )
    return KoElectraCrfForTokenClassification(config).eval()
