#!/usr/bin/env bash
# The digits reproduction at the larger width (dim 256, 8 heads, 8 blocks) on one GPU: classifier, teacher,
# sCM, DMD and rCM students, then the table. Results (table, grid, logs) go to ${OUT:-runs/digits_wide}.
#   OUT=/some/dir bash benchmarks/digits_wide_gpu.sh
set -euo pipefail
out=${OUT:-runs/digits_wide}
runs=runs/digits_wide
mkdir -p "$out" "$runs"
wide=(--set networks.teacher.dim=256 --set networks.teacher.num_heads=8 --set networks.teacher.ffn_dim=1024
      --set networks.teacher.num_layers=8 --set run.device=cuda --set run.cpu_threads=null)
python benchmarks/train_digit_classifier.py 2>&1 | tail -1 | tee "$out/classifier.log"
start=$SECONDS
rcm run recipes/digits/teacher.yaml --out "$runs/teacher" "${wide[@]}" --set run.batch_size=512 \
  > "$out/teacher.log" 2>&1
echo "teacher: $((SECONDS - start)) s" | tee -a "$out/times.txt"
for m in rcm dmd scm; do
  start=$SECONDS
  rcm run "recipes/digits/$m.yaml" --out "$runs/$m" "${wide[@]}" \
    --set "networks.teacher.weights.path=$runs/teacher" --set "networks.student.attention={use: triton_jvp}" \
    > "$out/$m.log" 2>&1
  echo "$m: $((SECONDS - start)) s" | tee -a "$out/times.txt"
done
python benchmarks/digits_table.py --runs "$runs" --methods scm dmd rcm --num 500 \
  --device cuda --out "$out/digits_wide_table.md" --grid "$out/digits_wide_grid.png"
