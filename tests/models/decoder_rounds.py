"""Streams of different lengths decoded pass by pass by two decoders (the graph runners' tests: a runner's decoder
against the plain one)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig


def decode_rounds(plain: SpeechDecoder, other: SpeechDecoder, check: Callable[[list, list], None]) -> np.ndarray:
    """Three streams (first, later and last chunks, of different schedules) decoded in three rounds of passes by both
    decoders; each round's results (plain's, other's) go to `check`. Returns the token sequence."""
    tokens = np.random.default_rng(3).integers(0, 16384, 60)
    cfgs = [DecoderStreamConfig(schedule=(10, 20)), DecoderStreamConfig(schedule=(13,)), DecoderStreamConfig()]
    seqs = [tokens, tokens[7:50], tokens[20:]]
    rounds = [[(0, 10, False), (0, 13, False), (0, 10, False)], [(10, 30, False), (13, 26, False), (10, 40, True)]]
    rounds.append([(30, 60, True), (26, 43, True)])
    streams = {d: [d.open_stream(config=c) for c in cfgs] for d in (plain, other)}
    for spans in rounds:
        results = {}
        for d in (plain, other):
            reqs = [s.prepare(seq[a:b], final=f) for s, seq, (a, b, f) in zip(streams[d], seqs, spans, strict=False)]
            results[d] = d.decode_batch(reqs)
            for s, res in zip(streams[d], results[d], strict=False):
                s.commit(res)
        check(results[plain], results[other])
    return tokens
