# The pipeline and its scoring server in one image.
#   docker run IMAGE                        train → quantize → promote, then predict (the seed-style table)
#   docker run -p 8080:8080 IMAGE serve     serve the champion on 0.0.0.0:8080 (GET /ping, POST /invocations)
# Runs, artifacts and models go to /home/app/tracking (mount a volume there to keep them).
FROM python:3.11-slim-bookworm

# Inside the container `serve` listens on every interface (outside one it defaults to 127.0.0.1):
# `docker run -p` decides what the host exposes. MLflow's usage telemetry is off (its documented
# switch), so nothing is reported and no installation id is written under $HOME/.config/mlflow.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOUSING_MLOPS_TRACKING_DIR=/home/app/tracking \
    HOUSING_MLOPS_SERVE_HOST=0.0.0.0 \
    MLFLOW_DISABLE_TELEMETRY=true

# The tracking directory exists in the image, owned by the user, so a named volume mounted
# there (docker run -v housing-tracking:/home/app/tracking) starts writable.
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 app \
    && install -d -o app -g app /home/app/tracking

WORKDIR /opt/housing-mlops

# Dependencies first, from the project's own pinned list: this layer is rebuilt only when
# pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself, non-editable, exactly as .ci/run installs it in its clean venv.
COPY README.md ./
COPY pipeline/ pipeline/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build pipeline.egg-info housing_mlops.egg-info

USER 10001:10001
ENV HOME=/home/app
WORKDIR /home/app
EXPOSE 8080

# Python turns SIGINT into KeyboardInterrupt even as PID 1, where SIGTERM would be ignored.
STOPSIGNAL SIGINT
# Meaningful for `serve` (the scoring server's /ping); a batch `run` ends before it matters.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]

ENTRYPOINT ["housing-mlops-container"]
CMD ["run"]
