# The SynthRAD2025 grand-challenge algorithm container: reads /input, writes /output/images/synthetic-ct.
#   docker build -t sctconv-synthrad .                      # PyTorch's CUDA 12.6 wheels (grand-challenge GPUs)
#   docker build -t sctconv-synthrad --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#   docker run --rm --gpus all -v $PWD/in:/input:ro -v $PWD/out:/output sctconv-synthrad
# The entry point is `sctconv challenge` with its defaults (/input, /output, the shipped model for the task);
# tests/test_challenge.py runs exactly this command without docker.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install --index-url "$TORCH_INDEX" torch
WORKDIR /opt/sctconv
COPY pyproject.toml README.md ./
COPY sctconv ./sctconv
RUN pip install . && useradd --create-home algorithm
USER algorithm
ENTRYPOINT ["sctconv", "challenge", "--input", "/input", "--output", "/output"]
