#!/usr/bin/env bash
# The GPU study of issue 15: every spec of specs/study/ through `minispec run`, re-runnable
# (a second call continues: same run directories, DVC skips finished stages and training
# stages resume from their checkpoints), stopping cleanly before a deadline.
#
#   bash benchmarks/study_gpu.sh DEADLINE_S [STEPS] [-- EXTRA minispec run ARGS...]
#
# DEADLINE_S  seconds from now by which the script has packed its results and exited
# STEPS       optimizer steps of each one-shot student (64 x 256 = 16,384 tokens a step on the
#             specs' batch; the iterative rounds, core's w75 and iterative.yaml, get STEPS/2
#             each); default: the specs' 1222 (20.0M tokens)
# EXTRA       passed to every `minispec run` (e.g. --set data.source=... for a CPU check)
#
# Assumes: minispec on PATH with its wheels installed (.gpu setup), the teacher GGUF at
# $STUDY_TEACHER (default /tmp/smollm2.gguf), the corpus parts of benchmarks/study_corpus.py in
# .study/corpus/ (git-ignored): train.jsonl.xz.part-*, validation.jsonl.xz, test.jsonl.xz.
# Results: runs/study/<run>/ here; $OUT/study-results.tar.xz (metrics, logs, plots, reports,
# dvc.yaml/params.yaml/dvc.lock of every run; no models) when $OUT is set.
set -u
cd "$(dirname "$0")/.."
start=$(date +%s)
deadline_s=${1:?usage: study_gpu.sh DEADLINE_S [STEPS] [-- minispec run args]}
shift
steps=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then steps=$1; shift; fi
[ "${1:-}" = "--" ] && shift
extra=("$@")
pack_s=${STUDY_PACK_S:-20}          # kept back for packing the results
stop_at=$((start + deadline_s - pack_s))
teacher=${STUDY_TEACHER:-/tmp/smollm2.gguf}
runs=runs/study
data=.study/data
log() { echo "[study $(($(date +%s) - start))s] $*"; }

# --- the corpus: join + decompress once (sha256 checked against the manifest) -------------
unpack_corpus() {
    [ -s "$data/train.jsonl" ] && return 0
    log "unpacking .study/corpus into $data"
    python3 - "$data" <<'EOF' || exit 1
import glob, hashlib, json, lzma, os, sys
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
manifest = json.load(open(".study/corpus/MANIFEST.json"))
parts = sorted(glob.glob(".study/corpus/train.jsonl.xz.part-*"))
want = sorted(manifest["train"]["parts"])
if [os.path.basename(p) for p in parts] != want:
    sys.exit(f"error: .study/corpus holds {[os.path.basename(p) for p in parts]}, the manifest lists {want}: carry every part")
joined = b"".join(open(p, "rb").read() for p in parts)
text = lzma.decompress(joined)
if hashlib.sha256(text).hexdigest() != manifest["train"]["sha256"]:
    sys.exit("error: train.jsonl does not match MANIFEST.json's sha256")
open(os.path.join(out, "train.jsonl.partial"), "wb").write(text)
os.replace(os.path.join(out, "train.jsonl.partial"), os.path.join(out, "train.jsonl"))
for split in ("validation", "test"):
    with lzma.open(f".study/corpus/{split}.jsonl.xz") as src:
        open(os.path.join(out, f"{split}.jsonl"), "wb").write(src.read())
print(f"train.jsonl: {len(text)} bytes")
EOF
}

# --- one DVC cache for every run directory: identical stages (tokenize of the same corpus
# with the same tokenizer) are restored from DVC's run cache instead of running again -------
prepare_run_dir() {
    local dir=$runs/$1
    [ -d "$dir/.dvc" ] && return 0
    mkdir -p "$dir" "$runs/.dvc-cache"
    (cd "$dir" && python3 -m dvc init --no-scm -q && python3 -m dvc config cache.dir "$(cd ../.dvc-cache && pwd)")
}

# --- run one spec up to TARGET, within the time left ---------------------------------------
ok=()
failed=()
run_spec() {  # NAME SPEC TARGET [minispec run args...]
    local name=$1 spec=$2 target=$3
    shift 3
    local left=$((stop_at - $(date +%s)))
    if [ "$left" -lt 45 ]; then
        log "skip $name $target: ${left}s left"
        return 1
    fi
    prepare_run_dir "$name"
    log "run $name ($spec) up to $target, ${left}s left"
    # SIGINT first: minispec stops DVC and the stage (checkpoints stay for the next call)
    timeout --signal=INT --kill-after=25 "$left" \
        minispec run "$spec" --out "$runs/$name" --stage "$target" "$@" "${extra[@]}" \
        2>&1 | tee -a "$runs/$name.console.log"
    local code=${PIPESTATUS[0]}
    if [ "$code" -eq 0 ]; then ok+=("$name:$target"); else failed+=("$name:$target(rc=$code)"); fi
    log "$name $target: rc=$code"
    return "$code"
}

pack_results() {
    [ -n "${OUT:-}" ] || return 0
    log "packing results into $OUT/study-results.tar.xz"
    local list
    list=$(cd "$runs" && find . -maxdepth 1 -name '*.console.log'; for d in */; do
        for p in metrics logs reports dvc.yaml params.yaml dvc.lock importance; do
            [ -e "$d$p" ] && echo "$d$p"; done; done)
    # no models, checkpoints or tokens: metrics, logs (DVCLive curves, stage logs), reports, plots
    (cd "$runs" && echo "$list" | tar -cJf "$OUT/study-results.tar.xz" --exclude='*.safetensors' \
        --exclude='*.pt' --exclude='*.bin' --exclude='*.idx' -T -)
    ls -la "$OUT"
}
trap pack_results EXIT

unpack_corpus
mkdir -p "$runs"
gguf=(--set "teacher.source=$(realpath "$teacher")")
one=() half=() half_w75=()
if [ -n "$steps" ]; then
    one=(--set "distill.steps=$steps")
    half=(--set "distill.steps=$((steps / 2))")
    half_w75=(--set "prune.w75.distill.steps=$((steps / 2))")
fi
S=specs/study

# A part of the study (one session's GPU time holds only part of it): STUDY_TARGETS="core:distill@w50
# core:distill@d15" runs just those targets, in order, with the same settings as the phases below.
spec_args() {  # NAME -> the minispec run arguments that spec gets in the phases below
    case $1 in
    core) echo "${gguf[@]}" "${one[@]}" "${half_w75[@]}" ;;
    no-correction) echo "${gguf[@]}" "${one[@]}" ;;
    iterative) echo "${half[@]}" ;;
    esac
}
if [ -n "${STUDY_TARGETS:-}" ]; then
    for pair in $STUDY_TARGETS; do
        name=${pair%%:*}
        # shellcheck disable=SC2046  # spec_args's words are --set pairs without spaces
        run_spec "$name" "$S/$name.yaml" "${pair#*:}" $(spec_args "$name") || break
    done
    log "done: ${ok[*]:-nothing}; failed or stopped: ${failed[*]:-none}"
    exit 0
fi

# Phase 1: the students. core.yaml holds those of F1, F2, F3, F5 and round 1 of F6 (up to its
# report: evaluate scores them all on WikiText validation/test); then F4 and F6's round 2 up to
# their distillation (their final validation loss is in metrics/distill-w50.json).
run_spec core $S/core.yaml report "${gguf[@]}" "${one[@]}" "${half_w75[@]}"
run_spec no-correction $S/no-correction.yaml distill@w50 "${gguf[@]}" "${one[@]}"
[ -d "$runs/core/models/students/w75" ] &&
    run_spec iterative $S/iterative.yaml distill@w50 "${half[@]}"
# Phase 2, if time is left: their evaluation (the same windows as core's) and reports
run_spec no-correction $S/no-correction.yaml report "${gguf[@]}" "${one[@]}"
[ -d "$runs/core/models/students/w75" ] &&
    run_spec iterative $S/iterative.yaml report "${half[@]}"

log "done: ${ok[*]:-nothing}; failed or stopped: ${failed[*]:-none}"
