"""Encoder + optional BiLSTM + CRF token classifier (shipped to the Hub as remote code)."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BatchEncoding, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import TokenClassifierOutput

from .alignment import MORPHEME_CODES, NerDataCollator, model_inputs, pad_inputs
from .configuration_koelectra_crf import KLUE_LABELS, KoElectraCrfConfig
from .crf import LinearChainCRF

# Imported so that handler.py travels with this file (transformers copies a module's relative imports with it).
from .handler import EndpointHandler  # noqa: F401
from .pipeline_koelectra_crf import TASK, KoElectraCrfTokenClassificationPipeline
from .tagger import EmissionTagger, build_crf, default_tag_mask, tag_constraints


@dataclass
class KoElectraCrfOutput(TokenClassifierOutput):
    r"""
    Output of [`KoElectraCrfForTokenClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Mean over sequences of the CRF negative log-likelihood (cross-entropy per token when `use_crf=False`).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_labels)`):
            Emission scores (before the CRF). With `tag_unit="character"` the sequence is the window's characters
            (`num_characters` instead of `sequence_length`, here and below).
        predictions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Viterbi tags (argmax when `use_crf=False`), `-100` at positions that are not tagged. Computed in eval
            mode only: training never needs them.
        offset_mapping (`torch.LongTensor` of shape `(batch_size, sequence_length, 2)`, *optional*):
            The inputs' `offset_mapping`, when given ([`~KoElectraCrfForTokenClassification.prepare_inputs`] gives
            it): the [start, end) characters of the text that each position of `logits` and `predictions` tags,
            (0, 0) where it tags none.
        overflow_to_sample_mapping (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The inputs' `overflow_to_sample_mapping`, when given: the text each row (window) belongs to.
        hidden_states, attentions: the encoder's, when asked for.
    """

    predictions: torch.LongTensor | None = None
    offset_mapping: torch.LongTensor | None = None
    overflow_to_sample_mapping: torch.LongTensor | None = None


class KoElectraCrfPreTrainedModel(PreTrainedModel):
    config_class = KoElectraCrfConfig
    # With an `_auto_class`, transformers' `save_pretrained` copies the model's code into the folder (see below).
    _auto_class = "AutoModelForTokenClassification"
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # transformers 5.x leaves a parameter that a checkpoint lacks as uninitialised memory unless this
        # initialises it; the CRF's are plain nn.Parameters the base class knows nothing about. Its own
        # `reset_parameters` draws them; transformers runs this with `torch.nn.init` guarded, so that parameters a
        # checkpoint filled stay as loaded. The same holds for the constraint masks, non-persistent buffers that no
        # checkpoint holds.
        if isinstance(module, LinearChainCRF):
            module.reset_parameters()
            buffers = (module.allowed_start, module.allowed_transitions, module.allowed_end)
            for buffer, value in zip(buffers, tag_constraints(self.config), strict=True):
                init.copy_(buffer, value)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save as any transformers model does, into a complete Hub folder.

        Besides the weights, config.json names the classes (`auto_map`: `AutoConfig`, `AutoModel`,
        `AutoModelForTokenClassification`) and the CRF pipeline (`custom_pipelines`), and the folder gets their code:
        transformers copies the file of a model class that has an `_auto_class` with every file it imports relatively
        (config, CRF, alignment, pipeline, handler), from wherever the running class comes from (this package, or
        remote code loaded from a folder or the Hub, which holds them all: transformers fetches a module's relative
        imports with it). So the folder loads with `trust_remote_code=True` in any process; `push_to_hub`, the
        pipeline's `save_pretrained` and every trainer checkpoint come through here. Save the tokenizer beside it
        (`tokenizer.save_pretrained(save_directory)`).
        """
        config = self.config
        model_name = _qualified_name(type(self))
        config.auto_map = {
            "AutoConfig": _qualified_name(type(config)),
            "AutoModel": model_name,
            "AutoModelForTokenClassification": model_name,
        }
        pipeline_name = _qualified_name(KoElectraCrfTokenClassificationPipeline)
        config.custom_pipelines = {
            TASK: {"impl": pipeline_name, "pt": ["AutoModelForTokenClassification"], "type": "text"}
        }
        super().save_pretrained(save_directory, *args, **kwargs)


class KoElectraCrfCharacterFeatures(nn.Module):
    r"""Features of characters from the states of the subword tokens that cover them (`tag_unit="character"`).

    A token's state says what the token is in context; what tells the characters of one token apart is added:

        f(c) = [ h_k ; P[min(p, max_char_position - 1)] ; E[ord(c) mod char_buckets] ]

    for character c at offset p inside its token k: `h_k` the encoder state of the token (shared by its
    characters), `P` a learned embedding of the offset (a boundary inside a token is usually at a fixed offset from
    its start: the name before a particle), `E` a learned embedding of the character itself (Korean particles and
    suffixes such as 의, 는, 에서, 씨 are what ends an entity), hashed by code point so that any tokenizer works
    without a character vocabulary. With `config.morpheme_features`, `[ ... ; M[m(c)] ]`: a learned embedding of the
    character's morpheme code m(c) (`alignment.morpheme_codes`: Kiwi's part-of-speech tag there and whether a
    morpheme starts or ends there; nearly every entity starts and ends at a morpheme boundary). The BiLSTM over
    these features (when there is one) lets every character see its neighbours, including across token boundaries.
    """

    def __init__(self, config: KoElectraCrfConfig):
        super().__init__()
        self.config = config
        self.positions = nn.Embedding(config.max_char_position, config.char_embedding_size)
        self.characters = nn.Embedding(config.char_buckets, config.char_embedding_size)
        self.morphemes = None
        if config.morpheme_features:
            self.morphemes = nn.Embedding(MORPHEME_CODES, config.char_embedding_size)

    @property
    def output_size(self) -> int:
        embeddings = 2 if self.morphemes is None else 3
        return self.config.encoder.hidden_size + embeddings * self.config.char_embedding_size

    def forward(
        self,
        token_states: torch.Tensor,
        char_token_index: torch.LongTensor | None,
        char_position_ids: torch.LongTensor | None,
        char_codes: torch.LongTensor | None,
        char_morphemes: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Character features (B, C, H + 2E), or (B, C, H + 3E) with morpheme features, from token states (B, T, H)
        and, each (B, C), the position of each character's token among the T, the character's offset inside that
        token, its code point and (with morpheme features) its morpheme code. Raises a `ValueError` naming what is
        missing when the caller built its inputs without them (e.g. with the tokenizer alone)."""
        if char_token_index is None or char_position_ids is None or char_codes is None:
            raise ValueError(
                "tag_unit='character' needs char_token_index, char_position_ids and char_codes for each window: "
                "build the inputs with `model.prepare_inputs(texts, tokenizer)`, not with the tokenizer alone"
            )
        if self.morphemes is not None and char_morphemes is None:
            raise ValueError(
                "morpheme_features=True needs char_morphemes (each character's Kiwi morpheme code) for each "
                "window: build the inputs with `model.prepare_inputs(texts, tokenizer)`"
            )
        index = char_token_index.unsqueeze(-1).expand(-1, -1, token_states.shape[-1])
        states = token_states.gather(1, index)
        offsets = self.positions(char_position_ids.clamp(max=self.config.max_char_position - 1))
        characters = self.characters(char_codes % self.config.char_buckets)
        features = [states, offsets.to(states.dtype), characters.to(states.dtype)]
        if self.morphemes is not None:
            features.append(self.morphemes(char_morphemes).to(states.dtype))
        return torch.cat(features, dim=-1)


class KoElectraCrfForTokenClassification(KoElectraCrfPreTrainedModel):
    """Token classifier: encoder -> dropout -> [BiLSTM] -> (multi-sample) dropout + linear -> CRF.

    The encoder is any `AutoModel` (its config is `config.encoder`). Emission scores have shape
    (batch_size, sequence_length, num_labels); the CRF scores tag sequences over the positions that are tagged
    (labels != -100 in training, `tag_mask` at inference), skipping special tokens and padding.

    With `config.tag_unit="character"` the encoder still reads subword tokens, but the BiLSTM, the emission layer
    and the CRF run over the text's non-space characters ([`KoElectraCrfCharacterFeatures`]), trained on the KLUE
    character tags themselves: an entity may start or end inside a token (최정원|의). The inputs then also hold,
    per window, the characters' `char_token_index`, `char_position_ids` and `char_codes` (and `char_morphemes` with
    `config.morpheme_features`), which `alignment.EncodedText.window` builds; `labels`, `tag_mask`, `logits` and
    `predictions` are per character.
    """

    # The loss is a mean per sequence, not a sum over tokens: let the Trainer average it over accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: KoElectraCrfConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)
        # A token classifier never uses the pooler: without it no parameter is unused (DDP would fail on it).
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden_size = config.encoder.hidden_size
        self.characters = None
        if config.tag_unit == "character":
            self.characters = KoElectraCrfCharacterFeatures(config)
            hidden_size = self.characters.output_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.bilstm = None
        if config.use_bilstm:
            self.bilstm = nn.LSTM(hidden_size, config.lstm_hidden_size, batch_first=True, bidirectional=True)
            hidden_size = 2 * config.lstm_hidden_size
        self.classifier = nn.Linear(hidden_size, config.num_labels)
        self.crf = build_crf(config)
        # Not a module: it refers to `self.crf`, which stays the model's (saved under `crf.`, moved with the model).
        self.tagger = EmissionTagger(self.crf)
        self.post_init()

    @classmethod
    def from_encoder(
        cls, encoder_name_or_path: str, labels: list[str] = KLUE_LABELS, **config_kwargs
    ) -> "KoElectraCrfForTokenClassification":
        """A fresh BiLSTM/CRF head on a pretrained encoder (e.g. `monologg/koelectra-base-v3-discriminator`).

        `labels` are the tag names in id order; `config_kwargs` go to `KoElectraCrfConfig`. Weights are float32
        whatever the checkpoint's dtype (fine-tuning needs float32 master weights).
        """
        encoder_config = AutoConfig.from_pretrained(encoder_name_or_path)
        encoder_config.dtype = torch.float32
        config = KoElectraCrfConfig(encoder=encoder_config, labels=labels, **config_kwargs)
        model = cls(config)
        # Transformers' load report would list the checkpoint's weights a token classifier does not use (pooler,
        # pre-training heads) or lacks (a pooler); the encoder weights that matter are checked right below instead.
        with log_messages_dropped("transformers.modeling_utils", "LOAD REPORT"):
            encoder = AutoModel.from_pretrained(encoder_name_or_path, dtype=torch.float32)
        missing, _ = model.encoder.load_state_dict(encoder.state_dict(), strict=False)
        if missing:
            raise ValueError(f"{encoder_name_or_path} lacks encoder weights: {missing[:5]}")
        return model.float()

    def with_labels(self, labels: list[str]) -> "KoElectraCrfForTokenClassification":
        """This model for another label set (tag names in id order, e.g. with new entity types), to fine-tune on.

        Everything but the label-dependent weights is carried over (encoder, character features, BiLSTM). Of the
        classifier rows and the CRF's start, end and transition scores, those of the labels both sets share are
        carried over by name (wherever the label sits in the new order); those of new labels are initialised as in a
        fresh model. transformers' `from_pretrained(..., id2label=..., ignore_mismatched_sizes=True)` would
        initialise all of them afresh. Returns a new model, in this one's mode; this one is unchanged.
        """
        config = type(self.config).from_dict({**self.config.to_dict(), "labels": list(labels)})
        model = type(self)(config).to(device=self.device, dtype=self.dtype)
        model.load_state_dict(
            {name: value for name, value in self.state_dict().items() if not name.startswith(("classifier.", "crf."))},
            strict=False,
        )
        old_id = self.config.label2id
        pairs = [(new, old_id[label]) for new, label in enumerate(config.label_names) if label in old_id]
        new_ids = torch.tensor([new for new, _ in pairs], dtype=torch.long, device=self.device)
        old_ids = torch.tensor([old for _, old in pairs], dtype=torch.long, device=self.device)
        with torch.no_grad():
            model.classifier.weight[new_ids] = self.classifier.weight[old_ids]
            model.classifier.bias[new_ids] = self.classifier.bias[old_ids]
            if model.crf is not None:
                crf, parent = model.crf, self.crf
                crf.start_transitions[new_ids] = parent.start_transitions[old_ids]
                crf.end_transitions[new_ids] = parent.end_transitions[old_ids]
                crf.transitions[new_ids[:, None], new_ids] = parent.transitions[old_ids[:, None], old_ids]
        return model.train(self.training)

    def prepare_inputs(
        self,
        texts: str | list[str],
        tokenizer,
        entities: list[list] | None = None,
        stride: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        r"""The model's inputs for `texts`, what `tokenizer(texts, return_tensors="pt")` is for other models:
        `model(**model.prepare_inputs(texts, tokenizer))` works for both tag units.

        Texts are read as the pipeline reads them (Unicode NFC, the tokenizer of this model,
        `config.encoder_tokenization`) and cut into overlapping windows of `config.max_length` tokens (`stride`,
        default `config.stride`, shared): nothing is truncated. One row per window.

        Args:
            texts (`str` or `list[str]`): the texts.
            tokenizer: the model's (fast) tokenizer.
            entities (`list[list]`, *optional*): per text, its entities as character spans of the text, each a
                `(start, end, type)` sequence or a `{"start", "end", "label"}` mapping (end exclusive, types from the
                model's labels); then `labels` are given too, for training: `model(**inputs).loss`.
            stride (`int`, *optional*): tokens shared by consecutive windows (default `config.stride`).
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` pads the rows on the right into
                tensors on the model's device; `None` gives each row's lists unpadded, as a tokenizer does, e.g. for
                `datasets.Dataset.map(..., batched=True)` and a `Trainer` with [`data_collator`] to pad batches.

        Returns:
            [`BatchEncoding`]: `input_ids`, `attention_mask` (and `token_type_ids` if the encoder takes them),
            `tag_mask` (the positions to tag) and with `tag_unit="character"` `char_token_index`,
            `char_position_ids` and `char_codes` (and `char_morphemes` with `config.morpheme_features`: the texts
            are analysed by Kiwi, `pip install kiwipiepy`); `labels` with `entities`; and two the model passes
            through to its output: `offset_mapping` (rows, positions, 2), the characters [start, end) of the text
            that each tagged position stands for ((0, 0) elsewhere), and `overflow_to_sample_mapping` (rows,), the
            text of each row.
        """
        rows = model_inputs([texts] if isinstance(texts, str) else texts, tokenizer, self.config, entities, stride)
        if return_tensors is None:
            return BatchEncoding({key: [row[key] for row in rows] for key in (rows[0] if rows else {})})
        if return_tensors != "pt":
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return BatchEncoding(pad_inputs(rows, tokenizer.pad_token_id)).to(self.device)

    @staticmethod
    def data_collator(tokenizer, pad_to_multiple_of: int | None = 8) -> NerDataCollator:
        """The `data_collator` for a `Trainer` over rows of [`prepare_inputs`] (`return_tensors=None`): pads each
        batch into tensors, the per-character inputs and labels to the characters' length, not the tokens'."""
        return NerDataCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def emissions(self, sequence_output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Emission scores (B, T, K) from the states (B, T, H) of the tagged sequence (tokens, or characters with
        `tag_unit="character"`); `mask` (B, T) marks its real positions, from the start of each row."""
        sequence_output = self.dropout(sequence_output)
        if self.bilstm is not None:
            sequence_output = self._run_bilstm(sequence_output, mask)
        samples = self.config.multi_sample_dropout if self.training else 1
        # Multi-sample dropout: average the emissions of several dropout masks (one pass when not training,
        # where dropout is the identity).
        return torch.stack([self.classifier(self.dropout(sequence_output)) for _ in range(samples)]).mean(0)

    def _run_bilstm(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if states.shape[1] == 0:  # a window without characters to tag (character units): nothing to pack
            return states.new_zeros(*states.shape[:2], 2 * self.bilstm.hidden_size)
        if mask is None:
            return self.bilstm(states)[0]
        # Packed so that the backward direction starts at each sequence's last real position, not in the padding:
        # a text's tags must not depend on what it is batched with.
        lengths = mask.sum(-1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.bilstm(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=states.shape[1])
        return output

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        tag_mask: torch.BoolTensor | None = None,
        char_token_index: torch.LongTensor | None = None,
        char_position_ids: torch.LongTensor | None = None,
        char_codes: torch.LongTensor | None = None,
        char_morphemes: torch.LongTensor | None = None,
        offset_mapping: torch.LongTensor | None = None,
        overflow_to_sample_mapping: torch.LongTensor | None = None,
        return_predictions: bool | None = None,
        **kwargs,
    ) -> KoElectraCrfOutput:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds:
                As for the encoder, each of shape `(batch_size, sequence_length)` (`inputs_embeds` with a last
                dimension of the embedding size).
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Tag ids; -100 at positions that carry no tag (special tokens, padding, continuation pieces). These
                positions never reach the CRF.
            tag_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Positions to tag when there are no labels. Defaults to `labels != -100`, else `attention_mask`
                (with `tag_unit="character"`: else every character).
            char_token_index, char_position_ids, char_codes (`torch.LongTensor` of shape `(batch_size,
                num_characters)`, needed with `tag_unit="character"`):
                For each character of the window: the position of its token in `input_ids`, its offset inside that
                token, its code point ([`KoElectraCrfCharacterFeatures`]). `labels` and `tag_mask` are then per
                character, padded at the end. [`prepare_inputs`] builds them.
            char_morphemes (`torch.LongTensor` of shape `(batch_size, num_characters)`, needed with
                `config.morpheme_features`):
                The morpheme code of each character of the window (`alignment.morpheme_codes`, 0 in the padding).
                [`prepare_inputs`] builds them.
            offset_mapping (`torch.LongTensor` of shape `(batch_size, sequence_length, 2)`, *optional*),
            overflow_to_sample_mapping (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Not used by the model: passed through to the output, so that it says which characters of which text
                each tag belongs to ([`prepare_inputs`] gives them).
            return_predictions (`bool`, *optional*):
                Whether to decode `predictions` (the tagger's Viterbi path); defaults to evaluation mode. The pipeline
                decodes a text of several windows only once they are stitched, so it asks for none.
            kwargs: passed to the encoder (`output_attentions`, `output_hidden_states`, ...).
        """
        encoder_inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        encoder_outputs = self.encoder(
            **{name: value for name, value in encoder_inputs.items() if value is not None}, return_dict=True, **kwargs
        )
        states, sequence_mask = encoder_outputs.last_hidden_state, attention_mask
        if self.characters is not None:
            states = self.characters(states, char_token_index, char_position_ids, char_codes, char_morphemes)
            if tag_mask is None:
                tag_mask = default_tag_mask(self.config, char_codes, labels)
            sequence_mask = tag_mask
        emissions = self.emissions(states, sequence_mask)
        if tag_mask is None:
            tag_mask = default_tag_mask(self.config, emissions, labels, attention_mask)
        if return_predictions is None:
            return_predictions = not self.training

        return KoElectraCrfOutput(
            loss=None if labels is None else self.tagger.loss(emissions, labels, tag_mask),
            logits=emissions,
            predictions=self.tagger.decode(emissions, tag_mask) if return_predictions else None,
            offset_mapping=offset_mapping,
            overflow_to_sample_mapping=overflow_to_sample_mapping,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


def _qualified_name(code: type) -> str:
    """`module.Class` as `auto_map` and `custom_pipelines` name remote code (the module without its package)."""
    return f"{code.__module__.rsplit('.', 1)[-1]}.{code.__name__}"


@contextmanager
def log_messages_dropped(logger_name: str, text: str) -> Iterator[None]:
    """Inside the block, the records of the logger `logger_name` whose message holds `text` are dropped; its other
    records, and the logger after the block, are as they were."""
    logger = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


__all__ = [
    "KoElectraCrfCharacterFeatures",
    "KoElectraCrfForTokenClassification",
    "KoElectraCrfOutput",
    "KoElectraCrfPreTrainedModel",
]
