#!/usr/bin/env bash
# The moving-digits benchmark at GPU size (recipes/moving_digits/{teacher,scm,dcm,dmd,rcm}.yaml: Wan2.1 at width
# 256, 8 blocks, bf16, 9 frames of 32x32) on one GPU, in stages that each fit in 10 minutes on one H200.
# Everything a stage writes that the next machine needs goes to ${OUT:-runs/moving_digits_out}: logs, wall times
# (times.txt), the teacher packed in 15 MiB parts, table rows as JSON.
#
#   OUT=o1 bash benchmarks/moving_digits_gpu.sh teacher        # both feature networks and the teacher; packed as
#                                                              # o1/teacher.tar.part-*
#   cat o1/teacher.tar.part-* | tar x                          # on each next machine, from the repository root
#   OUT=o2 bash benchmarks/moving_digits_gpu.sh reference      # data and 50-step CFG teacher rows: o2/rows-reference.json
#   OUT=o3 bash benchmarks/moving_digits_gpu.sh student rcm    # train one student, then its rows: o3/rows-rcm.json
#   OUT=o4 bash benchmarks/moving_digits_gpu.sh student scm    # ... and dcm, dmd, one machine each
#   OUT=o5 bash benchmarks/moving_digits_gpu.sh students scm dcm dmd rcm   # or side by side on one machine
#   AT=1000 OUT=o6 bash benchmarks/moving_digits_gpu.sh rows scm rcm   # rows again, at iteration 1000
#   bash benchmarks/moving_digits_gpu.sh table o2/rows-reference.json o3/rows-rcm.json ...   # the table (any machine)
#
# `table` writes benchmarks/moving_digits_table.md and benchmarks/moving_digits_strips.png. TABLE_ARGS adds
# moving_digits_table.py options to the sampling stages (e.g. "--num 250 --seeds 0 1"), SETS `rcm run` overrides
# to the training ones (e.g. "--set run.iterations=3000"). SIZE=tiny DEVICE=cpu runs the same stages with the
# CPU-sized recipes (a check of this script; with SETS="--set run.iterations=10" in a few minutes). RESUME=1
# continues students' runs that a CAP stopped (ROWS=0: the students stage trains and samples nothing); AT=N
# samples each student's checkpoint of iteration N.
set -euo pipefail
out=${OUT:-runs/moving_digits_out}
size=${SIZE:-gpu}
device=${DEVICE:-cuda}
runs=runs/moving_digits
[[ $size == tiny ]] && runs=runs/moving_digits_tiny
mkdir -p "$out" "$runs"
read -ra sets <<< "${SETS:-}"
read -ra extra <<< "${TABLE_ARGS:-}"
table=(python benchmarks/moving_digits_table.py --size "$size" --device "$device" --runs "$runs")
[[ -n ${RESUME:-} ]] && table+=(--resume)
# AT=N: rows from each student's checkpoint of iteration N (files named *-atN), not its newest.
at=${AT:+-at$AT}
[[ -n ${AT:-} ]] && table+=(--iteration "$AT")
for s in "${sets[@]}"; do [[ $s == --set ]] || table+=(--set "$s"); done

timed() {  # timed NAME COMMAND...: run, log to OUT/NAME.log, append the wall time to OUT/times.txt
  local name=$1 start=$SECONDS
  shift
  "$@" > "$out/$name.log" 2>&1 || { echo "$name failed, see $out/$name.log" >&2; tail -20 "$out/$name.log" >&2; return 1; }
  echo "$name: $((SECONDS - start)) s" | tee -a "$out/times.txt"
}

need_teacher() {
  [[ -d $runs/teacher ]] || { echo "no teacher in $runs/teacher: run the teacher stage and unpack its parts first" >&2; exit 2; }
}

pack_teacher() {  # the teacher's newest EMA weights, recipe and log, with both feature networks
  local ckpt classifiers
  ckpt=$runs/teacher/checkpoints/$(cat "$runs/teacher/checkpoints/latest")
  classifiers=$(python - "$size" <<'EOF'
import sys
from pathlib import Path

from rcm_registry import registry
from rcm_registry.recipe.load import load_recipe
from rcm_registry.recipe.validate import validate_recipe

path = Path("recipes/moving_digits") / ("teacher_tiny.yaml" if sys.argv[1] == "tiny" else "teacher.yaml")
body = validate_recipe(load_recipe(path), registry(), str(path)).body
print(" ".join(sorted({m.config.classifier for m in body.metrics if hasattr(m.config, "classifier")})))
EOF
)
  # shellcheck disable=SC2086  # the classifier paths hold no spaces
  tar c "$runs/teacher/recipe.yaml" "$runs/teacher/metrics.jsonl" "$runs/teacher/checkpoints/latest" \
    "$ckpt/ema.safetensors" "$ckpt/meta.json" "$ckpt/recipe.yaml" $classifiers | split -b 15M - "$out/teacher.tar.part-"
}

rows() {  # rows METHOD NAME: METHOD's table rows (saved for `table`), its table and strips as OUT/*-NAME.*
  "${table[@]}" --no-train --no-reference --methods "$1" "${extra[@]}" --save-rows "$out/rows-$2.json" \
    --out "$out/table-$2.md" --strips "$out/strips-$2.png"
}

sample_rows() {  # sample_rows METHOD...: the rows of each that has a checkpoint, side by side
  local m n
  for m in "$@"; do
    n=${m//\//_}$at
    [[ -d $runs/$m/checkpoints ]] || continue
    (rows "$m" "$n" > "$out/rows-$n.log" 2>&1) &
  done
  wait
}

case ${1:-} in
  teacher)
    # The feature networks train beside the teacher (the digit classifier on the CPU).
    timed teacher "${table[@]}" --methods --train-only
    pack_teacher
    ;;
  reference)
    need_teacher
    timed reference "${table[@]}" --no-train --methods "${extra[@]}" --save-rows "$out/rows-reference.json" \
      --out "$out/table-reference.md" --strips "$out/strips-reference.png"
    ;;
  student)
    shift
    [[ $# -eq 1 ]] || { echo "student: name one method (rcm, scm, dcm or dmd)" >&2; exit 2; }
    need_teacher
    timed "train-$1" "${table[@]}" --methods "$1" --train-only
    timed "rows-$1$at" rows "$1" "$1$at"
    ;;
  students)
    # Several students side by side on the one GPU (each alone leaves it mostly idle: these networks are small
    # enough that kernel launches, not the GPU, set the pace), then their rows side by side. CAP (seconds,
    # default 540) stops training that would overrun a stage; a stopped run keeps its last checkpoint, and
    # `rcm run ... --resume` continues it on the next machine. ROWS=0 trains only (a stretch that a later
    # stage continues; its rows would be of a checkpoint no table wants).
    shift
    [[ $# -gt 0 ]] || { echo "students: name the methods (rcm, scm, dcm, dmd, jvp_study/scm_fp32, ...)" >&2; exit 2; }
    need_teacher
    for m in "$@"; do
      n=${m//\//_}
      (rc=0; timeout "${CAP:-540}" "${table[@]}" --methods "$m" --train-only > "$out/train-$n.log" 2>&1 || rc=$?
       echo "train-$n: exit $rc (124: stopped by CAP)" >> "$out/times.txt") &
    done
    wait
    [[ ${ROWS:-1} == 0 ]] || sample_rows "$@"
    ;;
  rows)
    # Rows of students trained earlier on this machine, side by side (e.g. again with AT=N).
    shift
    sample_rows "$@"
    ;;
  table)
    shift
    [[ $# -gt 0 ]] || { echo "table: name the rows files, the reference first" >&2; exit 2; }
    python benchmarks/moving_digits_table.py --from-rows "$@"
    ;;
  *)
    echo "usage: moving_digits_gpu.sh teacher | reference | student METHOD | students METHOD... | rows METHOD..." \
      "| table ROWS.json..." >&2
    exit 2
    ;;
esac
