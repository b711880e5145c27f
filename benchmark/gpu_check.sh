#!/usr/bin/env bash
# GPU check: the full profile (224 px, ImageNet weights when cached, else random) for one variant
# and one outer fold on CUDA, then the throughput suite on CUDA. Sized for ~8 minutes on one
# H100/H200-class GPU. Prints a short table last. Output: results/gpu/ (or $1).
#   bash benchmark/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu}
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
start=$(date +%s)
python -m smids_eval.study --profile full --variant F.1 --fold 0 --repeats 1 --trials 8 --device cuda \
  --out "$out" --run-name gpu-full-F.1-fold0 --no-progress 2>&1 | tee "$out/study.log"
study_s=$(( $(date +%s) - start ))
SMIDS_BENCH_DEVICE=cuda python -m pytest benchmark/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$out/throughput-cuda.json" --benchmark-columns=min,mean,rounds 2>&1 | tee "$out/throughput.log" || true
python - "$out" "$study_s" <<'PY'
import json, sys, pathlib
import pandas as pd
from smids_eval.run_folder import folds_table
out, study_s = pathlib.Path(sys.argv[1]), sys.argv[2]
folds = pd.read_csv(folds_table(out / "gpu-full-F.1-fold0"))
cols = ["variant", "setting", "cls_macro_f1", "cls_recall_abnormal_sperm", "cal_ece", "epochs_run",
        "wall_seconds", "run_device", "run_weights"]
print(f"\nfull profile, F.1, outer fold 0 on CUDA: {study_s} s wall")
print(folds[[c for c in cols if c in folds]].to_string(index=False))
t = json.loads((out / "gpu-full-F.1-fold0" / "timings.json").read_text())
print(f"plan ETA {t['eta_s']} s vs {t['wall_s']} s actual; bf16 peak {t['bf16_peak_gflops']} GFLOP/s; "
      f"normalised {t['normalised_wall_s']} s; peak RSS {t['peak_rss_mb']} MB\n  stages: {t['stages_s']}")
bench = json.loads((out / "throughput-cuda.json").read_text())
print("\nthroughput (CUDA):")
for b in bench["benchmarks"]:
    info = ", ".join(f"{k}={v}" for k, v in b["extra_info"].items())
    print(f"  {b['name']:<55} min {b['stats']['min'] * 1e3:9.2f} ms  {info}")
PY
