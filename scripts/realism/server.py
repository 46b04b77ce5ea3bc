"""Tender's test world: the moto AWS emulator, made as strict as AWS.

    python scripts/realism/server.py -H 127.0.0.1 -p PORT

Serves moto's every service on one port, like `moto_server`, with AWS's
documented behaviours that moto lacks patched into its models (ec2.py,
ebs.py) or applied to requests here:

- EC2 Describe calls by id answer NotFound for a short while after the
  resource was created ("Eventual consistency in the Amazon EC2 API", EC2
  API Reference);
- S3 answers a GET or HEAD of a missing key with 403 AccessDenied unless
  the caller may s3:ListBucket the bucket (access.py);
- the EBS direct APIs are throttled at their quotas and refuse to read a
  snapshot that is not completed (ebs.py);
- a presigned URL acts as its signer (IAM is evaluated for the identity in
  its X-Amz-Credential) and is refused once X-Amz-Expires has passed
  (403 "Request has expired", S3 User Guide, "Sharing objects with
  presigned URLs");
- Systems Manager Run Command has managed nodes, refuses what AWS refuses
  and runs a command only when the test harness, playing SSM Agent,
  fetches it and reports its outcome (ssm.py);
- RDS snapshots are `creating` / `copying` with a moving PercentProgress
  before `available` (the DB instance `backing-up` meanwhile), states and
  the 100 manual snapshots per Region are enforced, a snapshot ARN
  resolves in its own account and only when shared with the caller, an
  encrypted copy across Regions or accounts needs a KmsKeyId, clusters are
  not silently replaced, DbiResourceIds are unique, and a DB instance can
  be backed by a real database server the tests started (rds.py).

GET /realism/ answers the settings in force and counters of what the layer
did (refusals, throttles), so tests can check that the world is strict.
POST /realism/roles and GET /realism/instance-credentials/<id> are the
tests' IAM plumbing (identities.py); /realism/ssm/... is the SSM Agent's
side (ssm.control); POST /realism/rds/backing points a DB instance's
endpoint and managed master secret at a real database (rds.control).
Settings come from the environment (world.Settings). README.md, "Test
environment", lists what this world reproduces and what it cannot.
"""

import argparse
import datetime
import io
import json
import os
import signal
import sys
from urllib.parse import parse_qs, unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple  # noqa: E402

import access  # noqa: E402
import ebs  # noqa: E402
import ec2  # noqa: E402
import identities  # noqa: E402
import rds  # noqa: E402
import ssm  # noqa: E402
from world import Settings, World  # noqa: E402

# Describe action -> (id parameter, error code, message format).
_DESCRIBE_BY_ID = {
    "DescribeInstances": ("InstanceId", "InvalidInstanceID.NotFound", "The instance ID '{}' does not exist"),
    "DescribeSnapshots": ("SnapshotId", "InvalidSnapshot.NotFound", "The snapshot '{}' does not exist."),
    "DescribeVolumes": ("VolumeId", "InvalidVolume.NotFound", "The volume '{}' does not exist."),
    "DescribeImages": ("ImageId", "InvalidAMIID.NotFound", "The image id '[{}]' does not exist"),
    "DescribeSecurityGroups": ("GroupId", "InvalidGroup.NotFound", "The security group '{}' does not exist"),
}


def _headers(environ):
    out = {}
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            out[k[5:].replace("_", "-").title()] = v
    if environ.get("CONTENT_TYPE"):
        out["Content-Type"] = environ["CONTENT_TYPE"]
    return out


def _ec2_error(code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
        "</Error></Errors><RequestID>realism</RequestID></Response>"
    ).encode()
    return 400, [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))], body


def _s3_denied(head):
    body = b"" if head else (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message><RequestId>realism</RequestId></Error>"
    )
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    return 403, headers, body


def _presigned(environ):
    """For a request signed in its query (a presigned URL): the signer's
    credential becomes a header the layer's IAM evaluation reads (moto
    itself only reads the Authorization header), and an expired URL gets
    S3's answer, which is returned."""
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    credential = query.get("X-Amz-Credential")
    if not credential or environ.get("HTTP_AUTHORIZATION"):
        return None
    environ["HTTP_X_REALISM_PRESIGNED_CREDENTIAL"] = credential
    try:
        signed = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        expires = int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        return None
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    if now <= signed + datetime.timedelta(seconds=expires):
        return None
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Request has expired</Message><RequestId>realism</RequestId></Error>"
    )
    return 403, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))], body


def _status_line(code):
    return {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found", 409: "409 Conflict", 200: "200 OK"}.get(
        code, f"{code} Error"
    )


class Realism:
    def __init__(self, app, world):
        self.app = app
        self.world = world

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/realism"):
            return self._control(environ, start_response)
        self.world.advance()
        expired = _presigned(environ)
        if expired is not None:
            self.world.count("s3:presigned-expired")
            start_response(_status_line(403), expired[1])
            return [expired[2]]
        headers = _headers(environ)
        identities.set_caller(headers)
        region, service = access.credential_scope(headers)
        method = environ.get("REQUEST_METHOD", "GET")
        answer = None
        if service == "ec2" and method == "POST":
            answer = self._ec2(environ)
        elif service == "ebs":
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            refusal = ebs.check(method, environ.get("PATH_INFO", ""), access.account_of(headers), region, query)
            if refusal is not None:
                answer = ebs.refusal_response(refusal)
        elif service == "ssm" and method == "POST":
            answer = ssm.check(environ, headers, region)
        elif service == "s3" and method in ("GET", "HEAD"):
            return self._s3(environ, start_response, headers, method == "HEAD")
        if answer is not None:
            status, hdrs, body = answer
            start_response(_status_line(status), hdrs)
            return [body]
        return self.app(environ, start_response)

    def _ec2(self, environ):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = parse_qs(body.decode("utf-8", "replace"))
        action = (params.get("Action") or [""])[0]
        known = _DESCRIBE_BY_ID.get(action)
        if not known:
            return None
        name, code, message = known
        for key, values in params.items():
            if key.startswith(name + ".") and key[len(name) + 1:].isdigit():
                for rid in values:
                    if self.world.fresh(rid):
                        self.world.count(f"not-found:{action}")
                        return _ec2_error(code, message.format(rid))
        return None

    def _s3(self, environ, start_response, headers, head):
        parts = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)
        if len(parts) < 2 or not parts[1]:
            return self.app(environ, start_response)
        bucket = parts[0]
        captured = {}

        def capture(status, hdrs, exc_info=None):
            captured["status"], captured["headers"] = status, hdrs
            return lambda _data: None

        body = b"".join(self.app(environ, capture))
        status = captured.get("status", "500")
        missing_key = status.startswith("404") and (
            b"<Code>NoSuchKey</Code>" in body or (head and _bucket_exists(bucket))
        )
        key = unquote(parts[1])
        if missing_key and not access.may_list_bucket(headers, bucket, key):
            self.world.count("s3:403-for-missing-key")
            code, hdrs, body = _s3_denied(head)
            start_response(_status_line(code), hdrs)
            return [body]
        start_response(status, captured.get("headers", []))
        return [body]

    def _control(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        try:
            if path.startswith("/realism/ssm/"):
                method = environ.get("REQUEST_METHOD", "GET")
                query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
                code, answer = ssm.control(method, path, query, body)
                return _json(start_response, _status_line(code), answer)
            if path.startswith("/realism/rds/"):
                method = environ.get("REQUEST_METHOD", "GET")
                query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else {}
                code, answer = rds.control(method, path, body, query)
                return _json(start_response, _status_line(code), answer)
            if path.startswith("/realism/roles") and environ.get("REQUEST_METHOD") == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                answer = identities.ensure_role(
                    spec.get("account", "123456789012"), spec["name"], spec["policy"]
                )
                return _json(start_response, "200 OK", answer)
            if path.startswith("/realism/instance-credentials/"):
                query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
                creds = identities.instance_credentials(
                    query.get("account", "123456789012"),
                    query.get("region", "us-east-1"),
                    path.rsplit("/", 1)[1],
                )
                if creds is None:
                    return _json(start_response, "404 Not Found", {"error": "no instance profile"})
                return _json(start_response, "200 OK", creds)
        except Exception as e:  # a test's mistake: say it
            print(f"realism: control request {path} failed: {e!r}", flush=True)
            return _json(start_response, "400 Bad Request", {"error": repr(e)})
        with self.world.lock:
            body = json.dumps(
                {"settings": self.world.settings.as_dict(), "counters": dict(self.world.counters)}
            ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _json(start_response, status, value):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _bucket_exists(name):
    from moto.s3.models import s3_backends

    for _account, partitions in list(s3_backends.items()):
        backend = partitions.get("aws") if hasattr(partitions, "get") else None
        if backend is not None and name in backend.buckets:
            return True
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    parser.add_argument("--console-dir", help="where the test booter records instances' consoles")
    args = parser.parse_args()
    ec2.CONSOLE_DIR = args.console_dir
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    world = World(Settings())
    ec2.install(world)
    ebs.install(world)
    access.install(world)
    identities.install(world)
    ssm.install(world)
    rds.install(world)
    world.start_ticker()
    app = Realism(DomainDispatcherApplication(create_backend_app), world)
    print(f"realism: serving moto on {args.host}:{args.port} with {world.settings.as_dict()}", flush=True)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
