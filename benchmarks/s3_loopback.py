"""An S3 server on 127.0.0.1 for the storage tests and benchmark: moto's server (`moto[server]`,
in the test extra) with credentials checked, one IAM user allowed everything, and a bucket.

It speaks S3's HTTP API, so pyarrow, Ray workers and `onorm` subprocesses reach it the way
they reach AWS or MinIO: through AWS_ENDPOINT_URL and the AWS_* credentials of `env`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class LoopbackS3:
    endpoint: str
    bucket: str
    env: dict[str, str]   # the variables a client needs (endpoint, region, valid keys)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        """A boto3 S3 client with these credentials (a fresh session: boto3's default one
        keeps the credentials it first found)."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextmanager
def loopback_s3(bucket: str = "onorm-results") -> Iterator[LoopbackS3]:
    """Start the server on a free port and create `bucket`; from then on it refuses requests
    not signed by the returned credentials (so wrong credentials are refused as by AWS)."""
    import logging

    import boto3
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        setup = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="setup",
                                      region_name="us-east-1")
        iam = setup.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="onorm")
        policy = iam.create_policy(PolicyName="onorm-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        iam.attach_user_policy(UserName="onorm", PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName="onorm")["AccessKey"]
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0   # from here on, requests must be signed
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = LoopbackS3(endpoint, bucket, env)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
        server.stop()
