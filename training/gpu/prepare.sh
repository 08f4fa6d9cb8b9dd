#!/usr/bin/env bash
# Here, before a session's GPU call: pack into .gpu/ (ignored by git) what the `device` tool's GPU machine lacks.
#
#   bash training/gpu/prepare.sh [SHARED]      # SHARED: the data folder beside the checkout (default ../shared)
#
# That machine (H200, Python 3.12, its own torch) starts bare, receives the checkout and the paths a call carries
# (64 MiB in all) and never ../shared, and reaches no network. Its transformers (5.17 when last seen) is older than
# the project needs (configuration_koelectra_crf.MIN_TRANSFORMERS) and it has no datasets, evaluate or seqeval. So:
# - .gpu/wheels/: wheels of the missing packages (seqeval has none on PyPI: built here, pure Python);
# - .gpu/transformers.zip: this machine's transformers version, without the modeling code of models the project
#   does not load (a whole wheel is 13 MB, which with the encoder would not fit in 64 MiB);
# - .gpu/shared.tar.gz: the e5 encoder and the KLUE files the presets read from ../shared (40 MB: gzip takes a
#   third off the fp16 weights);
# - .gpu/kiwi-analyses.json.gz: Kiwi's analyses of the labelled KLUE sentences (kiwi_replay.py), for morpheme
#   features there: kiwipiepy's model (88 MB) does not fit.
# Then `training/gpu/study.sh` there. Never commit .gpu/: it holds others' data and weights.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
shared=$(realpath "${1:-$root/../shared}")
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" && { grep -qxF "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >>"$exclude"; }
rm -rf .gpu && mkdir -p .gpu/wheels
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT

target=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 -m pip download -q --no-deps "${target[@]}" -d .gpu/wheels "datasets==$(version datasets)" \
    "dill==$(version dill)" "multiprocess==$(version multiprocess)" "evaluate==$(version evaluate)"
python3 -m pip wheel -q --no-deps -w .gpu/wheels "seqeval==$(version seqeval)"

python3 -m pip download -q --no-deps "${target[@]}" -d "$work" "transformers==$(version transformers)"
unzip -q "$work"/transformers-*.whl -d "$work/site"
# Every model folder keeps what the Auto classes import (package, configuration and tokenization files); only the
# encoders the project loads (BERT for e5, ELECTRA for KoELECTRA, RoBERTa / XLM-R) keep their modeling code.
for folder in "$work"/site/transformers/models/*/; do
    case $(basename "$folder") in auto | bert | electra | roberta | xlm_roberta) ;;
    *) find "$folder" -type f ! -name "__init__.py" ! -name "configuration_*.py" ! -name "tokenization_*.py" -delete ;;
    esac
done
(cd "$work/site" && zip -qr "$root/.gpu/transformers.zip" .)

python3 training/gpu/kiwi_replay.py .gpu/kiwi-analyses.json.gz "$shared"/data/klue-ner-v1.1/*.tsv
tar czf .gpu/shared.tar.gz -C "$shared" encoders/multilingual-e5-small-ko data/klue-ner-v1.1 data/klue-ner-raw
echo "carry .gpu: $(du -sb .gpu | cut -f1) bytes + $(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1) tracked (64 MiB = 67108864)"
