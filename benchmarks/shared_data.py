"""Where the benchmarks find the workplace's data: `../shared` beside the checkout (see the README there)."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
E5 = SHARED / "encoders/multilingual-e5-small-ko"
SENTENCES = SHARED / "data/klue-ner-raw/klue-ner-train-sentences.tsv"
