"""The EBS direct APIs as AWS documents them, patched into moto.

- A snapshot started with StartSnapshot is `pending` (in EC2 too) until
  CompleteSnapshot, which answers `pending`; it is `completed` a while
  later. StartSnapshot keeps `Encrypted` and `KmsKeyArn`.
- "Can a snapshot be accessed using the EBS direct APIs if it has a pending
  status? No." (EBS User Guide, EBS direct APIs FAQ): reads of a snapshot
  that is not `completed` are refused.
- Every EC2 snapshot can be read with the EBS direct APIs. A snapshot of a
  volume created from a snapshot serves that snapshot's blocks (EBS
  snapshots are of the volume's data, and a volume restored from a snapshot
  holds the snapshot's data); a snapshot of a volume that never had data
  lists no blocks, as a fresh volume reads as zeros.
- Requests are throttled at the EBS direct API quotas (world.Settings).
"""

import json
import re

from moto.core.exceptions import JsonRESTError
from moto.ebs.models import EBSBackend, EBSSnapshot, ebs_backends
from moto.ebs.responses import EBSResponse

import ec2 as ec2_world
from world import RateLimiter, World

_world: World = None
_limits = RateLimiter()


def serve_source_blocks(ec2_backend, snapshot):
    """Makes `snapshot` (just taken by EC2) readable through the EBS direct
    APIs, with the blocks of the snapshot its volume was created from."""
    ebs = ebs_backends[ec2_backend.account_id][ec2_backend.region_name]
    entry = EBSSnapshot(account_id=ec2_backend.account_id, snapshot=snapshot)
    source = ebs.snapshots.get(getattr(snapshot.volume, "snapshot_id", None) or "")
    if source is not None:
        entry.blocks = dict(source.blocks)
        entry.block_size = source.block_size
    entry.status = "completed"
    ebs.snapshots[snapshot.id] = entry
    snapshot._realism_ebs = entry


def _start_snapshot(self):
    """StartSnapshot, keeping Encrypted and KmsKeyArn (moto drops them)."""
    snapshot = self.ebs_backend.start_snapshot(
        volume_size=self._get_param("VolumeSize"),
        tags=self._get_param("Tags"),
        description=self._get_param("Description"),
    )
    ec2_snapshot = self.ebs_backend.ec2_backend.snapshots[snapshot.snapshot_id]
    # Written through the EBS direct APIs: pending until CompleteSnapshot.
    _world.cancel(("snapshot", ec2_snapshot.id))
    ec2_snapshot.status = "pending"
    ec2_snapshot._realism_ebs = snapshot
    encrypted = bool(self._get_param("Encrypted"))
    key = self._get_param("KmsKeyArn")
    if key and not encrypted:
        raise JsonRESTError("ValidationException", "KmsKeyArn is given but Encrypted is not true")
    if encrypted:
        ec2_snapshot.encrypted = True
        ec2_snapshot.kms_key_id = key or _default_key(self.ebs_backend.ec2_backend)
    from moto.core.responses import ActionResult

    return ActionResult(
        {
            "SnapshotId": snapshot.snapshot_id,
            "OwnerId": snapshot.account_id,
            "Status": "pending",
            "StartTime": snapshot.start_time,
            "VolumeSize": snapshot.volume_size,
            "BlockSize": snapshot.block_size,
            "Tags": snapshot.tags,
            "Description": snapshot.description,
            "KmsKeyArn": ec2_snapshot.kms_key_id,
        }
    )


def _default_key(ec2_backend):
    if not ec2_backend.default_kms_key_id:
        ec2_backend._create_default_encryption_key()
    return ec2_backend.default_kms_key_id


def _complete_snapshot(self, snapshot_id):
    ebs_snapshot = self.snapshots[snapshot_id]
    ec2_snapshot = self.ec2_backend.snapshots[snapshot_id]
    ebs_snapshot.status = "pending"
    ec2_world.complete_later(ec2_snapshot)
    return "pending"


class _Refusal(Exception):
    def __init__(self, status, kind, message, reason):
        super().__init__(message)
        self.status, self.kind, self.message, self.reason = status, kind, message, reason


def _validation(message, reason):
    return _Refusal(400, "ValidationException", message, reason)


_PATH = re.compile(r"^/snapshots(?:/completion/(?P<done>[^/]+)|/(?P<id>[^/]+)/(?P<what>blocks|changedblocks)(?:/(?P<idx>\d+))?)?$")


def check(method, path, account, region, query):
    """The refusal for an EBS direct API request, or None to serve it."""
    m = _PATH.match(path)
    if not m:
        return None
    s = _world.settings
    if m.group("what") and m.group("idx") is not None:
        snap = m.group("id")
        op = "GetSnapshotBlock" if method == "GET" else "PutSnapshotBlock"
        if not _limits.allow(("block", snap), s.ebs_block_rps) or not _limits.allow(
            ("account-block", account), s.ebs_account_block_rps
        ):
            _world.count(f"throttled:{op}")
            return _Refusal(
                400,
                "RequestThrottledException",
                f"Rate exceeded for {op} on {snap}",
                "SNAPSHOT_THROTTLED" if op == "GetSnapshotBlock" else "ACCOUNT_THROTTLED",
            )
    elif m.group("what"):
        if not _limits.allow(("list", account), s.ebs_list_rps):
            _world.count("throttled:list")
            return _Refusal(400, "RequestThrottledException", "Rate exceeded", "ACCOUNT_THROTTLED")
    elif method == "POST":
        if not _limits.allow(("start", account), s.ebs_start_rps):
            _world.count("throttled:start")
            return _Refusal(400, "RequestThrottledException", "Rate exceeded", "ACCOUNT_THROTTLED")
    if method == "GET" and m.group("id"):
        ids = [m.group("id")]
        if m.group("what") == "changedblocks" and query.get("firstSnapshotId"):
            ids.append(query["firstSnapshotId"])
        backend = ebs_backends[account][region].ec2_backend
        for snap in ids:
            found = backend.snapshots.get(snap)
            if found is None or snap not in ebs_backends[account][region].snapshots:
                return _Refusal(404, "ResourceNotFoundException", f"The snapshot '{snap}' does not exist.", "SNAPSHOT_NOT_FOUND")
            if found.status != "completed":
                _world.count("refused:read-pending-snapshot")
                return _Refusal(
                    404,
                    "ResourceNotFoundException",
                    f"The snapshot '{snap}' is {found.status}; the EBS direct APIs read completed snapshots only.",
                    "SNAPSHOT_NOT_FOUND",
                )
    return None


def refusal_response(refusal):
    body = json.dumps({"Message": refusal.message, "Reason": refusal.reason}).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", refusal.kind),
        ("Content-Length", str(len(body))),
    ]
    return refusal.status, headers, body


def install(world):
    global _world
    _world = world
    EBSResponse.start_snapshot = _start_snapshot
    EBSBackend.complete_snapshot = _complete_snapshot
