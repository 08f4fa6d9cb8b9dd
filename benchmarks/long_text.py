"""Long texts through the CRF pipeline: this version against the pipeline file at a git revision, in one process.

    python benchmarks/long_text.py --compare_with main     # multilingual-e5-small-ko from ../shared
    python benchmarks/long_text.py --compare_with main --random_encoder --texts 4 --characters 1000

`--texts` texts of at least `--characters` characters each (KLUE training sentences joined by spaces), each read
through several windows (the config's max_length 128 tokens, stride 32), are tagged as one list at `--batch_size`,
by both pipelines in turn for `--repeats` rounds, with `aggregation_strategy="simple"` (entity probabilities) and
`"none"` (token marginals), the two alternating in each round. Both pipelines share one model (the default head:
characters, BiLSTM, CRF) and tokenizer; the old one is `pipeline_koelectra_crf.py` as it is at the revision, loaded
as a module of this package (its relative imports are today's). Prints one JSON object: the seconds of each run,
new / old (the median of the rounds' ratios), whether the outputs agree, and what each spent in one run on the CRF's
decode and marginals (tagged positions and seconds; the model's forward decodes every window it runs, in both) and on
the tokenizer (texts and seconds).
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from shared_data import E5, SENTENCES
from transformers import AutoConfig, AutoTokenizer

from koelectra_crf import KoElectraCrfConfig, KoElectraCrfForTokenClassification
from koelectra_crf.inputs import read_texts
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("simple", "none")


def pipeline_class_at(revision: str) -> type:
    """`KoElectraCrfTokenClassificationPipeline` as `pipeline_koelectra_crf.py` defines it at git `revision`."""
    source = subprocess.run(["git", "show", f"{revision}:koelectra_crf/pipeline_koelectra_crf.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "pipeline_koelectra_crf.py"
    path.write_text(source, encoding="utf-8")
    name = "koelectra_crf._pipeline_at_revision"  # inside the package, so that `from .alignment import` resolves
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.KoElectraCrfTokenClassificationPipeline


def long_texts(count: int, characters: int) -> list[str]:
    """`count` texts of consecutive KLUE sentences, each at least `characters` long."""
    sentences, texts = iter(read_texts(SENTENCES)), []
    for _ in range(count):
        text = next(sentences)
        while len(text) < characters:
            text += " " + next(sentences)
        texts.append(text)
    return texts


@contextmanager
def stage_costs(model, tokenizer, stats: dict):
    """Within the block, add to `stats` the sizes and seconds of the calls of the CRF's `decode` and `marginals`
    (positions: the tagged positions they cover) and of the tokenizer (texts)."""
    crf, tokenizer_class = model.crf, type(tokenizer)
    tokenize = tokenizer_class.__call__

    def timed(name: str, method, size):
        def call(*args, **kwargs):
            started = time.perf_counter()
            result = method(*args, **kwargs)
            stats[name]["seconds"] += time.perf_counter() - started
            stats[name]["size"] += size(*args)
            return result

        return call

    def positions(emissions, mask) -> int:
        return int(mask.sum())

    crf.decode = timed("decode", crf.decode, positions)  # instance attributes, in front of the methods
    crf.marginals = timed("marginals", crf.marginals, positions)
    tokenizer_class.__call__ = timed(
        "tokenizer", tokenize, lambda _, text, *__: 1 if isinstance(text, str) else len(text)
    )
    try:
        yield
    finally:
        del crf.decode, crf.marginals
        tokenizer_class.__call__ = tokenize


def agreement(new: list, old: list) -> dict:
    """Whether the entities (everything but the scores) are the same, and the largest score difference."""

    def without_scores(results: list) -> list:
        return [[{k: v for k, v in entity.items() if k != "score"} for entity in text] for text in results]

    same = without_scores(new) == without_scores(old)
    scores = [(a["score"], b["score"]) for x, y in zip(new, old, strict=True) for a, b in zip(x, y, strict=same)]
    return {"same_entities": same, "max_score_difference": max((abs(a - b) for a, b in scores), default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare_with", metavar="REV", required=True, help="git revision of the old pipeline")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--characters", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="(default: torch's)")
    parser.add_argument("--random_encoder", action="store_true", help="e5-small-ko's architecture, random weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.random_encoder:
        model = KoElectraCrfForTokenClassification(KoElectraCrfConfig(encoder=AutoConfig.from_pretrained(E5)))
    else:
        model = KoElectraCrfForTokenClassification.from_encoder(str(E5))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(E5)
    pipelines = {
        "new": KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer, device=-1),
        "old": pipeline_class_at(args.compare_with)(model=model, tokenizer=tokenizer, device=-1),
    }
    texts = long_texts(args.texts, args.characters)
    windows = [len(list(pipelines["new"].preprocess(text))) for text in texts]
    seconds = {name: {strategy: [] for strategy in STRATEGIES} for name in pipelines}
    stages = {name: {strategy: {stage: {"size": 0, "seconds": 0.0} for stage in ("decode", "marginals", "tokenizer")}
                     for strategy in STRATEGIES} for name in pipelines}  # fmt: skip
    results = {name: {} for name in pipelines}
    with torch.inference_mode():
        pipelines["new"](texts[:1], batch_size=args.batch_size)  # warm up
        for name, ner in pipelines.items():  # outputs and stage costs, one run each
            for strategy in STRATEGIES:
                with stage_costs(model, tokenizer, stages[name][strategy]):
                    results[name][strategy] = ner(texts, aggregation_strategy=strategy, batch_size=args.batch_size)
        for round_index in range(args.repeats):
            for strategy in STRATEGIES:
                # Each round in the other order, so that a machine getting faster or slower favours neither.
                for name in sorted(pipelines, reverse=round_index % 2 == 1):
                    started = time.perf_counter()
                    pipelines[name](texts, aggregation_strategy=strategy, batch_size=args.batch_size)
                    seconds[name][strategy].append(time.perf_counter() - started)
    report = {
        "compared_with": args.compare_with,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "encoder": "random" if args.random_encoder else "multilingual-e5-small-ko",
        "texts": len(texts),
        "characters_per_text": sum(map(len, texts)) / len(texts),
        "windows_per_text": sum(windows) / len(windows),
        "batch_size": args.batch_size,
        "seconds": seconds,
        # The median over rounds of the ratio within a round: the machine's load changes less within one.
        "new_over_old": {
            strategy: statistics.median(
                new / old for new, old in zip(seconds["new"][strategy], seconds["old"][strategy], strict=True)
            )
            for strategy in STRATEGIES
        },  # fmt: skip
        "stages": stages,
        "agreement": {
            strategy: agreement(results["new"][strategy], results["old"][strategy]) for strategy in STRATEGIES
        },  # fmt: skip
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
