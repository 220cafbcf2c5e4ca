"""A real S3-compatible server for the object-storage tests: moto in server mode on 127.0.0.1.

It listens on a free port and speaks S3 over HTTP; curate reaches it through s3fs with nothing
but the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
Authentication is on: the server refuses any key but the IAM user's it creates at start-up, so
wrong credentials fail as they would on a real store. Never the internet.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from dataclasses import dataclass


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    server: object

    def env(self, **extra: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_MAX_ATTEMPTS": "2", **extra}

    def client(self, key_id: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def stop(self) -> None:
        self.server.stop()


def start_server() -> S3Server:
    """Start moto's server on 127.0.0.1 (a free port), turn authentication on, return one user's keys."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # the next 3 requests are unauthenticated (they make the user and its keys), then every request must sign
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"3", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=30).read()
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    # moto keeps one backend per process: a second server in the same test process (another module's
    # fixture on the same xdist worker) already holds an earlier user, so each server makes its own
    user = f"curate-test-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="all-s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], server)
