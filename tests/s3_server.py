"""A real S3 API on loopback for the S3 blob store's tests: moto's server, in a thread.

moto answers the S3 REST API (SigV4-signed requests, XML listings and errors) as AWS does, so
baton's store is exercised through the real client over real HTTP, nothing patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: Credentials moto accepts (any); the workers get them as the usual AWS variables.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "baton-test-key",
    "AWS_SECRET_ACCESS_KEY": "baton-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A running S3 API.

    Attributes:
        endpoint_url: Where it listens (``http://127.0.0.1:<port>``).
        bucket: A bucket made for the test.
    """

    endpoint_url: str
    bucket: str

    def client(self) -> Any:
        """A boto3 S3 client for it, with the test credentials."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint_url)


@contextmanager
def s3_server(bucket: str = "baton-blobs") -> Iterator[S3Server]:
    """Start moto's S3 server on a free loopback port with one bucket; stop it after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        running = S3Server(f"http://{host}:{port}", bucket)
        running.client().create_bucket(Bucket=bucket)
        yield running
    finally:
        server.stop()
