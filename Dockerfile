# ddpmkit on the CPU. The set-up is the README's own (scripts/install.sh), on Debian 12 with Python 3.11; PyTorch
# comes as its CPU build. Not built on the project's machines (no Docker engine there): see the README.
#   docker build -t ddpmkit .
#   docker run --rm -v "$PWD/runs:/opt/ddpmkit/runs" -v ddpmkit-cache:/root/.cache ddpmkit train --preset quick
FROM python:3.11-slim-bookworm

WORKDIR /opt/ddpmkit
COPY . .
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    EXTRAS=demo \
    PIP_NO_CACHE_DIR=1
# install.sh also installs Debian's dataset-fashion-mnist (real Fashion-MNIST, no download at training time).
RUN bash scripts/install.sh && rm -rf /var/lib/apt/lists/*

# Outside the container: runs (checkpoints, logs, samples); the caches (downloaded datasets in
# ~/.cache/ddpmkit/datasets, FD statistics, Hub models), so nothing is downloaded twice; your own image folders.
VOLUME ["/opt/ddpmkit/runs", "/root/.cache", "/data"]
EXPOSE 7860
ENTRYPOINT ["/opt/ddpmkit/.venv/bin/ddpmkit"]
CMD ["--help"]
