#!/bin/sh
# The image's entrypoint.
#   serve [FLAGS]   how SageMaker starts a bring-your-own container: SageMaker's multi-model
#                   container contract on one port (SAGEMAKER_BIND_TO_PORT, else 8080), models
#                   under /opt/ml/models (modelfleet serve --sagemaker-container [FLAGS])
#   anything else   run as given, e.g. modelfleet serve --model-source s3://bucket/models/
set -eu
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    if [ -n "${SAGEMAKER_BIND_TO_PORT:-}" ]; then
        export MODELFLEET_PORT="$SAGEMAKER_BIND_TO_PORT"
    fi
    exec modelfleet serve --sagemaker-container "$@"
fi
exec "$@"
