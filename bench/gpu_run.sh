#!/usr/bin/env bash
# GPU benchmark driver, run ON the GPU machine from the repository root. Any GPU machine with a normal install:
#   pip install -e ".[gpu,bench]" && bash bench/gpu_run.sh suite
# (python3 on PATH must be that environment's). Aside: on machines without package access, the vLLM bundle carried
# in ../shared/gpu (see its README.md) is set up first when /root/stash/setup-on-gpu.sh is there.
# Usage: bash bench/gpu_run.sh audio|vllm|graphs|prepare|suite|multigpu [tp|dp]   (results under $OUT, /tmp/out)
#   audio: speech tokenizer (fp32, bf16; batch 1, 8, 32) and decoder (fp32, tf32, bf16; 1, 4, 16, 64 streams)
#   vllm:  bench/gpu_smoke_vllm.py (full-size GLM-4-Voice-9B config, dummy weights) + a no-processor engine
#   graphs: decoder with the flow ODE as CUDA graphs vs eager, fp32 / tf32 / bf16 (1, 16, 64, 128 streams)
#   suite: bench/gpu_suite.py -- the product defaults over HTTP (load ladder, 2x overload) vs the seed's pattern,
#          same run (latest.json); extra args go to it, e.g. --levels 1,32,128 --config NAME:KEY=VAL,KEY=VAL
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -f /root/stash/setup-on-gpu.sh ]; then  # the carried-vLLM path (no package access on the machine)
  bash /root/stash/setup-on-gpu.sh >/dev/null || exit 1
  . /tmp/gpuenv.sh
  export PYTHONPATH=$PYTHONPATH:$PWD/plugins
  python3 -c "from glm4voice_vllm.gpu_entrypoint import write_dist_info; write_dist_info('/tmp/site')" || exit 1
else  # a normal install: the package (and its vLLM plugin entry point) is installed in this environment
  python3 -c "import vllm, glm4voice_api, glm4voice_vllm" || { echo 'install first: pip install -e ".[gpu,bench]"'; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

mode=${1:-}
case "$mode" in
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
  graphs)
    for dt in bf16 fp32 tf32; do
      timeout 150 python3 -m bench.bench_speech_decoder --preset full --device cuda --dtype $dt --graphs \
        --streams 1,16,64,128 --hift-iters 0 --out "$OUT/dec_graphs_$dt.json" || echo "graphs $dt failed rc=$?"
    done
    timeout 120 python3 -m bench.bench_speech_decoder --preset full --device cuda --dtype bf16 \
      --streams 1,16,64,128 --hift-iters 0 --out "$OUT/dec_eager_bf16.json" || echo "eager bf16 failed rc=$?"
    ;;
  prepare)
    python3 -m bench.gpu_suite --prepare-only ;;
  suite)
    shift
    timeout 585 python3 -m bench.gpu_suite --out "$OUT" "$@" || echo "suite failed rc=$?"
    ;;
  multigpu)
    # Issue 9: the product defaults on 1 GPU, then tp or dp over every visible GPU, same call (two fresh servers).
    # The decoder and the speech tokenizer go on cuda:0 (tp) or one of each per GPU (dp: AUDIO_DEVICE=all).
    par=${2:-tp}; n=$(nvidia-smi -L | wc -l)
    if [ "$par" = tp ]; then extra="ENGINE__TENSOR_PARALLEL_SIZE=$n"; else extra="ENGINE__DATA_PARALLEL_SIZE=$n"; fi
    timeout 585 python3 -m bench.gpu_suite --out "$OUT" --levels 1,32,64,128 --baseline-max 0 --overload-seconds 0 \
      --config "$par$n:$extra,AUDIO_DEVICE=all" --configs-levels 1,32,64,128,192,256 || echo "suite failed rc=$?"
    python3 -m bench.multigpu_report --suite "$OUT/gpu_suite.json" --mode "$par" --gpus "$n" --out "$OUT/multigpu.json"
    ;;
  *) echo "usage: bash bench/gpu_run.sh audio|vllm|graphs|prepare|suite|multigpu [tp|dp]"; exit 2 ;;
esac
