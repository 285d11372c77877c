"""SeaweedFS (`weed server -s3`) as the stack's S3 store: command line, credentials, readiness, buckets."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from candela_stack.ports import LOOPBACK, SEAWEED_GRPC_OFFSET, StackPorts

READY_PROBE_KEY = ".candela-stack/ready"


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """Writes the S3 gateway's identities file: one identity with full rights on every bucket."""
    identities = {
        "identities": [
            {
                "name": "candela",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identities, indent=2))
    path.chmod(0o600)
    return path


def server_argv(binary: Path, data_dir: Path, identities: Path, ports: StackPorts) -> list[str]:
    """`weed server` with master, volume, filer and S3 on the stack's ports, loopback only.

    Extra listeners SeaweedFS would otherwise open on fixed ports (Iceberg, Lance, metrics) are
    disabled so that two stacks can run side by side, and so is the anonymous usage telemetry.
    Two waits that only matter in a multi-server cluster are cut: `-master.electionTimeout=1s` (a
    lone master re-elects itself in ~1 s instead of ~10 s when it restarts on existing data) and
    `-volume.preStopSeconds=0` (no 10 s heartbeat drain on SIGTERM).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(binary),
        "server",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-master.port={ports.seaweed_master}",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
        f"-volume.port={ports.seaweed_volume}",
        "-volume.preStopSeconds=0",
        f"-filer.port={ports.seaweed_filer}",
        "-s3",
        f"-s3.port={ports.seaweed_s3}",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-metricsPort=0",
    ]


def socket_files(ports: StackPorts) -> list[Path]:
    """The unix sockets `weed server` makes in the system temp dir for these ports (left behind when
    it is killed, which it usually is: see README)."""
    temp = Path(tempfile.gettempdir())
    grpc = SEAWEED_GRPC_OFFSET
    names = [
        f"seaweedfs-filer-{ports.seaweed_filer}.sock",
        f"seaweedfs-s3-{ports.seaweed_s3}.sock",
        f"seaweedfs-master-grpc-{ports.seaweed_master + grpc}.sock",
        f"seaweedfs-volume-grpc-{ports.seaweed_volume + grpc}.sock",
        f"seaweedfs-filer-grpc-{ports.seaweed_filer + grpc}.sock",
        f"seaweedfs-s3-grpc-{ports.seaweed_s3 + grpc}.sock",
    ]
    return [temp / name for name in names]


def client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A boto3 S3 client for the stack's endpoint: path-style addressing, short timeouts, few retries."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
            proxies={},
        ),
    )


def can_list_buckets(s3: Any) -> bool:
    """True once the S3 gateway answers ListBuckets with our credentials."""
    try:
        s3.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def ensure_buckets(s3: Any, buckets: list[str]) -> None:
    """Creates each bucket that does not exist yet."""
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def can_write_and_read(s3: Any, bucket: str) -> bool:
    """True once an object round-trips through `bucket` (after a restart the volume server needs to
    re-register with the master before reads and writes work, though ListBuckets already does)."""
    try:
        s3.put_object(Bucket=bucket, Key=READY_PROBE_KEY, Body=b"ok")
        body = s3.get_object(Bucket=bucket, Key=READY_PROBE_KEY)["Body"].read()
    except (BotoCoreError, ClientError):
        return False
    return bool(body == b"ok")
