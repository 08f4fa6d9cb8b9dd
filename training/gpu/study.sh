#!/usr/bin/env bash
# There, on the `device` tool's GPU machine, from the repository root, with .gpu/ made here by prepare.sh:
#
#   run(command="MINUTES=8 bash training/gpu/study.sh heads", carry=[".gpu"], timeout_s=600)
#   run(command="MINUTES=8 bash training/gpu/study.sh self-training", carry=[".gpu"], timeout_s=600)
#   run(command="MINUTES=8 bash training/gpu/study.sh new-types", carry=[".gpu"], timeout_s=600)
#   run(command="MINUTES=9 LEARNING_RATES=1e-4 bash training/gpu/study.sh morphology", carry=[".gpu"], timeout_s=600)
#
# heads (issue #12): `koelectra-crf ablation --study heads` at each of LEARNING_RATES (a sweep: one output folder
#   per rate), RUNNERS runners per rate (default 15: every variant × seed at once, one GPU shared), each run
#   trained until early stopping.
# self-training (issue #13): one teacher per seed (the `character` variant), which pseudo-labels the raw KLUE
#   sentences (and the validation split, to score the kept pseudo-labels per threshold); then one student per seed
#   and threshold, from the pretrained encoder, on the labelled plus the kept pseudo-labelled sentences, with the
#   teacher's recipe and its number of steps, at the first of LEARNING_RATES.
# new-types (issue #37, item 4): one parent per seed, trained on the training split with DT, TI and QT relabelled O
#   (`convert --keep_types PS LC OG`, validation too) and those three types' labels only (`--entity_types`); then all
#   six types taught with FEW (default "100 300") of the training sentences, from the parent (`--model_name_or_path`:
#   the shared labels keep its weights, the new ones start as in a fresh model) and from the encoder alone, each
#   child trained until early stopping by steps (evaluated every 40, patience 5, at most 1,200 steps, the best kept)
#   and scored on the whole validation split (per-type F1 in its eval_results.json).
# morphology (issue #35): the encoder adapted to the raw KLUE sentences (`adapt`, docs/results.md's recipe), and the
#   character head in four arms, SEEDS seeds each, until early stopping: as it is, + morpheme features (Kiwi's
#   analyses replayed from .gpu/kiwi-analyses.json.gz: kiwi_replay.py), + the adapted encoder, + both. The first two
#   arms train beside `adapt`, the other two once it is done; each run's error kinds (`errors`) follow its training.
#   ADAPT: flags added to `adapt` (e.g. --max_steps 2).
# new-types and morphology train with the CPU runs' recipe of docs/results.md (`$common`: multi-sample dropout 1,
#   batches grouped by length), at the first of LEARNING_RATES: give LEARNING_RATES=1e-4 for theirs.
#
# Whatever is not done after MINUTES is stopped; the same command again on the same machine, while it is still warm,
# resumes new-types and morphology (finished runs skipped, stopped ones from their last checkpoint). Results come
# back as $OUT/results.tar.gz (every run's eval_results.json, trainer_state.json with the per-epoch scores, even of a
# stopped run, logs; no weights), and a summary on stdout. Knobs (environment): MINUTES (8), SEEDS (3),
# LEARNING_RATES ("5e-5"; e.g. "5e-5 1e-4 2e-4" with SEEDS=1 for a sweep), RUNNERS, EXTRA (training flags, default
# below), THRESHOLDS ("0.5 0.9"), CONFIDENCE (sequence_probability), RAW_LINES (all 21,008 raw sentences), FEW
# ("100 300"), ADAPT.
set -uo pipefail
set -m  # job control: each background job in a process group of its own, so that stopping it stops its trainings
mode=${1:?usage: study.sh heads|self-training|new-types|morphology}
minutes=${MINUTES:-8}
seeds=${SEEDS:-3}
learning_rates=${LEARNING_RATES:-5e-5}
# Without the presets' spacing augmentation (theirs since issue #38): the recipe of these studies' earlier results.
extra=${EXTRA:-"--num_train_epochs 20 --early_stopping_patience 3 --disable_tqdm true --spacing_augmentation 0"}
# What the CPU runs of new-types and morphology add to the `character` variant (docs/results.md's `$common`).
study_recipe="--multi_sample_dropout 1 --train_sampling_strategy group_by_length"
deadline=$((SECONDS + minutes * 60))
out=${OUT:-/tmp/study-out}
work=/tmp/study
mkdir -p "$out" "$work" /tmp/site ../shared

python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/wheels/*.whl || exit 1
unzip -q -o .gpu/transformers.zip -d /tmp/site || exit 1
tar xzf .gpu/shared.tar.gz -C ../shared || exit 1
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, datasets, koelectra_crf
print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
      '| transformers', transformers.__version__, '| datasets', datasets.__version__)" || exit 1

config=training/configs/offline-e5-small.json
validation=../shared/data/klue-ner-v1.1/klue-ner-v1.1_dev-valid.tsv
character=$(python3 -c "from koelectra_crf.ablation import VARIANTS; print(' '.join(VARIANTS['character']))")

# Wait for the background jobs, or stop them all at the deadline.
wait_or_stop() {
    while [ "$SECONDS" -lt "$deadline" ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
    local job
    for job in $(jobs -rp); do
        echo "deadline: stopping job $job and what it started"
        kill -TERM -- "-$job"
    done
    wait
}

# A run a deadline stopped resumes from its last checkpoint in the next call on the same (still warm) machine; a
# finished one is skipped.
resume_flag() { ls -d "$1"/checkpoint-* >/dev/null 2>&1 && echo "--resume_from_checkpoint last"; }

train() {  # train FOLDER SEED [FLAGS...]: one run of the teacher's recipe, its log beside it
    local folder=$1 seed=$2; shift 2
    [ -f "$folder/train_results.json" ] && return 0
    mkdir -p "$folder"
    # shellcheck disable=SC2086,SC2046  # $extra and $character are lists of flags
    python3 -m koelectra_crf.train --config $config --output_dir "$folder" --seed "$seed" $extra $character \
        --learning_rate "${learning_rates%% *}" $(resume_flag "$folder") "$@" >>"$folder.log" 2>&1
}

scored() {  # scored FOLDER SEED [FLAGS...]: train, then the kept model's error kinds on the validation split
    local errors=$work/errors/$(basename "$1")
    train "$@" || return 1
    [ -f "$errors/errors.json" ] && return 0
    python3 -m koelectra_crf errors "$1" --test_file "$validation" --batch_size 64 --output_dir "$errors" \
        >"$1-errors.log" 2>&1
}

case $mode in
heads)
    for rate in $learning_rates; do
        for runner in $(seq "${RUNNERS:-15}"); do
            # shellcheck disable=SC2086
            python3 -m koelectra_crf ablation --study heads --config $config --output_dir $work/heads-lr$rate \
                --seeds "$seeds" -- $extra --learning_rate "$rate" >"$work/runner-lr$rate-$runner.log" 2>&1 &
            sleep 2  # runners claim runs in turn
        done
    done
    wait_or_stop
    for rate in $learning_rates; do
        python3 -m koelectra_crf ablation --study heads --output_dir $work/heads-lr$rate --seeds "$seeds" --report
    done
    ;;
self-training)
    raw=$work/raw.tsv
    head -n "${RAW_LINES:--0}" ../shared/data/klue-ner-raw/klue-ner-train-sentences.tsv >"$raw"
    for seed in $(seq 0 $((seeds - 1))); do
        (
            train $work/teacher-s$seed "$seed" || exit 1
            for input in "$validation" "$raw"; do
                name=$(basename "$input" .tsv)
                thresholds=()
                [ "$input" = "$validation" ] && thresholds=(--thresholds 0 ${THRESHOLDS:-0.5 0.9})
                python3 -m koelectra_crf pseudo-label $work/teacher-s$seed --input "$input" --batch_size 64 \
                    --output $work/pseudo-s$seed/$name.tsv --confidence "${CONFIDENCE:-sequence_probability}" \
                    "${thresholds[@]}" >"$work/pseudo-s$seed-$name.log" 2>&1 || exit 1
            done
            # The students get the teacher's budget (its schedule's steps, evaluated once per epoch of the labelled
            # data), so that the pseudo-labels are the only difference: by epochs they would train more steps.
            budget=$(python3 -c "import json
state = json.load(open('$work/teacher-s$seed/trainer_state.json'))
every = state['max_steps'] // round(state['num_train_epochs'])
print('--max_steps', state['max_steps'], '--eval_strategy steps --eval_steps', every,
      '--save_strategy steps --save_steps', every)") || exit 1
            for threshold in ${THRESHOLDS:-0.5 0.9}; do
                # shellcheck disable=SC2086  # $budget is a list of flags
                train $work/student-$threshold-s$seed "$seed" $budget --pseudo_label_file $work/pseudo-s$seed/raw.tsv \
                    --pseudo_label_threshold "$threshold" \
                    --pseudo_label_confidence "${CONFIDENCE:-sequence_probability}" &
            done
            wait
        ) &
    done
    wait_or_stop
    ;;
new-types)
    train_file=../shared/data/klue-ner-v1.1/klue-ner-v1.1_dev-train.tsv
    # A few hundred sentences make 4-10 steps an epoch: patience 3 in epochs would stop a child after a dozen steps.
    # The children are evaluated every 40 steps until five evaluations without gain (200 steps), capped at 1,200 steps:
    # a fixed 400 left half the children from the encoder best at their last evaluation (docs/results.md).
    few_shot="$study_recipe --max_steps 1200 --eval_strategy steps --eval_steps 40 --save_strategy steps \
        --save_steps 40 --early_stopping_patience 5"
    for split in train valid; do
        source_file=$train_file && [ $split = valid ] && source_file=$validation
        python3 -m koelectra_crf convert "$source_file" $work/parent-$split.tsv --keep_types PS LC OG --overwrite \
            || exit 1
    done
    for seed in $(seq 0 $((seeds - 1))); do
        (
            # shellcheck disable=SC2086  # $study_recipe is a list of flags
            train $work/parent-s$seed "$seed" $study_recipe --train_file $work/parent-train.tsv \
                --validation_file $work/parent-valid.tsv --entity_types PS LC OG || exit 1
            for few in ${FEW:-100 300}; do
                # shellcheck disable=SC2086  # $few_shot is a list of flags
                train $work/child-$few-parent-s$seed "$seed" --max_train_samples "$few" $few_shot \
                    --model_name_or_path $work/parent-s$seed &
                # shellcheck disable=SC2086
                train $work/child-$few-encoder-s$seed "$seed" --max_train_samples "$few" $few_shot &
            done
            wait
        ) &
    done
    wait_or_stop
    ;;
morphology)
    mkdir -p /tmp/site/kiwipiepy && cp training/gpu/kiwi_replay.py /tmp/site/kiwipiepy/__init__.py || exit 1
    export KIWI_REPLAY=$PWD/.gpu/kiwi-analyses.json.gz
    adapted=$work/adapted-e5
    (
        if [ ! -f $adapted/config.json ]; then
            # shellcheck disable=SC2086,SC2046  # $ADAPT is a list of flags
            python3 -m koelectra_crf adapt ../shared/encoders/multilingual-e5-small-ko \
                --input ../shared/data/klue-ner-raw/klue-ner-train-sentences.tsv --output $adapted \
                --validation_file "$validation" --eval_strategy epoch --eval_on_start true --num_train_epochs 2 \
                --per_device_train_batch_size 16 --learning_rate 1e-4 --warmup_steps 0.06 --weight_decay 0.01 \
                --save_strategy steps --save_steps 200 --save_total_limit 1 --logging_steps 50 --seed 0 \
                --report_to none --disable_tqdm true $(resume_flag $adapted) ${ADAPT:-} >>$work/adapt.log 2>&1 \
                || exit 1
        fi
        for seed in $(seq 0 $((seeds - 1))); do
            # shellcheck disable=SC2086  # $study_recipe is a list of flags
            scored $work/adapted-s$seed "$seed" $study_recipe --encoder_name_or_path $adapted &
            # shellcheck disable=SC2086
            scored $work/both-s$seed "$seed" $study_recipe --encoder_name_or_path $adapted --morpheme_features true &
        done
        wait
    ) &
    for seed in $(seq 0 $((seeds - 1))); do
        # shellcheck disable=SC2086
        scored $work/as-it-is-s$seed "$seed" $study_recipe &
        # shellcheck disable=SC2086
        scored $work/morph-s$seed "$seed" $study_recipe --morpheme_features true &
    done
    wait_or_stop
    ;;
*) echo "unknown study $mode: heads, self-training, new-types or morphology" && exit 2 ;;
esac

# One line per run: the best entity F1 of its evaluations so far, and how many there were.
find $work -name trainer_state.json | sort | python3 -c "
import json, sys
best = {}
for path in sys.stdin.read().split():
    run = path.removesuffix('/trainer_state.json').split('/checkpoint-')[0].removeprefix('$work/')
    scores = [e['eval_entity_f1'] for e in json.load(open(path))['log_history'] if 'eval_entity_f1' in e]
    if scores:  # (not adapt's masked-LM run)
        best[run] = max(best.get(run, (0, 0)), (max(scores), len(scores)))
for run, (score, evaluations) in sorted(best.items()):
    print(f'{run}: best entity F1 {score:.2f} after {evaluations} evaluations')"
tar czf "$out/results.tar.gz" -C $work --exclude="*.safetensors" --exclude="*.pt" --exclude="*.pth" \
    --exclude="*.bin" --exclude="raw.tsv" --exclude="pseudo-s*/raw.tsv" --exclude="tokenizer*" .
ls -la "$out"
