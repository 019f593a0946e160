# One image for every nowcast role: watched ingest, scheduled training, the API, backfill.
#   deploy/wheelhouse.sh                        fills deploy/wheelhouse/ on the host (pip wheel)
#   docker build -t nowcast .                   on python:3.11-slim
#   docker build --build-arg BASE_IMAGE=nowcast-base:bookworm -t nowcast .
#                                               on the local Debian base (deploy/base-image.sh) where no
#                                               image registry can be reached
# The build itself needs no network: pip installs from the wheelhouse only (--no-index).
ARG BASE_IMAGE=python:3.11-slim

# --- deps: a virtual environment in /opt/venv with the locked dependencies -----------------------
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
COPY deploy/wheelhouse /wheels
# exactly as deploy/wheelhouse.sh resolved them (app.lock); then what a service never runs goes (about
# 360 MB): the packages' test suites, torch's C++ test programs and headers (torch.compile and C++
# extensions need those; nothing deployed uses them), and pip
RUN /opt/venv/bin/pip install --quiet --no-deps -r /wheels/app.lock \
 && site=/opt/venv/lib/python3.11/site-packages \
 && find "$site" -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf "$site/torch/test" "$site/torch/include" \
 && find "$site/torch/bin" -mindepth 1 -maxdepth 1 -not -name torch_shm_manager -exec rm -rf {} + \
 && /opt/venv/bin/pip uninstall --quiet --yes pip

# --- project: the project installed over deps; only its own files go on -------------------------
FROM deps AS project
COPY pyproject.toml README.md /src/
COPY nowcast /src/nowcast
COPY nowcast_cli /src/nowcast_cli
COPY pipelines /src/pipelines
COPY service /src/service
# not editable; configs/ and the deploy scripts are copied below. pip check: the lock holds everything
# the project asks for
RUN /opt/venv/bin/python -m ensurepip --default-pip >/dev/null \
 && /opt/venv/bin/pip install --quiet --no-deps /src \
 && /opt/venv/bin/pip check \
 && site=/opt/venv/lib/python3.11/site-packages \
 && mkdir -p /out/site /out/bin \
 && cp -a "$site"/nowcast "$site"/nowcast_cli "$site"/pipelines "$site"/service "$site"/nowcast-*.dist-info /out/site/ \
 && cp -a /opt/venv/bin/nowcast /out/bin/

# --- runtime: the base, the environment, configs; no compiler, no pip, no wheelhouse ------------
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 nowcast \
 && useradd --system --uid 10001 --gid nowcast --create-home --home-dir /home/nowcast --shell /usr/sbin/nologin nowcast \
 && mkdir -p /app/runs /registry /incoming \
 && chown nowcast:nowcast /app/runs /registry   # a named volume mounted here starts with this owner
# two layers: the dependencies (1.4 GB, rebuilt only when the wheelhouse changes), then the project
COPY --from=deps /opt/venv /opt/venv
COPY --from=project /out/site/ /opt/venv/lib/python3.11/site-packages/
COPY --from=project /out/bin/nowcast /opt/venv/bin/nowcast
WORKDIR /app
COPY configs configs
COPY deploy/scheduled-train.sh deploy/probe.py deploy/train-nightly.yaml deploy/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NOWCAST_NO_DOWNLOAD=1
USER nowcast
EXPOSE 8000
ENTRYPOINT ["nowcast"]
CMD ["--help"]
