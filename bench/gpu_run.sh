#!/usr/bin/env bash
# GPU benchmark driver, run ON the GPU machine from the repository root once the vLLM bundle is stashed
# (../shared/gpu/README.md). Usage: bash bench/gpu_run.sh audio|vllm   (results under $OUT)
#   audio: speech tokenizer (fp32, bf16; batch 1, 8, 32) and decoder (fp32, tf32, bf16; 1, 4, 16, 64 streams)
#   vllm:  bench/gpu_smoke_vllm.py (full-size GLM-4-Voice-9B config, dummy weights) + a no-processor engine
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
bash /root/stash/setup-on-gpu.sh >/dev/null || exit 1
. /tmp/gpuenv.sh
export PYTHONPATH=$PYTHONPATH:$PWD/plugins
python3 -c "from glm4voice_vllm.gpu_entrypoint import write_dist_info; write_dist_info('/tmp/site')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

case "${1:-}" in
  audio)
    for dt in float32 bfloat16; do
      timeout 70 python3 -m bench.bench_speech_tokenizer --preset full --device cuda --dtype $dt \
        --batch-sizes 1,8,32 --out "$OUT/tok_$dt.json" || echo "tokenizer $dt failed rc=$?"
    done
    for dt in fp32 tf32 bf16; do
      timeout 120 python3 -m bench.bench_speech_decoder --preset full --device cuda --dtype $dt \
        --streams 1,4,16,64 --out "$OUT/dec_$dt.json" || echo "decoder $dt failed rc=$?"
    done
    ;;
  vllm)
    timeout 560 python3 -m bench.gpu_smoke_vllm --compare-mrv2 --out "$OUT/gpu_vllm_smoke.json" \
      || echo "smoke failed rc=$?"
    ;;
  *) echo "usage: bash bench/gpu_run.sh audio|vllm"; exit 2 ;;
esac
