"""Checks the realism layer's RDS (rds.py) against a running layer.

    python scripts/realism/check_rds.py [ENDPOINT]

ENDPOINT defaults to $AWS_ENDPOINT_URL (scripts/testenv env). The layer
must already run (this script starts nothing); it reads the layer's
settings from GET /realism/ and waits accordingly (REALISM_RDS_SNAPSHOT_-
SECONDS, REALISM_RDS_COPY_SECONDS; the quota checks make
REALISM_RDS_MANUAL_SNAPSHOT_QUOTA snapshots and cluster snapshots). It
works in the emulator's account and, for sharing and quotas, in accounts
of its own (role sessions of accounts no other test uses), with names of
its own, and leaves what it made there (a test world is thrown away
whole). Prints one line per check; exits non-zero at the first that fails.

IAM (check_iam): a role made through POST /realism/roles holds the RDS
statements of iam/controller-policy.json; its session's CreateDBSnapshot,
DeleteDBSnapshot, Describe* and RestoreDBInstanceFromDBSnapshot calls are
allowed or refused (AccessDenied, HTTP 403) as IAM evaluates them for RDS:
each resource of the action, tag-on-create as rds:AddTagsToResource.
"""

import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.exceptions import ClientError

ACCOUNT, REGION, OTHER_REGION = "123456789012", "us-east-1", "us-west-2"
ENDPOINT = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AWS_ENDPOINT_URL", "")).rstrip("/")
ADMIN = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
RUN = f"chk{int(time.time() * 1000) % 10**10:x}{random.randrange(16**3):03x}"
NOT_FOUND = {"DBSnapshotNotFound", "DBClusterSnapshotNotFoundFault", "DBInstanceNotFound"}
POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "iam", "controller-policy.json")
MANAGED = {"Key": "tender.dev/managed-by", "Value": "tender"}


def ok(what):
    print(f"ok: {what}", flush=True)


def name(what):
    return f"{RUN}-{what}"


def control(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(ENDPOINT + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def counters():
    return control("GET", "/realism/")[1]["counters"]


def refused(call, code, **kwargs):
    """Asserts that `call(**kwargs)` fails with wire error `code` (HTTP 404
    for the NotFound faults, 400 otherwise); its message."""
    try:
        call(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"{call.__name__}: {got} ({e}), expected {code}"
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == (404 if code in NOT_FOUND else 400), (code, status)
        return e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} {kwargs} was accepted, expected {code}")


def session(account):
    """An administrator of `account` (a session of a role the emulator does
    not have: it acts unrestricted, in that account)."""
    sts = ADMIN.client("sts", endpoint_url=ENDPOINT)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/tender-check-rds", RoleSessionName="check")[
        "Credentials"
    ]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=REGION,
    )


def new_account():
    return str(random.randrange(2 * 10**11, 9 * 10**11))


def instance(rds, identifier, **kwargs):
    spec = dict(
        DBInstanceIdentifier=identifier,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="tender_admin",
        MasterUserPassword="not-the-secret-1",
    )
    spec.update(kwargs)
    return rds.create_db_instance(**{k: v for k, v in spec.items() if v is not None})["DBInstance"]


def cluster(rds, identifier, **kwargs):
    spec = dict(DBClusterIdentifier=identifier, Engine="aurora-postgresql", MasterUsername="tender_admin")
    spec.update(kwargs)
    if "ManageMasterUserPassword" not in spec:
        spec["MasterUserPassword"] = "not-the-secret-1"
    return rds.create_db_cluster(**spec)["DBCluster"]


def db_copy(source, target, **kwargs):
    return dict(SourceDBSnapshotIdentifier=source, TargetDBSnapshotIdentifier=target, **kwargs)


def cluster_copy(source, target, **kwargs):
    return dict(SourceDBClusterSnapshotIdentifier=source, TargetDBClusterSnapshotIdentifier=target, **kwargs)


def snapshot(rds, identifier):
    return rds.describe_db_snapshots(DBSnapshotIdentifier=identifier)["DBSnapshots"][0]


def cluster_snapshot(rds, identifier):
    return rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=identifier)["DBClusterSnapshots"][0]


def status(rds, identifier):
    return rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]["DBInstanceStatus"]


def wait_available(describe, seconds):
    """Polls `describe()` until its Status is `available` (at most
    `seconds` + 3 s); the progress values seen on the way."""
    seen, deadline = [], time.monotonic() + seconds + 3
    while time.monotonic() < deadline:
        answer = describe()
        seen.append(answer["PercentProgress"])
        if answer["Status"] == "available":
            return answer, seen
        time.sleep(0.25)
    raise AssertionError(f"not available after {seconds + 3} s: {answer['Status']} {seen}")


def rising(seen):
    assert seen == sorted(seen), f"PercentProgress went back: {seen}"
    assert seen[-1] == 100 and len(set(seen)) >= 3, f"PercentProgress did not move: {seen}"


# --- checks ---------------------------------------------------------------


def check_identity(rds):
    pattern = re.compile(r"^db-[A-Z0-9]{26}$")
    ids = [instance(rds, name(f"id{i}"))["DbiResourceId"] for i in range(2)]
    assert all(pattern.match(i) for i in ids) and len(set(ids)) == 2, ids
    listed = rds.describe_db_instances(Filters=[{"Name": "dbi-resource-id", "Values": [ids[1]]}])["DBInstances"]
    assert [d["DBInstanceIdentifier"] for d in listed] == [name("id1")], listed
    ok(f"DbiResourceId unique per instance ({ids[0]}, {ids[1]}), filter dbi-resource-id finds one")
    clusters = [cluster(rds, name(f"idc{i}"))["DbClusterResourceId"] for i in range(2)]
    assert all(re.match(r"^cluster-[A-Z0-9]{26}$", c) for c in clusters) and len(set(clusters)) == 2, clusters
    ok(f"DbClusterResourceId unique per cluster ({clusters[0]}, {clusters[1]})")
    return ids


def check_db_snapshot_states(rds, settings):
    db, snap = name("db"), name("snap")
    instance(rds, db)
    before = counters()
    created = rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=snap)["DBSnapshot"]
    assert created["Status"] == "creating" and created["PercentProgress"] == 0, created
    assert created["SnapshotType"] == "manual", created
    assert status(rds, db) == "backing-up"
    ok("CreateDBSnapshot: creating, PercentProgress 0; the instance is backing-up")
    second = dict(DBInstanceIdentifier=db, DBSnapshotIdentifier=name("snap2"))
    message = refused(rds.create_db_snapshot, "InvalidDBInstanceState", **second)
    ok(f"a second CreateDBSnapshot while backing-up: InvalidDBInstanceState ({message})")
    target = name("early-copy")
    refused(rds.copy_db_snapshot, "InvalidDBSnapshotState", **db_copy(snap, target))
    refused(
        rds.restore_db_instance_from_db_snapshot,
        "InvalidDBSnapshotState",
        DBSnapshotIdentifier=snap,
        DBInstanceIdentifier=name("early-restore"),
    )
    share = dict(DBSnapshotIdentifier=snap, AttributeName="restore", ValuesToAdd=["111111111111"])
    refused(rds.modify_db_snapshot_attribute, "InvalidDBSnapshotState", **share)
    refused(rds.delete_db_snapshot, "InvalidDBSnapshotState", DBSnapshotIdentifier=snap)
    refused(rds.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=name("early-restore"))
    refused(rds.describe_db_snapshots, "DBSnapshotNotFound", DBSnapshotIdentifier=target)
    ok("a creating snapshot: Copy, Restore, ModifyDBSnapshotAttribute, Delete -> InvalidDBSnapshotState; nothing made")
    done, seen = wait_available(lambda: snapshot(rds, snap), settings["rds_snapshot"])
    rising([created["PercentProgress"]] + seen)
    assert status(rds, db) == "available", status(rds, db)
    ok(f"after {settings['rds_snapshot']} s: available, PercentProgress {seen}; the instance available again")
    after = counters()
    assert after.get("rds:refused:InvalidDBSnapshotState", 0) >= before.get("rds:refused:InvalidDBSnapshotState", 0) + 4
    assert after.get("rds:refused:InvalidDBInstanceState", 0) >= before.get("rds:refused:InvalidDBInstanceState", 0) + 1
    assert after.get("rds:snapshot-creating", 0) >= before.get("rds:snapshot-creating", 0) + 1
    ok("counted: rds:snapshot-creating, rds:refused:InvalidDBSnapshotState, rds:refused:InvalidDBInstanceState")

    stopped = name("stopped")
    instance(rds, stopped)
    rds.stop_db_instance(DBInstanceIdentifier=stopped)
    assert status(rds, stopped) == "stopped"
    of_stopped = dict(DBInstanceIdentifier=stopped, DBSnapshotIdentifier=name("of-stopped"))
    refused(rds.create_db_snapshot, "InvalidDBInstanceState", **of_stopped)
    ok("CreateDBSnapshot of a stopped instance: InvalidDBInstanceState")
    automated = rds.describe_db_snapshots(DBInstanceIdentifier=db, SnapshotType="automated")["DBSnapshots"]
    assert automated and all(s["Status"] == "available" for s in automated), automated
    ok("the automated snapshot of a new instance is available (not a manual one in flight)")
    return db, snap


def check_db_copies(rds, settings, db, snap):
    source_arn = snapshot(rds, snap)["DBSnapshotArn"]
    cancelled, kept = name("copy-cancelled"), name("copy")
    copy = rds.copy_db_snapshot(SourceDBSnapshotIdentifier=snap, TargetDBSnapshotIdentifier=cancelled)["DBSnapshot"]
    assert copy["Status"] == "copying" and copy["PercentProgress"] == 0, copy
    assert copy["SourceDBSnapshotIdentifier"] == source_arn and copy["SourceRegion"] == REGION, copy
    assert status(rds, db) == "available", "a copy does not back the instance up"
    ok(f"CopyDBSnapshot: copying, PercentProgress 0, SourceDBSnapshotIdentifier {source_arn}, SourceRegion {REGION}")
    refused(
        rds.restore_db_instance_from_db_snapshot,
        "InvalidDBSnapshotState",
        DBSnapshotIdentifier=cancelled,
        DBInstanceIdentifier=name("from-copying"),
    )
    refused(rds.copy_db_snapshot, "InvalidDBSnapshotState", **db_copy(cancelled, name("x")))
    ok("a copying snapshot cannot be restored or copied (InvalidDBSnapshotState)")
    before = counters().get("rds:copy-cancelled", 0)
    deleted = rds.delete_db_snapshot(DBSnapshotIdentifier=cancelled)["DBSnapshot"]
    assert deleted["Status"] == "deleted", deleted
    assert counters().get("rds:copy-cancelled", 0) == before + 1
    ok("DeleteDBSnapshot of a copying target is accepted (cancels the copy), answers deleted")
    copy = rds.copy_db_snapshot(SourceDBSnapshotIdentifier=source_arn, TargetDBSnapshotIdentifier=kept)["DBSnapshot"]
    assert copy["Status"] == "copying", copy
    done, seen = wait_available(lambda: snapshot(rds, kept), settings["rds_copy"])
    rising([0] + seen)
    assert done["SourceDBSnapshotIdentifier"] == source_arn, done
    refused(rds.describe_db_snapshots, "DBSnapshotNotFound", DBSnapshotIdentifier=cancelled)
    ok(f"a copy (source by ARN) available after {settings['rds_copy']} s, PercentProgress {seen}")
    ok("the cancelled copy stays gone")
    deleted = rds.delete_db_snapshot(DBSnapshotIdentifier=kept)["DBSnapshot"]
    assert deleted["Status"] == "deleted", deleted
    restore = dict(DBSnapshotIdentifier=snap, DBInstanceIdentifier=name("restored"))
    restored = rds.restore_db_instance_from_db_snapshot(**restore)
    assert restored["DBInstance"]["DBInstanceStatus"] == "available", restored
    ok("an available snapshot deletes and restores")
    return restored["DBInstance"]["DbiResourceId"]


def check_clusters(rds, settings):
    cl, snap = name("cl"), name("clsnap")
    created = cluster(rds, cl, ManageMasterUserPassword=True)
    secret = created["MasterUserSecret"]["SecretArn"]
    again = dict(
        DBClusterIdentifier=cl, Engine="aurora-postgresql", MasterUsername="x", MasterUserPassword="not-the-secret-2"
    )
    message = refused(rds.create_db_cluster, "DBClusterAlreadyExistsFault", **again)
    same = rds.describe_db_clusters(DBClusterIdentifier=cl)["DBClusters"][0]
    assert same["DbClusterResourceId"] == created["DbClusterResourceId"], "the cluster was replaced"
    ok(f"CreateDBCluster onto an existing identifier: DBClusterAlreadyExistsFault ({message}), cluster kept")
    made = rds.create_db_cluster_snapshot(DBClusterIdentifier=cl, DBClusterSnapshotIdentifier=snap)["DBClusterSnapshot"]
    assert made["Status"] == "creating" and made["PercentProgress"] == 0, made
    ok("CreateDBClusterSnapshot: creating, PercentProgress 0")
    code = "InvalidDBClusterSnapshotStateFault"
    refused(rds.copy_db_cluster_snapshot, code, **cluster_copy(snap, name("clx")))
    restore = dict(SnapshotIdentifier=snap, DBClusterIdentifier=name("clx"), Engine="aurora-postgresql")
    refused(rds.restore_db_cluster_from_snapshot, code, **restore)
    share = dict(DBClusterSnapshotIdentifier=snap, AttributeName="restore", ValuesToAdd=["111111111111"])
    refused(rds.modify_db_cluster_snapshot_attribute, code, **share)
    refused(rds.delete_db_cluster_snapshot, code, DBClusterSnapshotIdentifier=snap)
    ok(f"a creating cluster snapshot: Copy, Restore, ModifyDBClusterSnapshotAttribute, Delete -> {code}")
    done, seen = wait_available(lambda: cluster_snapshot(rds, snap), settings["rds_snapshot"])
    rising([0] + seen)
    ok(f"cluster snapshot available after {settings['rds_snapshot']} s, PercentProgress {seen}")
    copy = rds.copy_db_cluster_snapshot(**cluster_copy(snap, name("clcopy")))["DBClusterSnapshot"]
    assert copy["Status"] == "copying" and copy["PercentProgress"] == 0, copy
    assert copy["SourceDBClusterSnapshotArn"] == done["DBClusterSnapshotArn"], copy
    rds.delete_db_cluster_snapshot(DBClusterSnapshotIdentifier=name("clcopy"))
    gone = dict(DBClusterSnapshotIdentifier=name("clcopy"))
    refused(rds.describe_db_cluster_snapshots, "DBClusterSnapshotNotFoundFault", **gone)
    ok("CopyDBClusterSnapshot: copying, SourceDBClusterSnapshotArn; deleting the copying target cancels it")
    restored = rds.restore_db_cluster_from_snapshot(
        SnapshotIdentifier=snap, DBClusterIdentifier=name("clrestored"), Engine="aurora-postgresql"
    )["DBCluster"]
    assert restored["MasterUserSecret"]["SecretArn"] != secret, restored
    assert restored["DbClusterResourceId"] != created["DbClusterResourceId"], restored
    ok("RestoreDBClusterFromSnapshot of a cluster with an RDS-managed password works (moto: HTTP 500)")
    ok("... and the restored cluster has a secret and a DbClusterResourceId of its own")
    onto = dict(SnapshotIdentifier=snap, DBClusterIdentifier=cl, Engine="aurora-postgresql")
    message = refused(rds.restore_db_cluster_from_snapshot, "DBClusterAlreadyExistsFault", **onto)
    same = rds.describe_db_clusters(DBClusterIdentifier=cl)["DBClusters"][0]
    assert same["DbClusterResourceId"] == created["DbClusterResourceId"], "the cluster was replaced"
    assert same["MasterUserSecret"]["SecretArn"] == secret, same
    ok(f"RestoreDBClusterFromSnapshot onto an existing cluster: DBClusterAlreadyExistsFault ({message}), cluster kept")
    return done["DBClusterSnapshotArn"]


def check_encryption(rds, west, settings):
    kms = ADMIN.client("kms", endpoint_url=ENDPOINT)
    kms_west = ADMIN.client("kms", endpoint_url=ENDPOINT, region_name=OTHER_REGION)
    key = kms.create_key(Description="tender check rds")["KeyMetadata"]["Arn"]
    west_key = kms_west.create_key(Description="tender check rds west")["KeyMetadata"]["Arn"]
    db, snap = name("enc"), name("encsnap")
    instance(rds, db, StorageEncrypted=True, KmsKeyId=key)
    made = rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=snap)["DBSnapshot"]
    assert made["Encrypted"], made
    done, _ = wait_available(lambda: snapshot(rds, snap), settings["rds_snapshot"])
    arn = done["DBSnapshotArn"]
    to_west = db_copy(arn, name("encwest"), SourceRegion=REGION)
    message = refused(west.copy_db_snapshot, "InvalidParameterCombination", **to_west)
    ok(f"cross-Region copy of an encrypted snapshot without KmsKeyId: InvalidParameterCombination ({message})")
    refused(west.copy_db_snapshot, "KMSKeyNotAccessibleFault", **dict(to_west, KmsKeyId=key))
    copy = west.copy_db_snapshot(**dict(to_west, KmsKeyId=west_key))["DBSnapshot"]
    assert copy["Status"] == "copying" and copy["KmsKeyId"] == west_key and copy["Encrypted"], copy
    assert copy["SourceRegion"] == REGION and copy["SourceDBSnapshotIdentifier"] == arn, copy
    ok("with the source Region's key: KMSKeyNotAccessibleFault; with a destination key: copying, encrypted with it")
    same_region = rds.copy_db_snapshot(SourceDBSnapshotIdentifier=snap, TargetDBSnapshotIdentifier=name("encsame"))
    assert same_region["DBSnapshot"]["Status"] == "copying", same_region
    ok("a copy of an encrypted snapshot in its own Region and account needs no KmsKeyId")
    ccl, csnap = name("enccl"), name("enccls")
    cluster(rds, ccl, StorageEncrypted=True, KmsKeyId=key)
    rds.create_db_cluster_snapshot(DBClusterIdentifier=ccl, DBClusterSnapshotIdentifier=csnap)
    done, _ = wait_available(lambda: cluster_snapshot(rds, csnap), settings["rds_snapshot"])
    carn = done["DBClusterSnapshotArn"]
    to_west = cluster_copy(carn, name("enccw"), SourceRegion=REGION)
    refused(west.copy_db_cluster_snapshot, "InvalidParameterCombination", **to_west)
    copy = west.copy_db_cluster_snapshot(**dict(to_west, KmsKeyId=west_key))
    assert copy["DBClusterSnapshot"]["Status"] == "copying", copy
    ok("the same for an encrypted cluster snapshot (CopyDBClusterSnapshot)")
    return arn, carn


def check_accounts(rds, settings, snap, encrypted_arn, cluster_arn):
    """`snap` is an available unencrypted snapshot of the emulator's
    account, `encrypted_arn` an encrypted one, `cluster_arn` a cluster
    snapshot."""
    other = new_account()
    theirs = session(other).client("rds", endpoint_url=ENDPOINT)
    arn = snapshot(rds, snap)["DBSnapshotArn"]
    assert f":{ACCOUNT}:" in arn, arn
    # The other account has a snapshot of the same name: moto would copy it.
    instance(theirs, name("b-db"))
    theirs.create_db_snapshot(DBInstanceIdentifier=name("b-db"), DBSnapshotIdentifier=snap)
    wait_available(lambda: snapshot(theirs, snap), settings["rds_snapshot"])
    assert snapshot(theirs, snap)["DBSnapshotArn"] != arn
    ok(f"account {other} has a snapshot named {snap} too")
    before = counters().get("rds:refused:not-shared", 0)
    restore = dict(DBSnapshotIdentifier=arn, DBInstanceIdentifier=name("b-restored"))
    cluster_copy_spec = cluster_copy(cluster_arn, name("b-clcopy"))
    refused(theirs.copy_db_snapshot, "DBSnapshotNotFound", **db_copy(arn, name("b-copy")))
    refused(theirs.restore_db_instance_from_db_snapshot, "DBSnapshotNotFound", **restore)
    refused(theirs.copy_db_cluster_snapshot, "DBClusterSnapshotNotFoundFault", **cluster_copy_spec)
    assert counters().get("rds:refused:not-shared", 0) >= before + 3
    refused(theirs.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=name("b-restored"))
    ok(f"not shared: Copy, Restore, CopyDBClusterSnapshot of {ACCOUNT}'s ARN from {other} -> not found")
    share = dict(AttributeName="restore", ValuesToAdd=[other])
    rds.modify_db_snapshot_attribute(DBSnapshotIdentifier=snap, **share)
    rds.modify_db_snapshot_attribute(DBSnapshotIdentifier=encrypted_arn.rsplit(":", 1)[1], **share)
    rds.modify_db_cluster_snapshot_attribute(DBClusterSnapshotIdentifier=cluster_arn.rsplit(":", 1)[1], **share)
    shared = theirs.describe_db_snapshots(SnapshotType="shared")["DBSnapshots"]
    assert arn in [s["DBSnapshotArn"] for s in shared], shared
    copy = theirs.copy_db_snapshot(**db_copy(arn, name("b-copy")))["DBSnapshot"]
    assert copy["Status"] == "copying" and copy["SourceDBSnapshotIdentifier"] == arn, copy
    assert f":{other}:" in copy["DBSnapshotArn"], copy
    restored = theirs.restore_db_instance_from_db_snapshot(**restore)["DBInstance"]
    assert f":{other}:" in restored["DBInstanceArn"], restored
    refused(rds.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=name("b-restored"))
    ok(f"shared with {other}: it copies and restores {ACCOUNT}'s snapshot by ARN, into its own account")
    unkeyed = db_copy(encrypted_arn, name("b-enc"))
    message = refused(theirs.copy_db_snapshot, "InvalidParameterCombination", **unkeyed)
    ok(f"a shared encrypted snapshot copied without KmsKeyId: InvalidParameterCombination ({message})")
    copy = theirs.copy_db_cluster_snapshot(**cluster_copy_spec)
    assert copy["DBClusterSnapshot"]["Status"] == "copying", copy
    ok("a shared cluster snapshot copies by ARN")
    elsewhere = arn.replace(f":{REGION}:", f":{OTHER_REGION}:")
    refused(theirs.copy_db_snapshot, "DBSnapshotNotFound", **db_copy(elsewhere, name("b-none")))
    ok("an ARN resolves in its own Region (none there: DBSnapshotNotFound)")


def check_quota(settings):
    quota = int(settings["rds_manual_snapshot_quota"])
    account = new_account()
    mine = session(account)
    rds = mine.client("rds", endpoint_url=ENDPOINT)
    west = mine.client("rds", endpoint_url=ENDPOINT, region_name=OTHER_REGION)
    db, first = name("q"), name("q0")
    instance(rds, db)
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=first)
    cl = name("qc")
    cluster(rds, cl)
    rds.create_db_cluster_snapshot(DBClusterIdentifier=cl, DBClusterSnapshotIdentifier=first)
    wait_available(lambda: snapshot(rds, first), settings["rds_snapshot"])
    wait_available(lambda: cluster_snapshot(rds, first), settings["rds_snapshot"])
    for i in range(1, quota):
        rds.copy_db_snapshot(**db_copy(first, name(f"q{i}")))
        rds.copy_db_cluster_snapshot(**cluster_copy(first, name(f"q{i}")))
    manual = rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    automated = rds.describe_db_snapshots(SnapshotType="automated")["DBSnapshots"]
    assert len(manual) == quota and len(automated) >= 1, (len(manual), len(automated))
    ok(f"account {account}: {quota} manual snapshots and {len(automated)} automated")
    before = counters().get("rds:refused:SnapshotQuotaExceeded", 0)
    refused(rds.copy_db_snapshot, "SnapshotQuotaExceeded", **db_copy(first, name("over")))
    refused(rds.create_db_snapshot, "SnapshotQuotaExceeded", DBInstanceIdentifier=db, DBSnapshotIdentifier=name("over"))
    assert status(rds, db) == "available"
    assert counters().get("rds:refused:SnapshotQuotaExceeded", 0) == before + 2
    ok(f"manual snapshot {quota + 1}: SnapshotQuotaExceeded for CopyDBSnapshot and CreateDBSnapshot")
    source = snapshot(rds, first)["DBSnapshotArn"]
    west.copy_db_snapshot(**db_copy(source, name("west"), SourceRegion=REGION))
    ok(f"the quota is per Region: a copy into {OTHER_REGION} is accepted")
    rds.delete_db_snapshot(DBSnapshotIdentifier=name(f"q{quota - 1}"))
    rds.copy_db_snapshot(**db_copy(first, name("over")))
    ok("deleting one frees its place")
    cluster_manual = rds.describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
    cluster_automated = rds.describe_db_cluster_snapshots(SnapshotType="automated")["DBClusterSnapshots"]
    assert len(cluster_manual) == quota and len(cluster_automated) >= 1, (len(cluster_manual), len(cluster_automated))
    refused(rds.copy_db_cluster_snapshot, "SnapshotQuotaExceeded", **cluster_copy(first, name("over")))
    over = dict(DBClusterIdentifier=cl, DBClusterSnapshotIdentifier=name("over"))
    refused(rds.create_db_cluster_snapshot, "SnapshotQuotaExceeded", **over)
    ok(f"cluster snapshots counted apart: {quota} manual ones, the next refused (SnapshotQuotaExceeded)")


def rds_statements():
    """The statements of the shipped controller policy that grant RDS
    actions."""
    with open(POLICY) as f:
        policy = json.load(f)
    out = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        if any(a.startswith("rds:") for a in actions):
            out.append(statement)
    sids = {st.get("Sid") for st in out}
    expected = {
        "DescribeDatabasesAndTheirSnapshots",
        "SnapshotDatabasesUnderTenderNames",
        "RestoreDatabasesFromSnapshots",
        "TagOnlyAsTenderWhatTenderCreatesInRds",
        "DeleteOnlyDatabaseSnapshotsOfThisTender",
        "CreateWriterInstancesTaggedAsTenders",
        "WritersTakeTheirClustersGroups",
        "OnlyInDatabaseClustersTenderRestored",
    }
    assert expected <= sids, sids
    return out


def role_session(role_name, statements):
    """A session of a role the layer makes (POST /realism/roles) with
    `statements` as its policy, in the emulator's account."""
    code, role = control("POST", "/realism/roles", {"name": role_name, "policy": {"Version": "2012-10-17", "Statement": statements}})
    assert code == 200, role
    sts = ADMIN.client("sts", endpoint_url=ENDPOINT)
    creds = sts.assume_role(RoleArn=role["roleArn"], RoleSessionName="check-iam")["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=REGION,
    )


def denied(call, action, resource, **kwargs):
    """Asserts that `call(**kwargs)` is refused as RDS refuses it for IAM:
    AccessDenied, HTTP 403, naming the IAM action and the resource."""
    try:
        call(**kwargs)
    except ClientError as e:
        error = e.response["Error"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert error["Code"] == "AccessDenied" and status == 403, (call.__name__, error, status)
        message = error["Message"]
        assert f"is not authorized to perform: {action} on resource: {resource}" in message, message
        return message
    raise AssertionError(f"{call.__name__} {kwargs} was accepted, expected AccessDenied for {action} on {resource}")


def check_iam(rds, settings):
    """The controller's RDS statements, evaluated as IAM does for RDS."""
    statements = rds_statements()
    mine = role_session(f"{RUN}-rds-controller", statements).client("rds", endpoint_url=ENDPOINT)
    ok(f"role {RUN}-rds-controller holds the {len(statements)} RDS statements of iam/controller-policy.json")
    arn = lambda kind, name: f"arn:aws:rds:{REGION}:{ACCOUNT}:{kind}:{name}"  # noqa: E731
    tender = lambda what: f"tender-{RUN}-{what}"  # noqa: E731
    cluster_id = {"Key": "tender.dev/cluster-id", "Value": f"cluster-{RUN}"}
    db, spare = name("iam-db"), name("iam-spare")
    instance(rds, db)
    instance(rds, spare)
    before = counters()

    made = mine.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=tender("a"), Tags=[MANAGED, cluster_id])
    assert made["DBSnapshot"]["Status"] == "creating", made
    ok(f"CreateDBSnapshot {tender('a')} tagged tender.dev/managed-by=tender: allowed")
    other = f"other-{RUN}-a"
    message = denied(
        mine.create_db_snapshot,
        "rds:CreateDBSnapshot",
        arn("snapshot", other),
        DBInstanceIdentifier=spare,
        DBSnapshotIdentifier=other,
        Tags=[MANAGED, cluster_id],
    )
    refused(rds.describe_db_snapshots, "DBSnapshotNotFound", DBSnapshotIdentifier=other)
    ok(f"CreateDBSnapshot {other}: AccessDenied, 403 ({message}); nothing made")
    for what, tags in (("untagged", [cluster_id]), ("foreign", [{"Key": MANAGED["Key"], "Value": "someone-else"}, cluster_id])):
        denied(
            mine.create_db_snapshot,
            "rds:AddTagsToResource",
            arn("snapshot", tender(what)),
            DBInstanceIdentifier=spare,
            DBSnapshotIdentifier=tender(what),
            Tags=tags,
        )
        refused(rds.describe_db_snapshots, "DBSnapshotNotFound", DBSnapshotIdentifier=tender(what))
    assert status(rds, spare) == "available", "a refused CreateDBSnapshot backs nothing up"
    ok("CreateDBSnapshot of a tender- name without managed-by=tender (missing, other value): AccessDenied on rds:AddTagsToResource")

    assert mine.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]["DBInstanceIdentifier"] == db
    assert db in [d["DBInstanceIdentifier"] for d in mine.describe_db_instances()["DBInstances"]]
    assert mine.describe_db_snapshots(DBSnapshotIdentifier=tender("a"))["DBSnapshots"][0]["Status"] == "creating"
    manual = mine.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert tender("a") in [x["DBSnapshotIdentifier"] for x in manual], manual
    assert mine.describe_db_snapshots(DBInstanceIdentifier=db)["DBSnapshots"]
    refused(mine.describe_db_snapshots, "DBSnapshotNotFound", DBSnapshotIdentifier=tender("none"))
    ok("DescribeDBInstances and DescribeDBSnapshots (by identifier, by instance, all): allowed; a missing one: DBSnapshotNotFound")

    # Snapshots to delete, made by the account's administrator.
    doomed = {
        "d-both": [MANAGED, cluster_id],
        "d-nocluster": [MANAGED],
        "d-unmanaged": [cluster_id],
    }
    sources = {}
    for what, tags in doomed.items():
        sources[what] = name(f"iam-{what}")
        instance(rds, sources[what])
        rds.create_db_snapshot(DBInstanceIdentifier=sources[what], DBSnapshotIdentifier=tender(what), Tags=tags)
    foreign = f"other-{RUN}-d"
    rds.create_db_snapshot(DBInstanceIdentifier=spare, DBSnapshotIdentifier=foreign, Tags=[MANAGED, cluster_id])
    for snap in [tender(what) for what in doomed] + [foreign]:
        wait_available(lambda snap=snap: snapshot(rds, snap), settings["rds_snapshot"])
    deleted = mine.delete_db_snapshot(DBSnapshotIdentifier=tender("d-both"))["DBSnapshot"]
    assert deleted["Status"] == "deleted", deleted
    ok(f"DeleteDBSnapshot {tender('d-both')} tagged managed-by=tender and cluster-id: allowed")
    for what, why in (("d-nocluster", "without tender.dev/cluster-id"), ("d-unmanaged", "without managed-by=tender")):
        message = denied(mine.delete_db_snapshot, "rds:DeleteDBSnapshot", arn("snapshot", tender(what)), DBSnapshotIdentifier=tender(what))
        assert snapshot(rds, tender(what))["Status"] == "available"
        ok(f"DeleteDBSnapshot {tender(what)} {why}: AccessDenied ({message}); kept")
    denied(mine.delete_db_snapshot, "rds:DeleteDBSnapshot", arn("snapshot", foreign), DBSnapshotIdentifier=foreign)
    assert snapshot(rds, foreign)["Status"] == "available"
    ok(f"DeleteDBSnapshot {foreign} (not a tender- name, tagged as Tender's): AccessDenied; kept")
    refused(mine.delete_db_snapshot, "DBSnapshotNotFound", DBSnapshotIdentifier=tender("gone"))
    ok("DeleteDBSnapshot of a tender- snapshot that does not exist: DBSnapshotNotFound (its tags unknown, not absent)")

    wait_available(lambda: snapshot(rds, tender("a")), settings["rds_snapshot"])
    restored_id = tender("restored")
    restored = mine.restore_db_instance_from_db_snapshot(
        DBSnapshotIdentifier=tender("a"), DBInstanceIdentifier=restored_id, Tags=[MANAGED, cluster_id]
    )["DBInstance"]
    assert restored["DBInstanceIdentifier"] == restored_id, restored
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=restored["DBInstanceArn"])["TagList"]}
    assert tags.get(MANAGED["Key"]) == "tender", tags
    ok(f"RestoreDBInstanceFromDBSnapshot {tender('a')} -> {restored_id} tagged managed-by=tender: allowed")
    unmanaged = tender("restored-untagged")
    denied(
        mine.restore_db_instance_from_db_snapshot,
        "rds:AddTagsToResource",
        arn("db", unmanaged),
        DBSnapshotIdentifier=tender("a"),
        DBInstanceIdentifier=unmanaged,
        Tags=[cluster_id],
    )
    refused(rds.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=unmanaged)
    ok("RestoreDBInstanceFromDBSnapshot tagged without managed-by=tender: AccessDenied on rds:AddTagsToResource for the new db")

    # CreateDBInstance: only an Aurora writer, only into a cluster a
    # RestoreJob made (the cluster's subnet group and the engine's default
    # parameter and option groups authorized as RDS does).
    restore_job = {"Key": "tender.dev/job-kind", "Value": "RestoreJob"}
    ours_cl, yours_cl = name("iam-cl-ours"), name("iam-cl-yours")
    cluster(rds, ours_cl, Tags=[MANAGED, restore_job])
    cluster(rds, yours_cl)
    writer = dict(DBInstanceClass="db.r6g.large", Engine="aurora-postgresql", Tags=[MANAGED, cluster_id])
    made = mine.create_db_instance(DBInstanceIdentifier=name("iam-w-ours"), DBClusterIdentifier=ours_cl, **writer)
    assert made["DBInstance"]["DBClusterIdentifier"] == ours_cl, made
    ok("CreateDBInstance of an Aurora writer tagged managed-by=tender into a cluster tagged as a RestoreJob's: allowed")
    denied(
        mine.create_db_instance,
        "rds:CreateDBInstance",
        arn("cluster", yours_cl),
        DBInstanceIdentifier=name("iam-w-yours"),
        DBClusterIdentifier=yours_cl,
        **writer,
    )
    refused(rds.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=name("iam-w-yours"))
    ok("... into a cluster not tagged as a RestoreJob's: AccessDenied on the cluster; nothing made")
    standalone = name("iam-standalone")
    denied(
        mine.create_db_instance,
        "rds:CreateDBInstance",
        arn("db", standalone),
        DBInstanceIdentifier=standalone,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="x",
        MasterUserPassword="not-the-secret-3",
        AllocatedStorage=20,
        Tags=[MANAGED, cluster_id],
    )
    refused(rds.describe_db_instances, "DBInstanceNotFound", DBInstanceIdentifier=standalone)
    ok("... a standalone (non-Aurora) DB instance, even tagged managed-by=tender: AccessDenied on rds:DatabaseEngine")

    after = counters()
    for action, times in (("rds:CreateDBSnapshot", 1), ("rds:AddTagsToResource", 3), ("rds:DeleteDBSnapshot", 3), ("rds:CreateDBInstance", 2)):
        key = f"denied:{action}"
        assert after.get(key, 0) >= before.get(key, 0) + times, (key, before.get(key), after.get(key))
    ok("counted: denied:rds:CreateDBSnapshot, denied:rds:AddTagsToResource, denied:rds:DeleteDBSnapshot, denied:rds:CreateDBInstance")


def secret_of(secrets, arn):
    return json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])


def back(identifier, port, password, account=ACCOUNT):
    spec = {
        "account": account,
        "region": REGION,
        "dbInstanceIdentifier": identifier,
        "host": "127.0.0.1",
        "port": port,
        "password": password,
    }
    code, answer = control("POST", "/realism/rds/backing", spec)
    assert code == 200, answer
    return answer


def check_backing(rds, settings):
    secrets = ADMIN.client("secretsmanager", endpoint_url=ENDPOINT)
    db = name("backed")
    made = instance(rds, db, ManageMasterUserPassword=True, MasterUserPassword=None)
    arn = made["MasterUserSecret"]["SecretArn"]
    value = secret_of(secrets, arn)
    assert value["username"] == "tender_admin", value
    assert made["Endpoint"]["Address"].endswith(".rds.amazonaws.com"), made["Endpoint"]
    ok(f"unbacked: the managed secret names the MasterUsername ({value['username']}; moto: admin)")
    answer = back(db, 54329, "pw-backed-1")
    assert answer["applied"] and answer["secretArn"] == arn, answer
    described = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    endpoint = described["Endpoint"]
    assert (endpoint["Address"], endpoint["Port"]) == ("127.0.0.1", 54329), endpoint
    assert secret_of(secrets, arn) == {"username": "tender_admin", "password": "pw-backed-1"}, secret_of(secrets, arn)
    ok("POST /realism/rds/backing on an existing instance: Endpoint 127.0.0.1:54329, secret {username, password}")

    snap = name("backedsnap")
    rds.create_db_snapshot(DBInstanceIdentifier=db, DBSnapshotIdentifier=snap)
    wait_available(lambda: snapshot(rds, snap), settings["rds_snapshot"])
    target = name("backed-restore")
    answer = back(target, 54330, "pw-backed-2")
    assert not answer["applied"], answer
    restored = rds.restore_db_instance_from_db_snapshot(
        DBSnapshotIdentifier=snap, DBInstanceIdentifier=target, ManageMasterUserPassword=True
    )["DBInstance"]
    assert restored["Endpoint"]["Address"] == "127.0.0.1" and restored["Endpoint"]["Port"] == 54330, restored
    restored_arn = restored["MasterUserSecret"]["SecretArn"]
    assert restored_arn != arn, restored
    assert secret_of(secrets, restored_arn) == {"username": "tender_admin", "password": "pw-backed-2"}
    ok("a backing named before its instance exists applies to the RestoreDBInstanceFromDBSnapshot target")
    fresh = name("backed-new")
    back(fresh, 54331, "pw-backed-3")
    made = instance(rds, fresh, ManageMasterUserPassword=True, MasterUserPassword=None, MasterUsername="owner")
    assert made["Endpoint"]["Port"] == 54331, made["Endpoint"]
    assert secret_of(secrets, made["MasterUserSecret"]["SecretArn"]) == {"username": "owner", "password": "pw-backed-3"}
    ok("... and to a CreateDBInstance")
    rds.delete_db_instance(DBInstanceIdentifier=fresh, SkipFinalSnapshot=True)
    code, listed = control("GET", "/realism/rds/backing")
    assert code == 200 and fresh not in [b["dbInstanceIdentifier"] for b in listed], listed
    assert db in [b["dbInstanceIdentifier"] for b in listed], listed
    ok("DeleteDBInstance forgets the instance's backing")
    code, answer = control("POST", "/realism/rds/backing", {"dbInstanceIdentifier": db, "host": "127.0.0.1"})
    assert code == 400, (code, answer)
    ok(f"a backing without port or password is refused: {code}")


def check_security_group_changes(rds, settings):
    ec2 = ADMIN.client("ec2", endpoint_url=ENDPOINT)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    first = ec2.create_security_group(GroupName=name("sg-own"), Description="own", VpcId=vpc)["GroupId"]
    extra = ec2.create_security_group(GroupName=name("sg-extra"), Description="extra", VpcId=vpc)["GroupId"]
    db = name("sgdb")
    instance(rds, db, VpcSecurityGroupIds=[first])
    rds.modify_db_instance(DBInstanceIdentifier=db, VpcSecurityGroupIds=[first, extra], ApplyImmediately=False)
    described = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    memberships = {g["VpcSecurityGroupId"]: g["Status"] for g in described["VpcSecurityGroups"]}
    assert described["DBInstanceStatus"] == "modifying", described["DBInstanceStatus"]
    assert memberships == {first: "active", extra: "adding"}, memberships
    ok("ModifyDBInstance VpcSecurityGroupIds: the instance modifying, the new group adding")
    message = refused(rds.modify_db_instance, "InvalidDBInstanceState", DBInstanceIdentifier=db, VpcSecurityGroupIds=[first])
    ok(f"a second change while modifying: InvalidDBInstanceState ({message})")
    deadline = time.monotonic() + settings["rds_modify"] + 3
    while status(rds, db) != "available":
        assert time.monotonic() < deadline, status(rds, db)
        time.sleep(0.25)
    rds.modify_db_instance(DBInstanceIdentifier=db, VpcSecurityGroupIds=[first])
    described = rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]
    memberships = {g["VpcSecurityGroupId"]: g["Status"] for g in described["VpcSecurityGroups"]}
    assert memberships == {first: "active", extra: "removing"}, memberships
    refused(ec2.delete_security_group, "DependencyViolation", GroupId=extra)
    ok("a group being removed is listed removing, and EC2 refuses to delete it (DependencyViolation)")
    while status(rds, db) != "available":
        assert time.monotonic() < deadline + settings["rds_modify"] + 3, status(rds, db)
        time.sleep(0.25)
    ec2.delete_security_group(GroupId=extra)
    ok(f"after {settings['rds_modify']} s: available, only the DB instance's own group; the other one deletable")
    rds.delete_db_instance(DBInstanceIdentifier=db, SkipFinalSnapshot=True)


def main():
    assert ENDPOINT, "usage: check_rds.py ENDPOINT (or AWS_ENDPOINT_URL)"
    settings = control("GET", "/realism/")[1]["settings"]
    assert "rds_snapshot" in settings, "the layer runs without rds.py"
    rds = ADMIN.client("rds", endpoint_url=ENDPOINT)
    west = ADMIN.client("rds", endpoint_url=ENDPOINT, region_name=OTHER_REGION)
    print(f"run {RUN} against {ENDPOINT}", flush=True)
    check_iam(rds, settings)
    ids = check_identity(rds)
    db, snap = check_db_snapshot_states(rds, settings)
    restored_id = check_db_copies(rds, settings, db, snap)
    assert restored_id not in ids, "a restored instance has a DbiResourceId of its own"
    ok(f"a restored instance has a DbiResourceId of its own ({restored_id})")
    cluster_arn = check_clusters(rds, settings)
    encrypted_arn, _ = check_encryption(rds, west, settings)
    check_accounts(rds, settings, snap, encrypted_arn, cluster_arn)
    check_quota(settings)
    check_backing(rds, settings)
    check_security_group_changes(rds, settings)
    print(f"counters: {json.dumps({k: v for k, v in counters().items() if 'rds:' in k})}")
    print("all RDS checks passed")


if __name__ == "__main__":
    main()
