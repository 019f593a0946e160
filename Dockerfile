# One image for every nowcast role (ingest now; training and the API with later issues).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# CPU build of torch first, so the project's torch range installs nothing more
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY nowcast nowcast
COPY pipelines pipelines
COPY service service
COPY nowcast_cli nowcast_cli
COPY configs configs
RUN pip install --no-cache-dir ".[s3]"
ENTRYPOINT ["nowcast"]
CMD ["--help"]
