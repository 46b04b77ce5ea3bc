"""Amazon RDS as AWS documents it, patched into moto's models.

moto 5.2.5 makes every RDS snapshot `available` the moment it is asked for,
checks no states, counts automated snapshots against a quota of 1000,
resolves a snapshot ARN of another account in the caller's own account,
replaces a DB cluster that already exists, gives every DB instance the same
DbiResourceId, and keeps `admin` / `P@55w0rd!` in every RDS-managed master
secret (docs/design/rds-backups.md, section 1). Here:

- Snapshots take time. CreateDBSnapshot and CreateDBClusterSnapshot answer
  `creating`, CopyDBSnapshot and CopyDBClusterSnapshot `copying` (to cancel
  a copy, delete the target "while that DB cluster snapshot is in copying
  status", Aurora User Guide, "Copying a DB cluster snapshot"), for
  REALISM_RDS_SNAPSHOT_SECONDS / REALISM_RDS_COPY_SECONDS, with a
  PercentProgress that moves from 0 to 100 (a member of DBSnapshot and
  DBClusterSnapshot, RDS API Reference). A
  copy names its source: SourceDBSnapshotIdentifier (the source's ARN) and
  SourceRegion; SourceDBClusterSnapshotArn for a cluster snapshot.
- A DB instance is `backing-up` while a manual snapshot of it is
  `creating` ("backing-up: The DB instance is currently being backed up",
  RDS User Guide, "DB instance status").
- States are checked. "The source DB instance must be in the available
  state" (CreateDBSnapshot): otherwise InvalidDBInstanceState ("Cannot
  create a snapshot because the database instance <id> is not currently
  in the available state.", AWS's wording). "The source DB snapshot must
  be in the available state" (CopyDBSnapshot): copying, restoring,
  sharing (ModifyDBSnapshotAttribute) or deleting a snapshot that is not
  `available` answers InvalidDBSnapshotState (InvalidDBClusterSnapshot-
  StateFault for cluster snapshots), except that deleting a `copying`
  target cancels the copy. DeleteDBSnapshot answers the snapshot `deleted`.
- Quotas: "Manual DB instance snapshots: 100" and "Manual DB cluster
  snapshots: 100" per Region (RDS User Guide, "Quotas in Amazon RDS"),
  REALISM_RDS_MANUAL_SNAPSHOT_QUOTA: automated `rds:` snapshots do not
  count; a create or copy beyond it answers SnapshotQuotaExceeded.
- Encryption across Regions and accounts: "If you copy an encrypted
  snapshot to a different Amazon Web Services Region, then you must
  specify an Amazon Web Services KMS key identifier for the destination"
  and "If you copy an encrypted snapshot that is shared from another
  Amazon Web Services account, then you must specify a value for
  KmsKeyId" (CopyDBSnapshot, KmsKeyId; the same for CopyDBClusterSnapshot):
  without it, InvalidParameterCombination (AWS does not document the code
  it answers; this is the layer's choice).
- Accounts: a snapshot ARN names its account. CopyDBSnapshot,
  CopyDBClusterSnapshot, RestoreDBInstanceFromDBSnapshot and
  RestoreDBClusterFromSnapshot resolve an ARN of another account in that
  account, and only when the caller's account is in the snapshot's
  `restore` attribute (or it is public, `all`): "If you are copying from a
  shared manual DB snapshot, this parameter must be the Amazon Resource
  Name (ARN) of the shared DB snapshot" (CopyDBSnapshot,
  SourceDBSnapshotIdentifier; RestoreDBInstanceFromDBSnapshot says the
  same); otherwise DBSnapshotNotFound (DBClusterSnapshotNotFoundFault).
  A restore names a snapshot of its own Region.
- Clusters: CreateDBCluster and RestoreDBClusterFromSnapshot onto an
  identifier in use answer DBClusterAlreadyExistsFault ("The user already
  has a DB cluster with the given identifier", RDS API Reference) instead
  of replacing the cluster; restoring a snapshot of a cluster whose master
  password RDS managed works (moto: KeyError, HTTP 500) and the new cluster
  gets a secret of its own.
- Identity: every DB instance has a DbiResourceId of its own, "the Amazon
  Web Services Region-unique, immutable identifier for the DB instance"
  (DBInstance, RDS API Reference; "db-" and 26 capitals and digits); a DB
  cluster has its DbClusterResourceId (moto already makes one per cluster).
- Databases: the test harness may back a DB instance with a real database
  server it started (POST /realism/rds/backing, `control` below): the
  instance's Endpoint is that server's host and port, and its RDS-managed
  master secret (ManageMasterUserPassword) holds {"username": <the
  instance's MasterUsername>, "password": <the server's password>}, the
  keys RDS uses ("Password management with Amazon RDS and AWS Secrets
  Manager", RDS User Guide). A backing named before its instance exists
  applies when the instance is created (a RestoreDBInstanceFromDBSnapshot
  target, say); DeleteDBInstance forgets it.
  Without a backing, the secret still names the instance's MasterUsername.
"""

import copy
import inspect
import json
import random
import string

from moto.rds.exceptions import (
    DBClusterSnapshotNotFoundError,
    DBInstanceAlreadyExists,
    DBSnapshotNotFoundFault,
    InvalidParameterValue,
    RDSClientError,
    SnapshotQuotaExceededFault,
)
from moto.rds.models import (
    DBCluster,
    DBClusterSnapshot,
    DBInstance,
    DBSnapshot,
    MasterUserSecret,
    RDSBackend,
    rds_backends,
)
from moto.rds.utils import split_arn

from world import World

_world: World = None  # set by install()

# (account, region, lower-case DB instance identifier) -> {host, port, password}
_backings = {}

# Error shapes of the RDS model -> the code AWS sends (moto serializes a
# shape's code and HTTP status from the model; the counters use the code).
_WIRE = {
    "InvalidDBSnapshotStateFault": "InvalidDBSnapshotState",
    "InvalidDBInstanceStateFault": "InvalidDBInstanceState",
    "InvalidDBClusterSnapshotStateFault": "InvalidDBClusterSnapshotStateFault",
    "DBClusterAlreadyExistsFault": "DBClusterAlreadyExistsFault",
    "InvalidParameterCombination": "InvalidParameterCombination",
}


def _refuse(shape, message):
    _world.count(f"rds:refused:{_WIRE.get(shape, shape)}")
    return RDSClientError(shape, message)


def _quota_exceeded():
    _world.count("rds:refused:SnapshotQuotaExceeded")
    return SnapshotQuotaExceededFault()


def _bind(original, self, args, kwargs):
    """The arguments of a call of moto's `original`, by name, defaults
    included."""
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _resource_id(prefix):
    alphabet = string.ascii_uppercase + string.digits
    return prefix + "".join(random.SystemRandom().choice(alphabet) for _ in range(26))


def _manual(snapshots):
    return sum(1 for s in list(snapshots.values()) if s.snapshot_type == "manual")


# --- snapshots in flight --------------------------------------------------


def _start(snapshot, status, seconds, counter):
    """`snapshot` is `status` (creating or copying) for `seconds`, then
    `available`."""
    snapshot.status = status
    snapshot._realism_started = _world.now()
    snapshot._realism_seconds = seconds
    _world.count(counter)

    def done(s=snapshot):
        if s.status == status:
            s.status = "available"
            s._realism_done = True

    _world.later(("rds-snapshot", snapshot.arn), seconds, done)


def _percent_progress(snapshot):
    started = getattr(snapshot, "_realism_started", None)
    if started is None or getattr(snapshot, "_realism_done", False) or snapshot.status == "available":
        return 100
    seconds = getattr(snapshot, "_realism_seconds", 1) or 1
    return max(0, min(99, int(100 * (_world.now() - started) / seconds)))


def _patch_progress():
    def ignore(self, value):
        # DBClusterSnapshot.__init__ sets percent_progress = 100.
        pass

    DBSnapshot.percent_progress = property(_percent_progress, ignore)
    DBClusterSnapshot.percent_progress = property(_percent_progress, ignore)


def _snapshot_state(snapshot, shape, kind, action):
    if snapshot.status != "available":
        name = snapshot.resource_id
        return _refuse(
            shape,
            f"{kind} {name} is not in available state (status: {snapshot.status}); "
            f"{action} needs an available snapshot.",
        )
    return None


# --- DB instances ---------------------------------------------------------


def _backing_up(instance):
    """Whether a manual snapshot of `instance` (this very instance, not a
    former one of the same name) is being created."""
    backend = getattr(instance, "backend", None)
    if backend is None:
        return False
    for s in list(backend.database_snapshots.values()):
        if s.status == "creating" and getattr(s, "_realism_instance", None) is instance:
            return True
    return False


def _patch_instances():
    init = DBInstance.__init__
    address = DBInstance.address

    def instance_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # "db-" and 26 characters, unique per instance (moto: a constant).
        self.dbi_resource_id = _resource_id("db-")

    def status_get(self):
        status = self.__dict__.get("_realism_status", "available")
        if status == "available" and _backing_up(self):
            return "backing-up"
        return status

    def status_set(self, value):
        self.__dict__["_realism_status"] = value

    def address_get(self):
        backing = _backing_of(self)
        return backing["host"] if backing else address.fget(self)

    def endpoint_get(self):
        backing = _backing_of(self)
        return {"Address": self.address, "Port": backing["port"] if backing else self.port}

    DBInstance.__init__ = instance_init
    DBInstance.status = property(status_get, status_set)
    DBInstance.address = property(address_get)
    DBInstance.endpoint = property(endpoint_get)

    replica = RDSBackend.create_db_instance_read_replica
    delete = RDSBackend.delete_db_instance

    def create_db_instance_read_replica(self, db_kwargs):
        instance = replica(self, db_kwargs)
        # A replica is an instance of its own (moto copies the primary).
        instance.dbi_resource_id = _resource_id("db-")
        return instance

    def delete_db_instance(self, *args, **kwargs):
        instance = delete(self, *args, **kwargs)
        # The server backed that instance; a new one of the same name is
        # another database.
        _backings.pop((self.account_id, self.region_name, instance.db_instance_identifier), None)
        return instance

    RDSBackend.create_db_instance_read_replica = create_db_instance_read_replica
    RDSBackend.delete_db_instance = delete_db_instance
    _patch_security_group_changes()


def attached_groups(instance):
    """The security groups a DB instance's network interfaces are in, with
    their membership status: its list, and those being removed."""
    states = instance.__dict__.get("_realism_memberships", {})
    listed = [(g, states.get(g, "active")) for g in instance.vpc_security_group_ids]
    return listed + [(g, s) for g, s in states.items() if s == "removing"]


def _patch_security_group_changes():
    """ModifyDBInstance with VpcSecurityGroupIds, as RDS does it: refused
    with InvalidDBInstanceState unless the instance is available (or being
    backed up); otherwise the instance is `modifying` for a while, a group
    being added is listed `adding` and one being removed `removing` (and
    still holds the instance's network interface, so EC2 refuses to delete
    it), then the list is the new one, all `active` ("Modifying an Amazon
    RDS DB instance"; VpcSecurityGroupMembership in the API Reference)."""
    modify = RDSBackend.modify_db_instance
    from moto.rds.exceptions import RDSClientError

    def modify_db_instance(self, db_instance_identifier, db_kwargs):
        database = self.describe_db_instances(db_instance_identifier)[0]
        wanted = db_kwargs.get("vpc_security_group_ids")
        if wanted is not None and database.status not in ("available", "backing-up"):
            _world.count("rds:refused:InvalidDBInstanceState")
            raise RDSClientError(
                "InvalidDBInstanceState",
                f"Database instance is not in available state (it is {database.status}).",
            )
        before = list(database.vpc_security_group_ids)
        result = modify(self, db_instance_identifier, db_kwargs)
        if wanted is None or list(wanted) == before:
            return result
        after = list(database.vpc_security_group_ids)
        removing = [g for g in before if g not in after]
        database.__dict__["_realism_memberships"] = {
            **{g: "adding" for g in after if g not in before},
            **{g: "removing" for g in removing},
        }
        database.status = "modifying"
        _world.count("rds:security-groups-modifying")

        def done(instance=database):
            instance.__dict__.pop("_realism_memberships", None)
            if instance.status == "modifying":
                instance.status = "available"

        _world.later(("rds-modify", database.arn), _world.settings.rds_modify, done)
        return result

    def vpc_security_groups(self):
        return [{"VpcSecurityGroupId": g, "Status": s} for g, s in attached_groups(self)]

    RDSBackend.modify_db_instance = modify_db_instance
    DBInstance.vpc_security_group_membership_list = property(vpc_security_groups)


# --- DB snapshots ---------------------------------------------------------


def _source(backend, identifier, resource_type, not_found, count=True):
    """The snapshot `identifier` (an identifier or an ARN) names for a
    caller of `backend`'s account: an ARN resolves in its own account and
    Region, and a snapshot of another account only when shared with the
    caller (`restore` attribute) or public."""
    if not identifier.startswith("arn:"):
        snapshots = backend.resource_map[resource_type]
        if identifier not in snapshots:
            raise not_found(identifier)
        return snapshots[identifier]
    try:
        region, account, _kind, name = split_arn(identifier)
        owner = rds_backends[account][region]
    except (ValueError, KeyError):
        raise not_found(identifier) from None
    snapshot = owner.resource_map[resource_type].get(name)
    if snapshot is None:
        raise not_found(identifier)
    if account != backend.account_id:
        shared = snapshot.attributes.get("restore") or []
        if backend.account_id not in shared and "all" not in shared:
            _world.count("rds:refused:not-shared")
            raise not_found(identifier)
        if count:
            _world.count("rds:shared-source")
    return snapshot


def _encrypted_copy_needs_key(backend, source, kms_key_id, kind):
    if kms_key_id or not getattr(source, "storage_encrypted", False):
        return None
    if source.region != backend.region_name:
        return _refuse(
            "InvalidParameterCombination",
            f"KmsKeyId is required to copy the encrypted {kind} {source.arn} to "
            f"{backend.region_name}: KMS keys are specific to the AWS Region they are created in.",
        )
    if source.account_id != backend.account_id:
        return _refuse(
            "InvalidParameterCombination",
            f"KmsKeyId is required to copy the encrypted {kind} {source.arn} shared from "
            f"account {source.account_id}.",
        )
    return None


def _patch_db_snapshots():
    create = RDSBackend.create_db_snapshot
    copy_snapshot = RDSBackend.copy_db_snapshot
    delete = RDSBackend.delete_db_snapshot
    share = RDSBackend.modify_db_snapshot_attribute

    def create_db_snapshot(self, *args, **kwargs):
        a = _bind(create, self, args, kwargs)
        manual = a["snapshot_type"] == "manual"
        instance = self.databases.get(a["db_instance_identifier"])
        fresh = a["db_snapshot_identifier"] not in self.database_snapshots
        if manual and instance is not None and fresh:
            # moto's own checks (no such instance, identifier taken) first.
            if instance.status != "available":
                raise _refuse(
                    "InvalidDBInstanceStateFault",
                    f"Cannot create a snapshot because the database instance "
                    f"{instance.db_instance_identifier} is not currently in the available state.",
                )
            if _manual(self.database_snapshots) >= _world.settings.rds_manual_snapshot_quota:
                raise _quota_exceeded()
        snapshot = create(self, *args, **kwargs)
        if manual:
            snapshot._realism_instance = instance
            _start(snapshot, "creating", _world.settings.rds_snapshot, "rds:snapshot-creating")
        return snapshot

    def copy_db_snapshot(self, *args, **kwargs):
        a = _bind(copy_snapshot, self, args, kwargs)
        source_id, target_id = a["source_db_snapshot_identifier"], a["target_db_snapshot_identifier"]
        if target_id in self.database_snapshots:
            return copy_snapshot(self, *args, **kwargs)  # DBSnapshotAlreadyExists
        if source_id.startswith("arn:"):
            self.extract_snapshot_name_from_arn(source_id)  # moto's check of the ARN's kind
        source = _source(self, source_id, DBSnapshot, DBSnapshotNotFoundFault)
        refusal = _snapshot_state(source, "InvalidDBSnapshotStateFault", "DBSnapshot", "CopyDBSnapshot")
        if refusal is None and _manual(self.database_snapshots) >= _world.settings.rds_manual_snapshot_quota:
            refusal = _quota_exceeded()
        refusal = refusal or _encrypted_copy_needs_key(self, source, a["kms_key_id"], "DB snapshot")
        if refusal is not None:
            raise refusal
        target = copy_snapshot(self, *args, **kwargs)
        target.source_db_snapshot_identifier = source.arn
        target.source_region = source.region
        _start(target, "copying", _world.settings.rds_copy, "rds:snapshot-copying")
        return target

    def get_snapshot(self, identifier, resource_type, not_found_exception):
        # moto's Copy* look their source up again here (counted once, above).
        return _source(self, identifier, resource_type, not_found_exception, count=False)

    def delete_db_snapshot(self, db_snapshot_identifier):
        snapshot = self.database_snapshots.get(db_snapshot_identifier)
        if snapshot is not None:
            _deletable(snapshot, "InvalidDBSnapshotStateFault", "DBSnapshot")
        deleted = delete(self, db_snapshot_identifier)
        deleted.status = "deleted"  # DeleteDBSnapshot's answer on AWS
        return deleted

    def modify_db_snapshot_attribute(self, db_snapshot_identifier, *args, **kwargs):
        snapshot = self.database_snapshots.get(db_snapshot_identifier)
        if snapshot is not None:
            refusal = _snapshot_state(
                snapshot, "InvalidDBSnapshotStateFault", "DBSnapshot", "ModifyDBSnapshotAttribute"
            )
            if refusal is not None:
                raise refusal
        return share(self, db_snapshot_identifier, *args, **kwargs)

    RDSBackend.create_db_snapshot = create_db_snapshot
    RDSBackend.copy_db_snapshot = copy_db_snapshot
    RDSBackend.get_snapshot = get_snapshot
    RDSBackend.delete_db_snapshot = delete_db_snapshot
    RDSBackend.modify_db_snapshot_attribute = modify_db_snapshot_attribute
    RDSBackend.restore_db_instance_from_db_snapshot = _restore_db_instance
    # The layer counts manual snapshots itself (moto: all, up to 1000).
    RDSBackend.SNAPSHOT_QUOTA = property(lambda self: 10**9)


def _deletable(snapshot, shape, kind):
    """Deleting a `copying` snapshot cancels the copy; deleting one that is
    otherwise not `available` is refused."""
    if snapshot.status == "copying":
        _world.cancel(("rds-snapshot", snapshot.arn))
        _world.count("rds:copy-cancelled")
        return
    refusal = _snapshot_state(snapshot, shape, kind, f"Delete{kind}")
    if refusal is not None:
        raise refusal


# Attributes of a DB instance that a restored instance does not take from
# the snapshot's (moto's choice, kept), and those that belong to the
# snapshot's account when it is another's.
_NOT_RESTORED = ("backend", "db_parameter_group_name", "vpc_security_group_ids", "max_allocated_storage")
_OWNER_ONLY = ("db_subnet_group_name", "db_subnet_group", "option_group_name")


def _restore_db_instance(self, from_snapshot_id, overrides):
    """RestoreDBInstanceFromDBSnapshot (moto's, with the snapshot resolved
    as AWS does): an ARN names its account, the snapshot must be shared
    with the caller, in the caller's Region, and `available`."""
    if from_snapshot_id.startswith("arn:"):
        self.extract_snapshot_name_from_arn(from_snapshot_id)
    snapshot = _source(self, from_snapshot_id, DBSnapshot, DBSnapshotNotFoundFault)
    if snapshot.region != self.region_name:
        raise DBSnapshotNotFoundFault(from_snapshot_id)
    refusal = _snapshot_state(
        snapshot, "InvalidDBSnapshotStateFault", "DBSnapshot", "RestoreDBInstanceFromDBSnapshot"
    )
    if refusal is not None:
        raise refusal
    if overrides["db_instance_identifier"] in self.databases:
        raise DBInstanceAlreadyExists()
    source = snapshot.database
    props = {}
    for key, value in source.__dict__.items():
        key = key[1:] if key.startswith("_") else key
        if key in _NOT_RESTORED or key.startswith("realism"):
            continue
        if snapshot.account_id != self.account_id and key in _OWNER_ONLY:
            continue
        props[key] = copy.copy(value)
    props["kms_key_id"] = snapshot.kms_key_id
    props["storage_encrypted"] = snapshot.encrypted
    if not source.option_group_supplied:
        props.pop("option_group_name", None)  # moto's default, rebuilt
    if "allocated_storage" in overrides and overrides["allocated_storage"] < snapshot.allocated_storage:
        raise InvalidParameterValue(
            "The allocated storage size can't be less than the source snapshot or backup size."
        )
    for key, value in overrides.items():
        if value:
            props[key] = value
    return self.create_db_instance(props)


# --- DB clusters and their snapshots ---------------------------------------


def _patch_clusters():
    create_cluster = RDSBackend.create_db_cluster
    create = RDSBackend.create_db_cluster_snapshot
    copy_snapshot = RDSBackend.copy_db_cluster_snapshot
    delete = RDSBackend.delete_db_cluster_snapshot
    share = RDSBackend.modify_db_cluster_snapshot_attribute
    get_cfg = DBCluster.get_cfg

    def create_db_cluster(self, kwargs):
        if kwargs.get("db_cluster_identifier") in self.clusters:
            raise _refuse("DBClusterAlreadyExistsFault", "DB Cluster already exists")
        return create_cluster(self, kwargs)

    def cluster_cfg(self):
        # A cluster whose password RDS manages has no _master_user_password
        # (moto: KeyError, HTTP 500); the restored cluster gets its own secret.
        if "_master_user_password" in self.__dict__:
            return get_cfg(self)
        self.__dict__["_master_user_password"] = None
        try:
            cfg = get_cfg(self)
        finally:
            del self.__dict__["_master_user_password"]
        cfg.pop("master_user_secret", None)
        _world.count("rds:cluster-managed-secret-restored")
        return cfg

    def create_db_cluster_snapshot(self, *args, **kwargs):
        a = _bind(create, self, args, kwargs)
        manual = a["snapshot_type"] == "manual"
        fresh = a["db_cluster_snapshot_identifier"] not in self.cluster_snapshots
        if manual and fresh and a["db_cluster_identifier"] in self.clusters:
            if _manual(self.cluster_snapshots) >= _world.settings.rds_manual_snapshot_quota:
                raise _quota_exceeded()
        snapshot = create(self, *args, **kwargs)
        if manual:
            _start(snapshot, "creating", _world.settings.rds_snapshot, "rds:cluster-snapshot-creating")
        return snapshot

    def copy_db_cluster_snapshot(self, *args, **kwargs):
        a = _bind(copy_snapshot, self, args, kwargs)
        source_id = a["source_db_cluster_snapshot_identifier"]
        if a["target_db_cluster_snapshot_identifier"] in self.cluster_snapshots:
            return copy_snapshot(self, *args, **kwargs)  # DBClusterSnapshotAlreadyExistsFault
        source = _source(self, source_id, DBClusterSnapshot, DBClusterSnapshotNotFoundError)
        refusal = _snapshot_state(
            source, "InvalidDBClusterSnapshotStateFault", "DBClusterSnapshot", "CopyDBClusterSnapshot"
        )
        if refusal is None and _manual(self.cluster_snapshots) >= _world.settings.rds_manual_snapshot_quota:
            refusal = _quota_exceeded()
        refusal = refusal or _encrypted_copy_needs_key(self, source, a["kms_key_id"], "DB cluster snapshot")
        if refusal is not None:
            raise refusal
        target = copy_snapshot(self, *args, **kwargs)
        target.source_db_cluster_snapshot_arn = source.arn
        _start(target, "copying", _world.settings.rds_copy, "rds:cluster-snapshot-copying")
        return target

    def delete_db_cluster_snapshot(self, db_snapshot_identifier):
        snapshot = self.cluster_snapshots.get(db_snapshot_identifier)
        if snapshot is not None:
            _deletable(snapshot, "InvalidDBClusterSnapshotStateFault", "DBClusterSnapshot")
        return delete(self, db_snapshot_identifier)

    def modify_db_cluster_snapshot_attribute(self, db_cluster_snapshot_identifier, *args, **kwargs):
        snapshot = self.cluster_snapshots.get(db_cluster_snapshot_identifier)
        if snapshot is not None:
            refusal = _snapshot_state(
                snapshot,
                "InvalidDBClusterSnapshotStateFault",
                "DBClusterSnapshot",
                "ModifyDBClusterSnapshotAttribute",
            )
            if refusal is not None:
                raise refusal
        return share(self, db_cluster_snapshot_identifier, *args, **kwargs)

    def restore_db_cluster_from_snapshot(self, from_snapshot_id, overrides):
        snapshot = _source(self, from_snapshot_id, DBClusterSnapshot, DBClusterSnapshotNotFoundError)
        if snapshot.region != self.region_name:
            raise DBClusterSnapshotNotFoundError(from_snapshot_id)
        refusal = _snapshot_state(
            snapshot,
            "InvalidDBClusterSnapshotStateFault",
            "DBClusterSnapshot",
            "RestoreDBClusterFromSnapshot",
        )
        if refusal is not None:
            raise refusal
        if overrides.get("db_cluster_identifier") in self.clusters:
            raise _refuse("DBClusterAlreadyExistsFault", "DB Cluster already exists")
        props = copy.copy(snapshot.cluster.get_cfg())
        for key, value in overrides.items():
            if value:
                props[key] = value
        return self.create_db_cluster(props)

    RDSBackend.create_db_cluster = create_db_cluster
    DBCluster.get_cfg = cluster_cfg
    RDSBackend.create_db_cluster_snapshot = create_db_cluster_snapshot
    RDSBackend.copy_db_cluster_snapshot = copy_db_cluster_snapshot
    RDSBackend.delete_db_cluster_snapshot = delete_db_cluster_snapshot
    RDSBackend.modify_db_cluster_snapshot_attribute = modify_db_cluster_snapshot_attribute
    RDSBackend.restore_db_cluster_from_snapshot = restore_db_cluster_from_snapshot


# --- databases behind instances -------------------------------------------


def _backing_of(instance):
    try:
        key = (instance.account_id, instance.region, instance.db_instance_identifier)
    except Exception:
        return None
    return _backings.get(key)


def _secret_string(backing, username):
    return json.dumps({"username": username, "password": backing["password"]})


def _patch_secrets():
    generate = MasterUserSecret._generate_secret_string

    def generate_secret_string(self):
        value = json.loads(generate(self))
        username = getattr(self.resource, "master_username", None)
        if username:
            value["username"] = username
        backing = _backing_of(self.resource) if isinstance(self.resource, DBInstance) else None
        if backing is not None:
            value["password"] = backing["password"]
            _world.count("rds:backed-secret")
        return json.dumps(value)

    MasterUserSecret._generate_secret_string = generate_secret_string


def _instance(account, region, identifier):
    return rds_backends[account][region].databases.get(identifier)


def back(spec):
    """POST /realism/rds/backing: instance `dbInstanceIdentifier` of
    `account` and `region` (now, or once created) is served by the database
    at `host`:`port` whose master password is `password`."""
    account = str(spec.get("account", "123456789012"))
    region = spec.get("region", "us-east-1")
    identifier = str(spec["dbInstanceIdentifier"]).lower()
    host, port, password = spec["host"], int(spec["port"]), spec["password"]
    if not isinstance(host, str) or not host or not 0 < port < 65536 or not isinstance(password, str):
        raise ValueError("host is a name or address, port 1..65535, password a string")
    backing = {"host": host, "port": port, "password": password}
    with _world.lock:
        _backings[(account, region, identifier)] = backing
        instance = _instance(account, region, identifier)
    answer = {"account": account, "region": region, "dbInstanceIdentifier": identifier, "applied": False}
    answer.update(host=host, port=port)
    if instance is not None:
        answer["applied"] = True
        secret = getattr(instance, "master_user_secret", None)
        if secret is not None:
            secret.secretsmanager.put_secret_value(
                secret.secret.name,
                _secret_string(backing, instance.master_username),
                None,
                None,
                ["AWSCURRENT"],
            )
            answer["secretArn"] = secret.secret_arn
    _world.count("rds:backed")
    return answer


def control(method, path, body, query):
    """The /realism/rds/ control API: (HTTP status, JSON answer)."""
    if path.rstrip("/") != "/realism/rds/backing":
        return 404, {"error": f"no {method} {path}"}
    if method == "POST":
        return 200, back(body)
    spec = body or query
    key = (
        str(spec.get("account", "123456789012")),
        spec.get("region", "us-east-1"),
        str(spec.get("dbInstanceIdentifier", "")).lower(),
    )
    if method == "DELETE":
        with _world.lock:
            return 200, {"removed": _backings.pop(key, None) is not None}
    with _world.lock:
        return 200, [
            dict(b, account=a, region=r, dbInstanceIdentifier=i) for (a, r, i), b in _backings.items()
        ]


def install(world):
    global _world
    _world = world
    _patch_progress()
    _patch_instances()
    _patch_db_snapshots()
    _patch_clusters()
    _patch_secrets()
