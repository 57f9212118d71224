#!/usr/bin/env bash
# GPU benchmark driver, run ON the GPU machine from the repository root. Any GPU machine with a normal install:
#   pip install -e ".[gpu,bench]" && bash bench/gpu_run.sh suite
# (python3 on PATH must be that environment's). Aside: on machines without package access, the vLLM bundle carried
# in ../shared/gpu (see its README.md) is set up first when /root/stash/setup-on-gpu.sh is there.
# Bundle as built for these runs: bash ../shared/gpu/build-bundle.sh "silero-vad>=6,<7" websockets loguru (loguru: vLLM's
# quantization imports need it for --engine.quantization fp8; drop a duplicate older redis wheel if the cache holds two),
# then python scripts/rechunk_gpu_bundle.py (chunks that fit one device call beside the working tree).
# Usage: bash bench/gpu_run.sh audio|vllm|graphs|profile|prepare|suite|realtime|multigpu [tp|dp]   (results under $OUT)
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
  # The bundle is unpacked from a tarball without bytecode; a pip install (the Dockerfile's, a user's) compiles it.
  # Without this, a fresh machine's first server start took ~33 s from process start to the engine's start, 21 s on
  # its next start (H100, 2026-12-05); part of that is compiling vLLM's and its dependencies' modules, which the
  # suite's ready_s should not count (a user's install did it). Once per machine (a marker file), outside any timing.
  if [ ! -f /tmp/site/.g4v_compiled ]; then
    python3 -m compileall -q -j 0 /tmp/site "$PWD/glm4voice_api" "$PWD/plugins" >/dev/null 2>&1
    touch /tmp/site/.g4v_compiled
  fi
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
  profile)
    # Newest questions first, each run under its own timeout (a section saves as it ends; a cut run keeps those
    # before). 1: what runs outside the flow's graphs: host ops per pass, whole passes eager vs compiled outside the
    # graphs, a first call on a new shape vs the second (bench/decoder_ops.py). Needs only torch (first carry call).
    timeout "${OUTSIDE_TIMEOUT:-200}" python3 -m bench.profile_decoder --device cuda \
      --sections ops,outside_graphs_compiled,new_shapes --out "$OUT/gpu_decoder_outside.json" \
      || echo "outside-the-graphs profile failed rc=$?"
    # 2: a decoder pass and small ops beside a busy Python thread, by switch interval: the GIL's share of a pass.
    # (The attention probe, bench/attention_probe.py, answered its question on 2026-12-05: not run again.)
    timeout "${PROBE_TIMEOUT:-150}" python3 -m bench.gil_probe --iters 3 --out "$OUT/gpu_gil_probe.json" \
      || echo "gil probe failed rc=$?"
    # 3: where a pass's GPU time goes: one ODE step by kernel kind per pass shape, eager and compiled as served,
    # then the phases (flow encoder / ODE / HiFT).
    timeout "${PROFILE_TIMEOUT:-230}" python3 -m bench.profile_decoder --device cuda \
      --sections kernels,kernels_compiled,phases --out "$OUT/gpu_decoder_kernels.json" || echo "profile failed rc=$?"
    ;;
  prepare)
    python3 -m bench.gpu_suite --prepare-only ;;
  suite)
    shift
    timeout "${SUITE_TIMEOUT:-585}" python3 -m bench.gpu_suite --out "$OUT" "$@" || echo "suite failed rc=$?"
    ;;
  realtime)
    # The Realtime API on the product defaults: one server (full-size shapes, dummy weights), then
    # bench/realtime_bench.py over the WebSocket; extra args go to it, e.g. --levels 1,16,32 --turns 2
    shift
    python3 -m bench.gpu_suite --prepare-only || exit 1
    W=/tmp/g4v_full
    GLM4VOICE_LLM_PATH=$W/glm-4-voice-9b GLM4VOICE_SPEECH_TOKENIZER_PATH=$W/glm-4-voice-tokenizer \
      GLM4VOICE_DECODER_PATH=$W/glm-4-voice-decoder GLM4VOICE_ENGINE__LOAD_FORMAT=dummy GLM4VOICE_CACHE_DIR=$W/cache \
      python3 -m bench.gpu_server --port 8000 > "$OUT/server_realtime.log" 2>&1 &
    srv=$!
    python3 - <<'PY' || { kill $srv; tail -30 "$OUT/server_realtime.log"; exit 1; }
import time, urllib.request
t0 = time.time()
while time.time() - t0 < 400:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8000/health/ready", timeout=5).status == 200:
            print(f"ready in {time.time() - t0:.0f} s"); raise SystemExit(0)
    except OSError:
        time.sleep(1)
raise SystemExit(1)
PY
    timeout 420 python3 -m bench.realtime_bench --url http://127.0.0.1:8000 --out "$OUT/realtime.json" "$@" \
      || echo "realtime bench failed rc=$?"
    kill $srv; wait $srv
    ;;
  multigpu)
    # The product defaults on 1 GPU, then tp or dp over every visible GPU, same call (two fresh servers).
    # The decoder and the speech tokenizer go on cuda:0 (tp) or one of each per GPU (dp: AUDIO_DEVICE=all).
    par=${2:-tp}; n=$(nvidia-smi -L | wc -l)
    if [ "$par" = tp ]; then extra="ENGINE__TENSOR_PARALLEL_SIZE=$n"; else extra="ENGINE__DATA_PARALLEL_SIZE=$n"; fi
    timeout 585 python3 -m bench.gpu_suite --out "$OUT" --levels 1,32,64,128 --baseline-max 0 --overload-seconds 0 \
      --config "$par$n:$extra,AUDIO_DEVICE=all" --configs-levels 1,32,64,128,192,256 || echo "suite failed rc=$?"
    python3 -m bench.multigpu_report --suite "$OUT/gpu_suite.json" --mode "$par" --gpus "$n" --out "$OUT/multigpu.json"
    ;;
  *) echo "usage: bash bench/gpu_run.sh audio|vllm|graphs|profile|prepare|suite|realtime|multigpu [tp|dp]"; exit 2 ;;
esac
