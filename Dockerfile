# GPU server image: CUDA vLLM (the wheels bring torch and the CUDA libraries); mount the three official folders
# at /models. Build: docker build -t glm4voice-api .   Run: docker run --gpus all -v /path:/models -p 8000:8000 glm4voice-api
FROM python:3.12-slim
# Triton compiles small C launchers at run time, so a C compiler is needed in the image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY glm4voice_api ./glm4voice_api
COPY plugins ./plugins
RUN pip install --no-cache-dir ".[gpu]"
# Runs unprivileged (uid 10001, as deploy/kubernetes expects); caches (the built-in set, Triton, vLLM) go to its home.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/glm4voice glm4voice
USER 10001
ENV GLM4VOICE_HOST=0.0.0.0 GLM4VOICE_PORT=8000 GLM4VOICE_MODEL_DIR=/models
EXPOSE 8000
# SIGTERM drains (503 to new requests, in-flight streams finish for up to GLM4VOICE_TIMEOUTS__DRAIN_S, default 30 s):
# give the container more than that before SIGKILL, e.g. `docker stop -t 40` / terminationGracePeriodSeconds: 40.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready').status != 200)"
ENTRYPOINT ["glm4voice-api", "serve"]
