"""The GLM-4-Voice speech decoder: speech token ids -> 22.05 kHz speech (flow matching + HiFT vocoder).

- ``flow.py`` (``flow_encoder.py``, ``flow_estimator.py``, ``flow_graphs.py``): tokens -> 80-bin mel;
  the Conformer encoder, the U-Net estimator, the Euler ODE with guidance (``flow.py``) and its CUDA graphs.
- ``hift.py`` (``hift_source.py``): mel -> waveform; ``mel.py``: the decoder's own mel space (voice prompts).
- ``chunks.py``: what one decoded chunk needs and returns (``Voice``, ``ChunkRequest``, ``ChunkResult``).
- ``stream.py``: ``DecoderStream``, one streaming session's state and chunk schedule.
- ``decoder.py``: ``SpeechDecoder``, the token2wav algorithm over batches of chunks.
- ``yaml_config.py`` and ``loader.py``: reading the official folder (config.yaml as data, flow.pt, hift.pt).
"""
