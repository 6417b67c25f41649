# onedet training image for NVIDIA GPUs.
#   docker build -t onedet:train .
#   docker run --gpus all --shm-size 8g -v "$PWD:/work" onedet:train train --data store/mydata --out runs/mydata
# The PyPI torch wheel (2.14.1, built for CUDA 13.0) bundles its own CUDA libraries; the base image gives a matching
# CUDA user space and the host gives the driver (NVIDIA Container Toolkit).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The versions this project is tested with (constraints.txt pins torch; the rest as in the test venv).
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt \
        torch==2.14.1 torchvision==0.29.1 timm==1.0.31 tensordict==0.15.3 kornia==0.9.0 peft==0.21.2 \
        safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0 pyyaml==6.0.3 tqdm==4.70.1 matplotlib==3.11.2 \
        faster-coco-eval==1.8.0 onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 tensorboard==2.21.0

COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-deps /src && rm -rf /src

WORKDIR /work
ENTRYPOINT ["onedet"]
CMD ["--help"]
