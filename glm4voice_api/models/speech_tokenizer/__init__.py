"""The GLM-4-Voice speech tokenizer: 16 kHz audio -> 12.5 Hz speech token ids (codebook of 16384).

- ``encoder.py``: ``WhisperVQEncoder`` (causal-conv Whisper-large-v3 encoder, block-causal attention, pooling, VQ).
- ``frontend.py``: resampling to 16 kHz, 30 s windows and the Whisper log-mel features the model was trained on.
- ``tokenizer.py``: ``SpeechTokenizer``, encoder + front end, batched the way the reference batches.
- ``loader.py``: ``load_speech_tokenizer`` for the official glm-4-voice-tokenizer folder.
"""
