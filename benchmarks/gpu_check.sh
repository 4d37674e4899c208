#!/usr/bin/env bash
# The GPU check: one command on one H100/H200 (no network needed), about 6-8 minutes, numbers into RESULTS.md.
#
#   benchmarks/gpu_check.sh                      # on the GPU machine: updates benchmarks/RESULTS.md
#   benchmarks/gpu_check.sh --cpu-smoke OUT_DIR  # the same steps at toy size on CPU, results in OUT_DIR (the tests)
#
# Needs the project installed with its `offline` extra and a CUDA build of torch (`pip install -e ".[test]"`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    out=${2:?usage: benchmarks/gpu_check.sh --cpu-smoke OUT_DIR}
    results="$out/RESULTS.md"
    throughput=(--model test --batch_size 8,4 --checkpointed_batch_size 4 --steps 2 --warmup 1 --window 1 --configs A,B)
    launch_config=configs/cpu.yaml
    max_new_tokens=8
    phase_limit_s=300
else
    out=runs/gpu-check
    results=benchmarks/RESULTS.md
    # Each size that does not fit costs a model build and a step; ~16 fit on 80 GB, ~35 on 141 GB (README).
    throughput=(--model large-v3 --batch_size 48,40,32,24,16,8 --checkpointed_batch_size 160,128,96,64,32
                --steps 10 --warmup 3 --window 5 --configs A,B)
    launch_config=accelerate_config.yaml
    max_new_tokens=64
    phase_limit_s=330
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device; see --cpu-smoke')"
fi
mkdir -p "$out"
start=$(date +%s)

echo "== 1/2 throughput: ${throughput[*]}"
timeout "$phase_limit_s" "$PYTHON" -m benchmarks.train_throughput "${throughput[@]}" --write_results \
    --results "$results" | tee "$out/throughput.log"

echo "== 2/2 the training loop: 2 steps, checkpoint, final save, evaluation"
"$PYTHON" tools/offline_whisper.py --output_dir models/whisper-base
model=models/whisper-base
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    model="$out/tiny-whisper"  # 2 random layers with the real processor: seconds on a CPU
    "$PYTHON" -c "from kspon_whisper.random_whisper import save_random_whisper as s; s('test', 'models/whisper-base', '$model')"
fi
rm -rf "$out/loop"
loop_start=$(date +%s)
timeout "$phase_limit_s" "$PYTHON" -m accelerate.commands.launch --config_file "$launch_config" \
    train_accelerate.py --model_name_or_path "$model" --data_dir kspon_dataset/sample --output_dir "$out/loop" \
    --max_steps 2 --per_device_batch_size 8 --num_workers 2 --learning_rate 1e-5 --warmup_steps 1 \
    --gradient_checkpointing false --log_every 1 --save_every 2 --eval_every 0 --final_eval_splits test \
    --generation_max_new_tokens "$max_new_tokens" --report_to none 2>&1 | tee "$out/loop.log"
loop_s=$(( $(date +%s) - loop_start ))

"$PYTHON" -m benchmarks.loop_report --loop_dir "$out/loop" --log "$out/loop.log" --seconds "$loop_s" \
    --config "$launch_config" --results "$results"
echo "gpu_check: done in $(( $(date +%s) - start )) s; numbers in $results"
