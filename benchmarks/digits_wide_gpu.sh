#!/usr/bin/env bash
# The digits reproduction at the larger width (dim 256, 8 heads, 8 blocks) on one GPU: classifier, teacher,
# sCM, DMD and rCM students, then the table. Results (table, grid, logs) go to ${OUT:-runs/digits_wide}.
#
#   OUT=dir bash benchmarks/digits_wide_gpu.sh                  # everything in order (about half an hour)
#
# The same in stages, for machines that are lent a few minutes at a time:
#
#   OUT=dir bash benchmarks/digits_wide_gpu.sh teacher          # classifier and teacher, side by side; the
#                                                               # teacher run packed as OUT/teacher.tar.part-*
#   cat dir/teacher.tar.part-* | tar x                          # on the next machine, from the repo root
#   OUT=dir REFERENCE=1 bash benchmarks/digits_wide_gpu.sh students rcm scm   # students side by side, then
#                                                               # their rows (and the data/teacher rows;
#                                                               # TABLE_ARGS adds digits_table.py options)
#   python benchmarks/digits_table.py --from-rows dir1/rows.json dir2/rows.json ...   # the table
#
# Students trained side by side share the GPU; the steps are bound by kernel launches at this size, so
# they slow each other little. Every table row is sampled alone, after training.
set -euo pipefail
out=${OUT:-runs/digits_wide}
runs=runs/digits_wide
mkdir -p "$out" "$runs"
wide=(--set networks.teacher.dim=256 --set networks.teacher.num_heads=8 --set networks.teacher.ffn_dim=1024
      --set networks.teacher.num_layers=8 --set run.device=cuda --set run.cpu_threads=null)
table=(--runs "$runs" --num 500 --device cuda)

timed() {  # timed NAME COMMAND...: run, log to OUT/NAME.log, append the wall time to OUT/times.txt
  local name=$1 start=$SECONDS
  shift
  "$@" > "$out/$name.log" 2>&1 || { echo "$name failed, see $out/$name.log" >&2; tail -20 "$out/$name.log" >&2; return 1; }
  echo "$name: $((SECONDS - start)) s" | tee -a "$out/times.txt"
}

teacher() {
  timed classifier python benchmarks/train_digit_classifier.py &
  local classifier=$!
  timed teacher rcm run recipes/digits/teacher.yaml --out "$runs/teacher" "${wide[@]}" --set run.batch_size=512
  wait "$classifier"
}

student() {
  timed "$1" rcm run "recipes/digits/$1.yaml" --out "$runs/$1" "${wide[@]}" \
    --set "networks.teacher.weights.path=$runs/teacher" --set "networks.student.attention={use: triton_jvp}"
}

pack_teacher() {  # the teacher's newest EMA weights, recipe and log with the classifier, in 15 MiB parts
  local ckpt
  ckpt=$runs/teacher/checkpoints/$(cat "$runs/teacher/checkpoints/latest")
  tar c "$runs/teacher/recipe.yaml" "$runs/teacher/metrics.jsonl" "$runs/teacher/checkpoints/latest" \
    "$ckpt/ema.safetensors" "$ckpt/meta.json" "$ckpt/recipe.yaml" runs/digits/classifier.safetensors \
    | split -b 15M - "$out/teacher.tar.part-"
}

case ${1:-all} in
  teacher)
    teacher
    pack_teacher
    ;;
  students)
    shift
    [[ $# -gt 0 ]] || { echo "students: name the methods (rcm, scm, dmd, dcm)" >&2; exit 2; }
    [[ -f runs/digits/classifier.safetensors && -d $runs/teacher ]] \
      || { echo "no teacher in $runs/teacher: run the teacher stage and unpack its parts first" >&2; exit 2; }
    pids=()
    for m in "$@"; do student "$m" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
    reference=()
    [[ ${REFERENCE:-0} == 1 ]] || reference=(--no-reference)
    read -ra extra <<< "${TABLE_ARGS:-}"
    python benchmarks/digits_table.py "${table[@]}" --methods "$@" "${reference[@]}" "${extra[@]}" \
      --save-rows "$out/rows.json" --out "$out/digits_wide_table.md" --grid "$out/digits_wide_grid.png"
    ;;
  all)
    teacher
    for m in rcm dmd scm; do student "$m"; done
    python benchmarks/digits_table.py "${table[@]}" --methods scm dmd rcm \
      --out "$out/digits_wide_table.md" --grid "$out/digits_wide_grid.png"
    ;;
  *)
    echo "usage: digits_wide_gpu.sh [all | teacher | students METHOD...]" >&2
    exit 2
    ;;
esac
