"""`koelectra-crf attention`: the encoder's attention on one sentence, and how much of it goes to entity tokens.

The entities are the sentence's own `<text:TYPE>` marks (KLUE style) when it has any, else the model's
predictions. A text longer than one window is analysed in its first window (`config.max_length` tokens).
"""

import json
from pathlib import Path

import torch

from koelectra_crf.data import strip_entity_marks
from koelectra_crf.evaluation import Span
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.usage import UsageError

from . import plots

TokenSpan = tuple[int, int] | None
"""A token's character span, None for a special token."""


def attention_maps(
    ner: KoElectraCrfTokenClassificationPipeline, text: str
) -> tuple[list[str], list[TokenSpan], torch.Tensor]:
    """Tokens, their character spans (None for special tokens) and the attentions (layers, heads, tokens, tokens)
    of the first window the pipeline feeds the model for `text`."""
    inputs = next(iter(ner.preprocess(text)))
    encoded, (start, end) = inputs["encoded"], inputs["window"]
    tensors = {key: value.to(ner.device) for key, value in inputs.items() if isinstance(value, torch.Tensor)}
    # SDPA and flash attention do not return attention weights; eager attention does.
    ner.model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = ner.model(**tensors, output_attentions=True).attentions
    input_ids = encoded.window(start, end)["input_ids"]
    spans = [None] * len(encoded.prefix_ids) + encoded.char_spans[start:end] + [None] * len(encoded.suffix_ids)
    return ner.tokenizer.convert_ids_to_tokens(input_ids), spans, torch.stack([a[0] for a in attentions]).float().cpu()


def entity_token_mask(spans: list[TokenSpan], entities: list[Span]) -> torch.Tensor:
    """Whether each token overlaps an entity (never for special tokens)."""
    return torch.tensor(
        [span is not None and any(span[0] < end and start < span[1] for start, end, _ in entities) for span in spans]
    )


def attention_to_entities(attentions: torch.Tensor, is_entity: torch.Tensor) -> torch.Tensor:
    """(layers, heads): the share of attention that goes to entity tokens, averaged over all query tokens."""
    return attentions[..., is_entity].sum(-1).mean(-1)


def write_attention(
    ner: KoElectraCrfTokenClassificationPipeline,
    sentence: str,
    output_dir: Path,
    layers: list[int],
    heads: list[int] | None = None,
) -> dict:
    """Write `attention_heatmaps.png` (the chosen layers × heads; negative layers count from the last; all heads
    by default), `attention_to_entities.png` and `attention.json`; return the JSON's content."""
    text, entities = strip_entity_marks(sentence)
    source = "marks"
    if not entities:
        source = "predicted"
        entities = [(e["start"], e["end"], e["entity_group"]) for e in ner(text, aggregation_strategy="simple")]
    tokens, spans, attentions = attention_maps(ner, text)
    num_layers, num_heads = attentions.shape[:2]
    heads = list(range(num_heads)) if heads is None else heads
    if not all(-num_layers <= layer < num_layers for layer in layers) or not all(0 <= h < num_heads for h in heads):
        raise UsageError(
            f"the model has {num_layers} layers and {num_heads} heads; asked for layers {layers} and heads {heads}: "
            f"--layers takes -{num_layers} to {num_layers - 1}, --heads 0 to {num_heads - 1}"
        )
    layers = sorted({layer % num_layers for layer in layers})
    output_dir.mkdir(parents=True, exist_ok=True)
    maps = {(layer, head): attentions[layer, head].numpy() for layer in layers for head in heads}
    plots.attention_grid(output_dir / "attention_heatmaps.png", tokens, maps, title=text)

    is_entity = entity_token_mask(spans, entities)
    shares = attention_to_entities(attentions, is_entity)
    uniform = float(is_entity.float().mean())
    report = {
        "text": text,
        "entities": [{"entity_group": t, "word": text[s:e], "start": s, "end": e} for s, e, t in entities],
        "entities_from": source,
        "tokens": tokens,
        "entity_tokens": is_entity.nonzero().flatten().tolist(),
        "share_to_entities_by_layer": shares.mean(-1).tolist(),
        "share_to_entities_by_layer_and_head": shares.tolist(),
        "share_if_uniform": uniform,
    }
    plots.attention_by_layer(
        output_dir / "attention_to_entities.png",
        shares.numpy(),
        uniform,
        title=f"Attention to entity tokens ({source} entities)",
    )
    (output_dir / "attention.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return report
