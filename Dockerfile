# syntax=docker/dockerfile:1
# modelfleet's image: SageMaker's bring-your-own multi-model container (`docker run IMAGE serve`)
# and a plain modelfleet server (`docker run IMAGE modelfleet serve --model-source s3://...`).
#   docker build --build-arg EXTRAS=sklearn,xgboost,aws -t modelfleet .
# EXTRAS chooses the frameworks (pyproject.toml's extras: sklearn, xgboost, lightgbm, onnx,
# torch, aws); the torch extra takes PyTorch's CPU build only with
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=sklearn,xgboost,aws
ARG PIP_EXTRA_INDEX_URL=
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m venv /opt/modelfleet \
    && /opt/modelfleet/bin/pip install --no-cache-dir --disable-pip-version-check ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title=modelfleet \
      org.opencontainers.image.licenses=Apache-2.0
RUN useradd --create-home --uid 10001 --user-group modelfleet \
    && mkdir -p /opt/ml/models /var/cache/modelfleet \
    && chown modelfleet:modelfleet /opt/ml/models /var/cache/modelfleet
COPY --from=build /opt/modelfleet /opt/modelfleet
COPY docker/entrypoint.sh /usr/local/bin/modelfleet-entrypoint
ENV PATH=/opt/modelfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELFLEET_CACHE_DIR=/var/cache/modelfleet
USER modelfleet
WORKDIR /home/modelfleet
EXPOSE 8080
ENTRYPOINT ["modelfleet-entrypoint"]
CMD ["serve"]
