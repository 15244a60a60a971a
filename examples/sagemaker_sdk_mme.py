"""The SageMaker Python SDK's multi-model flow against modelfleet, end to end.

``MultiDataModel(...).deploy()``, ``predict(..., target_model=...)`` and ``delete_endpoint()``,
as a SageMaker user writes them, with the SDK's clients pointed at a modelfleet server: its
admin listener for ``sagemaker``, its public one for ``sagemaker-runtime``. The models live
under an S3 prefix of moto's S3-compatible server. Everything runs on 127.0.0.1 and every
process this script starts is stopped by PID.

The SDK is heavy and not a dependency of modelfleet, so it runs from its own environment,
best in a network namespace with only loopback, so that nothing the SDK might try reaches AWS::

    python -m venv /tmp/sdk && /tmp/sdk/bin/pip install "sagemaker>=2,<3" boto3
    unshare --net bash -c 'ip link set lo up && AWS_EC2_METADATA_DISABLED=true \
        /tmp/sdk/bin/python examples/sagemaker_sdk_mme.py --modelfleet-python .venv/bin/python'

``--modelfleet-python`` is a Python with modelfleet installed (``pip install -e '.[all,dev]'``:
it also has moto and scikit-learn, which make the server and the models).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
KEYS = {"aws_access_key_id": "AKIDSDKEXAMPLE01", "aws_secret_access_key": "not-checked"}
REGION = "us-east-1"

MAKE_MODELS = """
import io, joblib, sys, tarfile
import numpy as np
from sklearn.linear_model import LinearRegression
out = sys.argv[1]
for name, slope in (("customer-1", 1.0), ("customer-2", 2.0)):
    x = np.arange(20.0).reshape(10, 2)
    model = LinearRegression().fit(x, slope * x.sum(axis=1))
    raw = io.BytesIO(); joblib.dump(model, raw)
    with tarfile.open(f"{out}/{name}.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("model.joblib"); info.size = len(raw.getvalue())
        archive.addfile(info, io.BytesIO(raw.getvalue()))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modelfleet-python", required=True, help="a Python with modelfleet")
    args = parser.parse_args()

    import boto3
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.multidatamodel import MultiDataModel
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import CSVSerializer

    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="modelfleet-sdk-") as scratch:
        work = Path(scratch)
        try:
            s3_port, port, admin_port = free_port(), free_port(), free_port()
            s3_url = f"http://{HOST}:{s3_port}"
            moto = [args.modelfleet_python, "-m", "moto.server", "-H", HOST, "-p", str(s3_port)]
            started.append(
                subprocess.Popen(moto, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            wait_http(f"{s3_url}/")
            (work / "models").mkdir()
            subprocess.run(
                [args.modelfleet_python, "-c", MAKE_MODELS, str(work / "models")], check=True
            )
            s3 = boto3.client("s3", endpoint_url=s3_url, region_name=REGION, **KEYS)
            s3.create_bucket(Bucket="sdk-models")
            for artifact in sorted((work / "models").iterdir()):
                s3.upload_file(str(artifact), "sdk-models", f"mme/{artifact.name}")

            env = {
                "AWS_ENDPOINT_URL": s3_url,
                "AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
                "AWS_REGION": REGION,
                "PATH": "/usr/bin:/bin",
            }
            serve = [args.modelfleet_python, "-m", "modelfleet", "serve"]
            serve += ["--model-source", str(work / "models"), "--port", str(port)]
            serve += ["--admin-port", str(admin_port), "--cache-dir", str(work / "cache")]
            serve += ["--state-dir", str(work / "state"), "--log-level", "warning"]
            log = (work / "server.log").open("wb")
            started.append(subprocess.Popen(serve, env=env, stdout=log, stderr=log))
            wait_http(f"http://{HOST}:{port}/ping")

            boto_session = boto3.Session(region_name=REGION, **KEYS)
            session = sagemaker.Session(
                boto_session=boto_session,
                sagemaker_client=boto_session.client(
                    "sagemaker", endpoint_url=f"http://{HOST}:{admin_port}"
                ),
                sagemaker_runtime_client=boto_session.client(
                    "sagemaker-runtime", endpoint_url=f"http://{HOST}:{port}"
                ),
                default_bucket="sdk-models",
            )
            mme = MultiDataModel(
                name="sdk-mme",
                model_data_prefix="s3://sdk-models/mme/",
                image_uri="modelfleet",
                role="arn:aws:iam::000000000000:role/any",
                sagemaker_session=session,
                predictor_cls=Predictor,
            )
            began = time.monotonic()
            predictor = mme.deploy(
                initial_instance_count=1,
                instance_type="ml.t2.medium",
                endpoint_name="sdk-mme",
                serializer=CSVSerializer(),
                deserializer=JSONDeserializer(),
            )
            print(f"deploy(): in service after {time.monotonic() - began:.1f} s")
            for target, expected in (("customer-1.tar.gz", 7.0), ("customer-2.tar.gz", 14.0)):
                answer = predictor.predict([[3.0, 4.0]], target_model=target)
                print(f"predict(target_model={target!r}) -> {json.dumps(answer)}")
                value = answer[0] if isinstance(answer, list) else answer
                value = value[0] if isinstance(value, list) else value
                assert abs(float(value) - expected) < 1e-6, (target, answer)
            predictor.delete_endpoint()
            client = session.sagemaker_client
            client.get_waiter("endpoint_deleted").wait(
                EndpointName="sdk-mme", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
            print("delete_endpoint(): the endpoint is gone")
        finally:
            for process in reversed(started):
                process.terminate()
            for process in reversed(started):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if (work / "server.log").exists() and sys.exc_info()[0] is not None:
                sys.stderr.write((work / "server.log").read_text()[-4000:])


if __name__ == "__main__":
    main()
