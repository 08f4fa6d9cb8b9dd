"""Gradio demo of a koelectra-crf model: Korean text in, named entities highlighted by type, the next most probable
analyses with their probabilities, and re-tagging with one entity fixed by the user.

    python examples/app.py --model PATH_OR_HUB_ID [--port 7860] [--host 0.0.0.0] [--share] [--examples FILE]

The model is loaded with `pipeline("token-classification", model=..., trust_remote_code=True)`, so the spans,
offsets and scores on the page are exactly that pipeline's (CRF Viterbi path, marginal-probability scores,
character offsets, long texts tagged whole through overlapping windows). Only torch, transformers and gradio are
needed: the CRF code comes with the model. Texts longer than `MAX_CHARACTERS` are refused with a message.

The page reads and writes no files: it has no file components and no `allowed_paths`, so it serves only Gradio's
own assets. Nothing goes to the network unless `--share` is given or the model is a Hub id not yet cached.
The same file is the app of the HuggingFace Space in examples/space/ (the model id then comes from `MODEL_ID`).
`--examples FILE` shows the texts of labelled data (any format `koelectra-crf convert` reads: a model of your own
types gets examples of them) instead of the built-in ones; only that option needs the koelectra-crf package.
"""

import argparse
import html
import os

import gradio as gr
from transformers import pipeline

MAX_CHARACTERS = 20_000
"""Longest text the page tags (longer texts get a message, not a cut): a few seconds of CPU for a base model."""

DEFAULT_MODEL = os.environ.get("MODEL_ID", "koelectra-crf/koelectra-crf-klue-ner")

# KLUE NER types: Korean name, English name, highlight colour. Types the model has but this table lacks still show,
# in grey under their own code.
TYPE_NAMES = {
    "PS": ("인물", "person", "#ffd6a5"),
    "LC": ("지명", "location", "#caffbf"),
    "OG": ("기관", "organisation", "#9bf6ff"),
    "DT": ("날짜", "date", "#bdb2ff"),
    "TI": ("시간", "time", "#ffc6ff"),
    "QT": ("수량", "quantity", "#fdffb6"),
}
UNKNOWN_TYPE_COLOUR = "#e0e0e0"
ALTERNATIVES = 3
"""Analyses listed with their probabilities: the best one (highlighted) and the next most probable ones."""
NO_ENTITY = "O"
"""The choice of the fix's type that means "no entity here"."""

# Written for this demo (fictional news): persons, organisations, locations, dates, times and quantities.
EXAMPLES = [
    "한빛전자는 2025년 4월 3일 오후 2시 부산 해운대구 본사에서 김민준 대표가 참석한 가운데 신제품 5종을 공개했다.",
    "기상청은 내일 새벽 6시부터 강원 산간 지역에 최대 20센티미터의 눈이 내릴 것으로 예보했다.",
    "이서연 선수는 지난 12일 광주에서 열린 전국체육대회 여자 100미터 결선에서 11초 52의 기록으로 우승했다.",
    "서울시는 올해 상반기 대중교통 이용객이 하루 평균 약 850만 명으로 집계됐다고 밝혔다.",
    "박지훈 한국은행 총재는 오전 10시 기자회견에서 기준금리를 연 3.25%로 동결한다고 발표했다.",
]

MAX_EXAMPLES = 10
"""Examples shown from an `--examples` file: its first texts."""


def example_texts(path: str | None, data_format: str = "auto") -> list[str]:
    """The page's examples: the first `MAX_EXAMPLES` texts of labelled data in any format, read by the package's one
    reader (`koelectra_crf.formats.read_examples`), or the built-in `EXAMPLES` when `path` is None."""
    if path is None:
        return EXAMPLES
    try:
        from koelectra_crf.formats import read_examples
    except ImportError as error:
        raise SystemExit(
            "--examples reads labelled data with the koelectra-crf package: pip install koelectra-crf"
        ) from error
    return [example["text"] for example in read_examples(path, data_format)][:MAX_EXAMPLES]


# Entity labels come from CSS (`attr(data-type)`), not from text nodes, so the output's text stays exactly the input.
OUTPUT_CSS = """
.ner-output { white-space: pre-wrap; line-height: 2.2; font-size: 1.05rem; }
.ner-output mark.entity { border-radius: 0.3em; padding: 0.1em 0.25em; margin: 0 0.1em; color: #111; }
.ner-output mark.entity::after {
  content: attr(data-type); font-size: 0.65em; font-weight: 600; margin-left: 0.3em; opacity: 0.7;
}
.ner-legend { display: flex; flex-wrap: wrap; gap: 0.4em; }
.ner-legend span { border-radius: 0.3em; padding: 0.15em 0.5em; color: #111; font-size: 0.9rem; }
"""
TABLE_HEADERS = ["type", "text", "start", "end", "confidence"]


def entity_types(id2label: dict) -> list[str]:
    """Entity types of a model's labels in label order: `B-PS`, `I-PS`, ... → `PS`; the outside tag `O` is dropped."""
    types = []
    for _, label in sorted(id2label.items(), key=lambda item: int(item[0])):
        entity_type = label.split("-", 1)[-1]
        if label != "O" and entity_type not in types:
            types.append(entity_type)
    return types


def type_style(entity_type: str) -> tuple[str, str, str]:
    """Korean name, English name and colour of a type (the type's own code for types outside KLUE)."""
    return TYPE_NAMES.get(entity_type, (entity_type, entity_type, UNKNOWN_TYPE_COLOUR))


def legend_html(types: list[str]) -> str:
    chips = []
    for entity_type in types:
        korean, english, colour = type_style(entity_type)
        label = html.escape(f"{entity_type} {korean} · {english}")
        chips.append(f'<span style="background-color: {colour}">{label}</span>')
    return f'<div class="ner-legend">{"".join(chips)}</div>'


def entities_html(text: str, entities: list[dict]) -> str:
    """The text with one `<mark>` per entity; `data-start`/`data-end` are the pipeline's character offsets."""
    parts, position = [], 0
    for entity in entities:
        entity_type, start, end = entity["entity_group"], entity["start"], entity["end"]
        korean, english, colour = type_style(entity_type)
        title = f"{entity_type} {korean} ({english}) · {entity['score']:.3f}"
        parts.append(html.escape(text[position:start]))
        parts.append(
            f'<mark class="entity" data-type="{html.escape(entity_type)}" data-start="{start}" data-end="{end}" '
            f'data-score="{entity["score"]!r}" title="{html.escape(title)}" style="background-color: {colour}">'
            f"{html.escape(text[start:end])}</mark>"
        )
        position = end
    parts.append(html.escape(text[position:]))
    return f'<div class="ner-output" data-count="{len(entities)}">{"".join(parts)}</div>'


def alternatives_html(analyses: list[dict]) -> str:
    """The analyses (best first), each with its probability P(tags | text) and its entities."""
    items = []
    for rank, analysis in enumerate(analyses, 1):
        found = ", ".join(f"{e['word']} ({e['entity_group']})" for e in analysis["entities"]) or "no entities"
        items.append(
            f'<li data-rank="{rank}" data-probability="{analysis["probability"]!r}">'
            f"P = {analysis['probability']:.3f}: {html.escape(found)}</li>"
        )
    return f'<ol class="ner-alternatives">{"".join(items)}</ol>'


def analyze(text: str | None, ner, fixed: list[dict] | None = None) -> tuple[str, list[list], str, str]:
    """Tag `text` with the pipeline `ner`, under the `fixed` entities (pipeline constraints) if any: (highlighted
    HTML of the best analysis, its table rows, message for the page, the `ALTERNATIVES` best analyses)."""
    text = text or ""
    if len(text) > MAX_CHARACTERS:
        message = (
            f"⚠️ The text has {len(text):,} characters; this demo tags at most {MAX_CHARACTERS:,}. "
            f"Nothing was tagged: split the text into parts of at most {MAX_CHARACTERS:,} characters."
        )
        return "", [], message, ""
    if not text.strip():
        return "", [], "", ""
    try:
        analyses = ner(text, aggregation_strategy="simple", top_k=ALTERNATIVES, constraints=fixed or None)
    except ValueError as error:  # a fix out of the text, or one no tag sequence can hold
        return "", [], f"⚠️ {error}", ""
    entities = analyses[0]["entities"]
    rows = [[e["entity_group"], e["word"], e["start"], e["end"], round(e["score"], 3)] for e in entities]
    message = f"{len(entities)} entities in {len(text):,} characters."
    if fixed:
        message += " Re-tagged with " + ", ".join(f"{text[f['start'] : f['end']]} = {f['label']}" for f in fixed) + "."
    return entities_html(text, entities), rows, message, alternatives_html(analyses)


def fix_and_analyze(text: str | None, start, end, label: str | None, ner) -> tuple[str, list[list], str, str]:
    """Re-tag `text` with the characters [start, end) fixed as one entity of type `label` (or as no entity)."""
    if start is None or end is None or not label:
        return analyze(text, ner)
    return analyze(text, ner, [{"start": int(start), "end": int(end), "label": label}])


def build_demo(ner, examples: list[str] = EXAMPLES) -> gr.Blocks:
    """The page around the pipeline `ner`: text box and `examples`, highlighted text, legend, entity table."""
    types = entity_types(ner.model.config.id2label)
    with gr.Blocks(title="koelectra-crf: Korean NER", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Korean named-entity recognition (개체명 인식)\n"
            f"Encoder + BiLSTM + CRF, model `{ner.model.name_or_path}`. Spans are the CRF's Viterbi path; "
            f"confidence is the CRF's probability of the entity. Up to {MAX_CHARACTERS:,} characters; long texts "
            "are tagged whole. Below the entities: the most probable analyses, and re-tagging with one entity fixed."
        )
        text = gr.Textbox(
            label="Text (한국어)", lines=5, max_lines=20, elem_id="text-input",
            placeholder="Type or paste Korean text, or pick an example below.",
        )  # fmt: skip
        button = gr.Button("Analyze (분석)", variant="primary", elem_id="analyze-button")
        gr.Examples(examples, inputs=text, label="Examples (예문)")
        gr.HTML(legend_html(types), css_template=OUTPUT_CSS, js_on_load=None, elem_id="legend")
        highlighted = gr.HTML(css_template=OUTPUT_CSS, js_on_load=None, elem_id="entities")
        message = gr.Markdown(elem_id="message")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Entities (개체)", interactive=False, elem_id="table")
        gr.Markdown(f"### The {ALTERNATIVES} most probable analyses (가장 확률 높은 분석)")
        alternatives = gr.HTML(elem_id="alternatives")
        gr.Markdown("### Fix one entity and re-tag the rest (개체 고정 후 재분석): character offsets, end exclusive")
        with gr.Row():
            start = gr.Number(label="start", precision=0, elem_id="fix-start")
            end = gr.Number(label="end", precision=0, elem_id="fix-end")
            label = gr.Radio([*types, NO_ENTITY], label="type (O: no entity)", elem_id="fix-type")
        fix = gr.Button("Re-tag (재분석)", elem_id="fix-button")
        outputs = [highlighted, table, message, alternatives]
        gr.on(
            [button.click, text.submit], lambda t: analyze(t, ner), inputs=text, outputs=outputs, api_name="analyze",
        )  # fmt: skip
        fix.click(
            lambda t, s, e, lab: fix_and_analyze(t, s, e, lab, ner), inputs=[text, start, end, label],
            outputs=outputs, api_name="fix",
        )  # fmt: skip
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder or Hub id (default: $MODEL_ID)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=None, help="interface to listen on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument(
        "--examples", help="labelled data whose first texts are the examples (doccano, Label Studio, CoNLL, KLUE TSV)"
    )
    parser.add_argument("--examples_format", default="auto", help="its format, when the extension does not tell")
    args = parser.parse_args()
    examples = example_texts(args.examples, args.examples_format)
    ner = pipeline("token-classification", model=args.model, trust_remote_code=True)
    # System fonts: the default theme would fetch Google Fonts, which an offline browser cannot reach.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    build_demo(ner, examples).launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme)


if __name__ == "__main__":
    main()
