"""Configuration of the encoder + BiLSTM + CRF token classifier (shipped to the Hub as remote code)."""

import transformers
from transformers import AutoConfig, PreTrainedConfig

MIN_TRANSFORMERS = "5.20"
"""The oldest transformers this code runs on (`SubConfigSpec` and dataclass configs); pyproject.toml agrees."""

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError as error:  # the remote code meets whatever transformers a Hub user has
    raise ImportError(
        f"koelectra-crf needs transformers >= {MIN_TRANSFORMERS}, found {transformers.__version__}: "
        f'pip install -U "transformers>={MIN_TRANSFORMERS}"'
    ) from error

KLUE_LABELS = [
    "B-PS", "I-PS", "B-LC", "I-LC", "B-OG", "I-OG", "B-DT", "I-DT", "B-TI", "I-TI", "B-QT", "I-QT", "O",
]  # fmt: skip
"""The 13 KLUE NER v1.1 tags in KLUE-baseline's order (the default label set of a fresh model)."""

ENTITY_TYPES = tuple(label[2:] for label in KLUE_LABELS if label.startswith("B-"))
"""The six KLUE entity types (PS, LC, OG, DT, TI, QT), derived from `KLUE_LABELS`."""

ENCODER_TOKENIZATIONS = ("subword", "char")
TAG_UNITS = ("token", "character")
RENAMED_SETTINGS = {"tokenization": "encoder_tokenization"}
"""Old name -> new name of the settings renamed since config.json files were first written: read, never written."""

# monologg/koelectra-base-v3-discriminator: the default encoder when none is given.
KOELECTRA_BASE_V3 = {
    "vocab_size": 35000,
    "embedding_size": 768,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}


class KoElectraCrfConfig(PreTrainedConfig):
    r"""
    Configuration of [`KoElectraCrfForTokenClassification`]: a pretrained encoder, an optional BiLSTM, dropout
    and a linear layer that produce per-token emission scores, and a linear-chain CRF over them.

    Args:
        encoder (`PreTrainedConfig` or `dict`, *optional*):
            Config of the encoder, of any model type `AutoModel` knows (ELECTRA, BERT, XLM-R, ...). Defaults to
            the architecture of `monologg/koelectra-base-v3-discriminator`.
        use_bilstm (`bool`, defaults to `True`):
            Put a bidirectional LSTM between the encoder and the emission layer.
        lstm_hidden_size (`int`, defaults to 256):
            Hidden size of the BiLSTM per direction.
        use_crf (`bool`, defaults to `True`):
            Decode with a CRF (Viterbi) and train with its negative log-likelihood. When `False` the head is a
            plain softmax classifier trained with cross-entropy (the "baseline" variant).
        classifier_dropout (`float`, defaults to 0.1):
            Dropout before the emission layer (and after the encoder).
        multi_sample_dropout (`int`, defaults to 1):
            Number of dropout masks whose emission scores are averaged during training (1 = ordinary dropout).
        encoder_tokenization (`str`, defaults to `"subword"`):
            What the encoder reads: `"subword"`, the encoder's tokenizer over running text; `"char"`, one token per
            non-space character. Not what is tagged (that is `tag_unit`). Read from the key `tokenization` too,
            as config.json files written before the rename name it; saving writes `encoder_tokenization` only.
        max_length (`int`, defaults to 128):
            Tokens per window, special tokens included. Longer texts are split into overlapping windows.
        stride (`int`, defaults to 32):
            Tokens shared by consecutive windows.
        labels (`list[str]`, *optional*):
            Tag names in id order; sets `id2label` and `label2id`. Defaults to `KLUE_LABELS`.
        crf_constrain_training (`bool`, defaults to `False`):
            Also apply the BIO transition constraints in the training likelihood (they always apply in decoding).
        tag_unit (`str`, defaults to `"character"`):
            What the BiLSTM, emission layer and CRF run over. `"character"`: every non-space character, from the
            state of the token that covers it plus `char_embedding_size` features of its own (see
            [`KoElectraCrfForTokenClassification`]); decoding gives character tags directly. `"token"`: the tagged
            tokens (a token carries the tag of its first character, so an entity boundary inside a token is lost);
            the original project's head. `"character"` is the default because it scored higher on KLUE NER (the
            project's docs/results.md); config.json names the unit, so a saved folder keeps its own.
        char_embedding_size (`int`, defaults to 32):
            With `tag_unit="character"`: size of the embeddings of a character's offset inside its token and of
            the character itself.
        char_buckets (`int`, defaults to 4096):
            With `tag_unit="character"`: rows of the character embedding; a character uses row (code point mod
            `char_buckets`), so no vocabulary is needed.
        max_char_position (`int`, defaults to 8):
            With `tag_unit="character"`: offsets inside a token have embeddings up to this; later offsets share
            the last one.
        morpheme_features (`bool`, defaults to `False`):
            With `tag_unit="character"`: also embed, per character, whether a morpheme starts and whether one ends
            there and the part-of-speech tag of the morpheme covering it, from the Korean morphological analyser
            Kiwi (`alignment.morpheme_codes`), which tagging then needs: `pip install kiwipiepy`. Off by default
            until a study shows its gain.
    """

    model_type = "koelectra-crf"
    # With an `_auto_class`, transformers' `save_pretrained` copies this file into the folder and names it in
    # config.json's `auto_map`.
    _auto_class = "AutoConfig"
    sub_configs_defaults = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="electra", init_kwargs=KOELECTRA_BASE_V3),
    }

    encoder: PreTrainedConfig | dict | None = None
    use_bilstm: bool = True
    lstm_hidden_size: int = 256
    use_crf: bool = True
    classifier_dropout: float = 0.1
    multi_sample_dropout: int = 1
    encoder_tokenization: str = "subword"
    max_length: int = 128
    stride: int = 32
    crf_constrain_training: bool = False
    tag_unit: str = "character"
    char_embedding_size: int = 32
    char_buckets: int = 4096
    max_char_position: int = 8
    morpheme_features: bool = False

    def __post_init__(self, labels: list[str] | None = None, **kwargs):
        self._read_renamed_settings(kwargs)
        # `labels` (tag names in id order) is the one way to set the label set; id2label/label2id derive from it.
        if labels is not None or (self.id2label is None and "num_labels" not in kwargs):
            self.id2label = dict(enumerate(KLUE_LABELS if labels is None else labels))
            self.label2id = None
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {label: i for i, label in self.id2label.items()}
        if self.tag_unit not in TAG_UNITS:
            raise ValueError(f"tag_unit must be one of {TAG_UNITS}, got {self.tag_unit!r}")
        if self.encoder_tokenization not in ENCODER_TOKENIZATIONS:
            raise ValueError(
                f"encoder_tokenization must be one of {ENCODER_TOKENIZATIONS}, got {self.encoder_tokenization!r}"
            )
        if self.morpheme_features and self.tag_unit != "character":
            raise ValueError(
                "morpheme_features=True needs tag_unit='character' (the token head takes no morpheme features), "
                f"got tag_unit={self.tag_unit!r}"
            )
        if self.multi_sample_dropout < 1:
            raise ValueError(f"multi_sample_dropout must be >= 1, got {self.multi_sample_dropout}")
        if not 0 <= self.stride < self.max_length - 2:
            raise ValueError(f"stride must be in [0, max_length - 2), got stride={self.stride}")

    def _read_renamed_settings(self, kwargs: dict) -> None:
        """Take the settings of `RENAMED_SETTINGS` given by their old names out of `kwargs` and set them by their new
        ones: config.json files saved before a rename still load, and save with the new name only. An old name whose
        value contradicts a new one given too (not at its default) is refused rather than silently chosen."""
        for old, new in RENAMED_SETTINGS.items():
            if old not in kwargs:
                continue
            value = kwargs.pop(old)
            if getattr(self, new) not in (value, self.__dataclass_fields__[new].default):
                raise ValueError(f"{old}={value!r} (the old name of {new}) contradicts {new}={getattr(self, new)!r}")
            setattr(self, new, value)

    @property
    def label_names(self) -> list[str]:
        """Tag names in id order."""
        return [self.id2label[i] for i in range(self.num_labels)]
