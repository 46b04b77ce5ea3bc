"""Who is calling, and what their identity policies allow.

moto's own access control (INITIAL_NO_AUTH_ACTION_COUNT) decides whether an
action is allowed; it does not model S3's rule for a missing key: "If you
have the s3:ListBucket permission on the bucket, Amazon S3 returns an HTTP
status code 404 (Not Found) error. If you don't have the s3:ListBucket
permission, Amazon S3 returns an HTTP status code 403 (Access Denied)
error." (S3 API Reference, GetObject and HeadObject, "Permissions"). This
module answers that question for the caller of a request.

The evaluation is AWS's for identity policies (an explicit Deny wins, else
some Allow must match action and resource). The implicit ListBucket check
of a GET or HEAD is made with `s3:prefix` set to the requested key, so a
grant narrowed by `s3:prefix` answers 404 for missing keys it covers and
403 for the others: what ceph's S3 compatibility suite checks against S3
(`test_head_object_404_with_policy_prefix`, ceph/s3-tests).
"""

import fnmatch
import warnings

from moto.iam.access_control import CreateAccessKeyFailure, IAMPolicy, create_access_key
from moto.iam.models import get_account_id_from


def _authorization(headers):
    """The request's SigV4 Authorization, or one made of a presigned URL's
    X-Amz-Credential (server.py copies it into a header)."""
    presigned = headers.get("X-Realism-Presigned-Credential")
    if presigned and not headers.get("Authorization"):
        return f"AWS4-HMAC-SHA256 Credential={presigned}"
    return headers.get("Authorization", "")


def access_key(headers):
    auth = _authorization(headers)
    marker = "Credential="
    if marker not in auth:
        return None
    return auth.split(marker, 1)[1].split("/", 1)[0]


def credential_scope(headers):
    """(region, service) of a SigV4-signed request, or (None, None)."""
    auth = _authorization(headers)
    marker = "Credential="
    if marker not in auth:
        return None, None
    parts = auth.split(marker, 1)[1].split(",", 1)[0].split("/")
    return (parts[2], parts[3]) if len(parts) >= 4 else (None, None)


def account_of(headers):
    key = access_key(headers)
    return get_account_id_from(key) if key else "123456789012"


def policies_of(headers):
    """The caller's identity policies, or None when the caller is not an IAM
    identity of the emulator (the environment's own administrator key)."""
    key = access_key(headers)
    if key is None:
        return None
    account = get_account_id_from(key)
    try:
        principal = create_access_key(
            account_id=account, partition="aws", access_key_id=key, headers=dict(headers)
        )
    except CreateAccessKeyFailure:
        return None
    except KeyError:
        return None
    try:
        return [IAMPolicy(p)._policy_json for p in principal.collect_policies()]
    except Exception:
        # A session of a role the emulator never had (moto's AssumeRole
        # does not check that the role exists): nothing to evaluate.
        return None


def _action_matches(statement, action):
    if "NotAction" in statement:
        pats = statement["NotAction"]
        pats = [pats] if isinstance(pats, str) else pats
        return not any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in pats)
    pats = statement.get("Action", [])
    pats = [pats] if isinstance(pats, str) else pats
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in pats)


def _resource_matches(statement, resource):
    if "NotResource" in statement:
        pats = statement["NotResource"]
        pats = [pats] if isinstance(pats, str) else pats
        return not any(fnmatch.fnmatchcase(resource, p) for p in pats)
    pats = statement.get("Resource", [])
    pats = [pats] if isinstance(pats, str) else pats
    return any(fnmatch.fnmatchcase(resource, p) for p in pats)


_NEGATED = ("StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike", "StringNotEqualsIgnoreCase")


def _value_matches(op, actual, expected):
    """Whether one value of a condition key satisfies `op` (the operator
    without its set or IfExists part) against the policy's values."""
    if op in ("StringEquals", "ArnEquals", "StringNotEquals", "ArnNotEquals"):
        return actual in expected
    if op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return actual.lower() in [e.lower() for e in expected]
    if op in ("StringLike", "ArnLike", "StringNotLike", "ArnNotLike"):
        return any(fnmatch.fnmatchcase(actual, e) for e in expected)
    if op == "Bool":
        return str(actual).lower() in [str(e).lower() for e in expected]
    return True  # an operator the test world does not evaluate


def _conditions_hold(statement, context, absent):
    """Whether a statement's conditions hold. Keys in `context` are checked;
    keys in `absent` are known to be missing from the request (the
    condition fails unless it is ...IfExists, a negated operator or
    `Null: true`); any other key is one the test world cannot know, and is
    taken to hold (actions are enforced here, conditions are proven by
    tests/iam). Condition key names are matched case-insensitively, as
    IAM does; a list value is a multivalued key (aws:TagKeys), for
    ForAllValues: / ForAnyValue:."""
    known = {k.lower(): v for k, v in context.items()}
    for operator, block in (statement.get("Condition") or {}).items():
        quantifier, _, op = operator.rpartition(":")
        if_exists = op.endswith("IfExists")
        op = op[: -len("IfExists")] if if_exists else op
        for key, expected in block.items():
            expected = [expected] if isinstance(expected, (str, bool)) else expected
            expected = [str(e).lower() if isinstance(e, bool) else e for e in expected]
            present = key.lower() in known
            if op == "Null":
                is_absent = not present and (key in absent or key.lower() in absent)
                if not present and not is_absent:
                    continue  # cannot know
                if ("true" in expected) != (not present):
                    return False
                continue
            if not present:
                if key in absent or key.lower() in absent:
                    if not (if_exists or op in _NEGATED or quantifier == "ForAllValues"):
                        return False
                continue
            actual = known[key.lower()]
            values = actual if isinstance(actual, list) else [actual]
            matches = [_value_matches(op, v, expected) for v in values]
            negated = op in _NEGATED
            if quantifier == "ForAllValues":
                ok = all((not m) if negated else m for m in matches)
            elif quantifier == "ForAnyValue" or isinstance(actual, list):
                ok = any((not m) if negated else m for m in matches)
            else:
                ok = (not matches[0]) if negated else matches[0]
            if not ok:
                return False
    return True


def decision(policies, action, resource, context=None, absent=()):
    """AWS's verdict for identity `policies` on `action` on `resource`
    (None: any resource, when the test world cannot name the one a request
    acts on): "allow", "deny" (an explicit Deny) or "implicit" (no Allow)."""
    context = context or {}
    allow = False
    for doc in policies:
        statements = doc.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else statements
        for st in statements:
            if not _action_matches(st, action):
                continue
            if resource is not None and not _resource_matches(st, resource):
                continue
            if resource is None and st.get("Effect") == "Deny" and (
                st.get("Condition") or st.get("Resource", "*") != "*" or "NotResource" in st
            ):
                # A Deny scoped by condition or resource, on a request whose
                # resource the test world cannot name: cannot tell.
                continue
            if not _conditions_hold(st, context, absent):
                continue
            if st.get("Effect") == "Deny":
                return "deny"
            allow = True
    return "allow" if allow else "implicit"


def allowed(policies, action, resource, context=None, absent=()):
    """Whether identity `policies` allow `action` on `resource` (None: any
    resource, when the test world cannot name the one a request acts on)."""
    return decision(policies, action, resource, context, absent) == "allow"


def caller_arn(headers):
    """The ARN of the caller's IAM identity, or its access key when the
    emulator cannot name one (for AccessDenied messages)."""
    key = access_key(headers)
    try:
        return create_access_key(
            account_id=get_account_id_from(key), partition="aws", access_key_id=key, headers=dict(headers)
        ).arn
    except Exception:
        return key


class _TagKeys:
    """The `ssm:resourceTag/<key>` condition keys: a resource's tags are
    known, so a key not among them is absent (see _conditions_hold)."""

    def __contains__(self, key):
        return key.lower().startswith("ssm:resourcetag/")


def ssm_resources(action, params, account, region):
    """What SSM authorizes `action` on: (resource ARN, condition keys)
    pairs, or None for an action matched on the action only (the reads).
    SendCommand is authorized on its document and on each instance, with
    the instance's tags as `ssm:resourceTag/<key>` ("Restricting Run
    Command access based on tags", SSM User Guide); AWS's own documents
    have no account in their ARN."""
    if action != "ssm:SendCommand":
        return None
    name = params.get("DocumentName") or ""
    if name.startswith("arn:"):
        document = name
    elif name.startswith("AWS-"):
        document = f"arn:aws:ssm:{region}::document/{name}"
    else:
        document = f"arn:aws:ssm:{region}:{account}:document/{name}"
    out = [(document, {})]
    from moto.ec2.models import ec2_backends

    tags = ec2_backends[account][region].tags
    for instance_id in params.get("InstanceIds") or []:
        context = {f"ssm:resourceTag/{k}": v for k, v in tags.get(instance_id, {}).items()}
        out.append((f"arn:aws:ec2:{region}:{account}:instance/{instance_id}", context))
    return out


def ssm_denied(policies, action, params, account, region):
    """The resource on which `policies` refuse SSM `action` with `params`
    (the request's JSON), `*` for an action refused as such, or None when
    the call is allowed."""
    resources = ssm_resources(action, params, account, region)
    if resources is None:
        return None if allowed(policies, action, None) else "*"
    for resource, context in resources:
        if not allowed(policies, action, resource, context, _TagKeys()):
            return resource
    return None


def ssm_denial_message(headers, action, resource):
    where = "" if resource in (None, "*") else f" on resource: {resource}"
    return f"User: {caller_arn(headers)} is not authorized to perform: {action}{where}"


class _Known:
    """Condition keys the test world knows every value of (a request's
    tags, an existing resource's tags): one of them that is not in the
    context is absent (see _conditions_hold). Prefixes end with `/`."""

    def __init__(self, prefixes=(), keys=()):
        self.prefixes = tuple(p.lower() for p in prefixes)
        self.keys = {k.lower() for k in keys}

    def __contains__(self, key):
        key = key.lower()
        return key in self.keys or (bool(self.prefixes) and key.startswith(self.prefixes))


# RDS resource types and the condition key of their tags (Service
# Authorization Reference, "Resource types defined by Amazon RDS").
_RDS_TAG_KEYS = {
    "db": "rds:db-tag/",
    "snapshot": "rds:snapshot-tag/",
    "cluster": "rds:cluster-tag/",
    "cluster-snapshot": "rds:cluster-snapshot-tag/",
    "og": "rds:og-tag/",
    "pg": "rds:pg-tag/",
    "cluster-pg": "rds:cluster-pg-tag/",
    "subgrp": "rds:subgrp-tag/",
    "secgrp": "rds:secgrp-tag/",
    "es": "rds:es-tag/",
    "ri": "rds:ri-tag/",
}


def _rds_arn(kind, name, account, region):
    """The ARN RDS authorizes for resource `name` (an identifier, stored in
    lower case by RDS, or already an ARN) of type `kind`."""
    if name.startswith("arn:"):
        return name
    return f"arn:aws:rds:{region}:{account}:{kind}:{name.lower()}"


def _rds_resource(arn):
    """The emulator's RDS resource that `arn` names, or None."""
    try:
        from moto.rds.models import rds_backends

        _, _, _, region, account, kind, name = arn.split(":", 6)
        if "*" in name:
            return None
        return rds_backends[account][region]._find_resource(kind, name)
    except Exception:
        return None


def _rds_resource_context(arn, new):
    """The condition keys of the resource `arn` names: aws:ResourceTag/<key>
    and rds:<type>-tag/<key> from the tags of a resource that exists, whose
    other tag keys are then absent; nothing is known of a resource the
    request creates or of one the emulator does not have (moto answers
    for those: not found, already exists)."""
    found = None if new else _rds_resource(arn)
    if found is None:
        return {}, ()
    kind = arn.split(":", 6)[5]
    context = {}
    for tag in found.get_tags() or []:
        context[f"aws:ResourceTag/{tag['Key']}"] = tag["Value"]
        if kind in _RDS_TAG_KEYS:
            context[f"{_RDS_TAG_KEYS[kind]}{tag['Key']}"] = tag["Value"]
    return context, ("aws:ResourceTag/",) + tuple(_RDS_TAG_KEYS.values())


def _rds_request_context(tags):
    """The request's tags as aws:RequestTag/<key>, rds:req-tag/<key> and
    aws:TagKeys; the request is all there is, so any other is absent."""
    context = {}
    for tag in tags:
        context[f"aws:RequestTag/{tag['Key']}"] = tag.get("Value", "")
        context[f"rds:req-tag/{tag['Key']}"] = tag.get("Value", "")
    if tags:
        context["aws:TagKeys"] = [t["Key"] for t in tags]
    return context, ("aws:RequestTag/", "rds:req-tag/"), ("aws:TagKeys",)


def _restored_groups(params, snapshot_arn):
    """The option group, parameter group and subnet group a restored DB
    instance gets: those the request names, else the ones RDS would use
    (the snapshot's subnet group and option group in its own account, the
    engine's defaults otherwise). Those it cannot tell are left out."""
    groups = {
        "og": params.get("OptionGroupName"),
        "pg": params.get("DBParameterGroupName"),
        "subgrp": params.get("DBSubnetGroupName"),
    }
    snapshot = _rds_resource(snapshot_arn) if snapshot_arn else None
    source = getattr(snapshot, "database", None)
    if source is not None:
        try:
            own = snapshot.account_id == source.account_id
            version = str(source.engine_version).split(".")
            suffix = version[0] + (f"-{version[1]}" if len(version) > 1 else "")
            default_og = f"default:{source.engine}-{suffix}"
            if not groups["og"]:
                supplied = getattr(source, "option_group_supplied", False)
                groups["og"] = source.option_group_name if (own and supplied) else default_og
            if not groups["pg"]:
                groups["pg"] = source.default_db_parameter_group_details()[1]
            if not groups["subgrp"]:
                groups["subgrp"] = (getattr(source, "db_subnet_group_name", None) if own else None) or "default"
        except Exception:
            pass
    return {kind: name for kind, name in groups.items() if name}


def rds_checks(action, params, account, region):
    """What IAM evaluates for RDS API `action` (rds:<operation>) with
    `params`: (IAM action, resource ARN, condition keys, known keys)
    tuples, each of which must be allowed, or None for an action matched on
    the action alone. From the Service Authorization Reference for Amazon
    RDS (list_amazonrds): CreateDBSnapshot on db* and snapshot*,
    DeleteDBSnapshot on snapshot*, RestoreDBInstanceFromDBSnapshot on db*,
    og*, pg*, subgrp* and the snapshot (or cluster-snapshot) it names,
    ModifyDBInstance on db, DescribeDBInstances on db, DescribeDBSnapshots on db and snapshot
    (none named: every one, `...:db:*` / `...:snapshot:*`); for clusters
    CreateDBClusterSnapshot on cluster* and cluster-snapshot*,
    DeleteDBClusterSnapshot on cluster-snapshot*, DescribeDBClusters on
    cluster, DescribeDBClusterSnapshots on cluster and cluster-snapshot,
    RestoreDBClusterFromSnapshot on cluster*, cluster-snapshot*, subgrp,
    cluster-pg and og, CreateDBInstance on db* (with rds:DatabaseEngine),
    cluster, subgrp, pg and og (a cluster's instance that names none gets
    the cluster's subnet group and the engine's defaults);
    AddTagsToResource
    on the resource it tags; aws:RequestTag, aws:TagKeys and rds:req-tag
    from the request, aws:ResourceTag and rds:<type>-tag from the resource.
    "If tags are specified in the create action, RDS performs additional
    authorization on the rds:AddTagsToResource action" (RDS User Guide,
    "Grant permission to tag Amazon RDS resources during creation"): on the
    new snapshot or DB instance."""
    tags = params.get("Tags") or []
    request, request_prefixes, request_keys = _rds_request_context(tags)

    def arn(kind, name):
        return _rds_arn(kind, str(name), account, region)

    def check(resource, iam_action=action, new=False, extra=None):
        context, prefixes = _rds_resource_context(resource, new)
        context = {**request, **context, **(extra or {})}
        return iam_action, resource, context, _Known(request_prefixes + prefixes, request_keys)

    def tagging(resource):
        return [check(resource, "rds:AddTagsToResource", new=True, extra={"rds:TagsFromRequest": "true"})] if tags else []

    if action == "rds:CreateDBSnapshot":
        snapshot = arn("snapshot", params.get("DBSnapshotIdentifier") or "")
        db = arn("db", params.get("DBInstanceIdentifier") or "")
        return [check(db), check(snapshot, new=True)] + tagging(snapshot)
    if action == "rds:DeleteDBSnapshot":
        return [check(arn("snapshot", params.get("DBSnapshotIdentifier") or ""))]
    if action == "rds:DescribeDBInstances":
        name = params.get("DBInstanceIdentifier")
        return [check(arn("db", name) if name else f"arn:aws:rds:{region}:{account}:db:*")]
    if action == "rds:DescribeDBSnapshots":
        out = []
        if params.get("DBSnapshotIdentifier"):
            out.append(check(arn("snapshot", params["DBSnapshotIdentifier"])))
        if params.get("DBInstanceIdentifier"):
            out.append(check(arn("db", params["DBInstanceIdentifier"])))
        return out or [check(f"arn:aws:rds:{region}:{account}:snapshot:*")]
    if action == "rds:RestoreDBInstanceFromDBSnapshot":
        db = arn("db", params.get("DBInstanceIdentifier") or "")
        out = [check(db, new=True)]
        snapshot = None
        if params.get("DBSnapshotIdentifier"):
            snapshot = arn("snapshot", params["DBSnapshotIdentifier"])
            out.append(check(snapshot))
        if params.get("DBClusterSnapshotIdentifier"):
            out.append(check(arn("cluster-snapshot", params["DBClusterSnapshotIdentifier"])))
        for kind, name in _restored_groups(params, snapshot).items():
            out.append(check(arn(kind, name)))
        return out + tagging(db)
    if action == "rds:CreateDBClusterSnapshot":
        snapshot = arn("cluster-snapshot", params.get("DBClusterSnapshotIdentifier") or "")
        cluster = arn("cluster", params.get("DBClusterIdentifier") or "")
        return [check(cluster), check(snapshot, new=True)] + tagging(snapshot)
    if action == "rds:DeleteDBClusterSnapshot":
        return [check(arn("cluster-snapshot", params.get("DBClusterSnapshotIdentifier") or ""))]
    if action == "rds:DescribeDBClusters":
        name = params.get("DBClusterIdentifier")
        return [check(arn("cluster", name) if name else f"arn:aws:rds:{region}:{account}:cluster:*")]
    if action == "rds:DescribeDBClusterSnapshots":
        out = []
        if params.get("DBClusterSnapshotIdentifier"):
            out.append(check(arn("cluster-snapshot", params["DBClusterSnapshotIdentifier"])))
        if params.get("DBClusterIdentifier"):
            out.append(check(arn("cluster", params["DBClusterIdentifier"])))
        return out or [check(f"arn:aws:rds:{region}:{account}:cluster-snapshot:*")]
    if action == "rds:RestoreDBClusterFromSnapshot":
        cluster = arn("cluster", params.get("DBClusterIdentifier") or "")
        out = [check(cluster, new=True), check(arn("cluster-snapshot", params.get("SnapshotIdentifier") or ""))]
        if params.get("DBSubnetGroupName"):
            out.append(check(arn("subgrp", params["DBSubnetGroupName"])))
        if params.get("DBClusterParameterGroupName"):
            out.append(check(arn("cluster-pg", params["DBClusterParameterGroupName"])))
        if params.get("OptionGroupName"):
            out.append(check(arn("og", params["OptionGroupName"])))
        return out + tagging(cluster)
    if action == "rds:CreateDBInstance":
        db = arn("db", params.get("DBInstanceIdentifier") or "")
        # rds:DatabaseEngine is a condition key of the db resource type.
        out = [check(db, new=True, extra={"rds:DatabaseEngine": params.get("Engine") or ""})]
        groups = {
            "subgrp": params.get("DBSubnetGroupName"),
            "pg": params.get("DBParameterGroupName"),
            "og": params.get("OptionGroupName"),
        }
        if params.get("DBClusterIdentifier"):
            cluster = arn("cluster", params["DBClusterIdentifier"])
            out.append(check(cluster))
            # What RDS gives a cluster's instance that names none: the
            # cluster's subnet group and the engine's default parameter
            # and option groups, which IAM authorizes as if named.
            found = _rds_resource(cluster)
            if found is not None:
                engine = str(getattr(found, "engine", ""))
                version = str(getattr(found, "engine_version", "")).split(".")
                family = version[0] if "postgres" in engine else ".".join(version[:2])
                groups["subgrp"] = groups["subgrp"] or getattr(found, "db_subnet_group_name", None) or "default"
                groups["pg"] = groups["pg"] or f"default.{engine}{family}"
                groups["og"] = groups["og"] or f"default:{engine}-{'-'.join(version[:2])}"
        for kind, name in groups.items():
            if name:
                out.append(check(arn(kind, name)))
        return out + tagging(db)
    if action == "rds:ModifyDBInstance":
        return [check(arn("db", params.get("DBInstanceIdentifier") or ""))]
    if action == "rds:AddTagsToResource":
        resource = params.get("ResourceName") or ""
        return [check(resource, extra={"rds:TagsFromRequest": "true"})]
    return None


def rds_denied(policies, action, params, account, region):
    """The first of rds_checks that `policies` refuse, as (IAM action,
    resource, verdict), `(action, "*", verdict)` for an action refused as
    such, or None when the call is allowed."""
    checks = rds_checks(action, params, account, region)
    if checks is None:
        verdict = decision(policies, action, None)
        return None if verdict == "allow" else (action, "*", verdict)
    for iam_action, resource, context, known in checks:
        verdict = decision(policies, iam_action, resource, context, known)
        if verdict != "allow":
            return iam_action, resource, verdict
    return None


def rds_denial_message(headers, action, resource, verdict):
    """AWS's AccessDenied message for an RDS call (the identity-based
    policy wording of "Troubleshoot access denied error messages", IAM User
    Guide)."""
    where = "" if resource in (None, "*") else f" on resource: {resource}"
    why = (
        "with an explicit deny in an identity-based policy"
        if verdict == "deny"
        else f"because no identity-based policy allows the {action} action"
    )
    return f"User: {caller_arn(headers)} is not authorized to perform: {action}{where} {why}"


def rds_access_denied(response, message):
    """RDS's AccessDenied as its query API answers it: HTTP 403 and
    <ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>...
    serialized by moto's own RDS serializer, like its other RDS errors."""
    from moto.core.responses import ActionResult
    from moto.rds.exceptions import RDSClientError
    from werkzeug.exceptions import HTTPException

    error = RDSClientError("AccessDenied", message)
    with warnings.catch_warnings():
        # AccessDenied is a common error, not one of the RDS model's shapes.
        warnings.simplefilter("ignore")
        _status, headers, body = response.serialized(ActionResult(error))
    content_type = "text/xml"
    for key, value in dict(headers).items():
        if key.lower() == "content-type":
            content_type = value
    response.response_headers["Content-Type"] = content_type

    class RdsAccessDenied(HTTPException):
        code = 403

        def __init__(self):
            super().__init__(description=body)

    return RdsAccessDenied()


def bucket_owner(bucket):
    from moto.s3.models import s3_backends

    for account, partitions in list(s3_backends.items()):
        backend = partitions.get("aws") if hasattr(partitions, "get") else None
        if backend is not None and bucket in backend.buckets:
            return account
    return None


def may_list_bucket(headers, bucket, key):
    """Whether the caller of a GET or HEAD of `key` may list `bucket` for
    it (see module doc)."""
    policies = policies_of(headers)
    if policies is None:
        return True
    context = {"s3:ResourceAccount": bucket_owner(bucket) or "", "s3:prefix": key}
    return allowed(policies, "s3:ListBucket", f"arn:aws:s3:::{bucket}", context)


def _s3_context(response, resource):
    """The S3 condition keys the test world knows for a request, and those
    it knows the request lacks."""
    bucket = resource.split(":::", 1)[-1].split("/", 1)[0]
    context = {"s3:ResourceAccount": bucket_owner(bucket) or ""}
    prefix = response.querystring.get("prefix")
    if prefix is not None:
        context["s3:prefix"] = prefix[0] if isinstance(prefix, list) else prefix
    return context, {"s3:prefix"}


# API operations authorized by another action ("Actions, resources, and
# condition keys" of each service): a batch by its single action, S3's
# HeadBucket by s3:ListBucket.
_AUTHORIZED_AS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "s3:HeadBucket": "s3:ListBucket",
    "s3:SelectObject": "s3:GetObject",
}


def install(world):
    """Enforces the actions of IAM identities' policies (users and assumed
    roles the emulator knows); the environment's own key stays an
    administrator. moto's own enforcement (INITIAL_NO_AUTH_ACTION_COUNT)
    would need every caller to be an IAM identity and matches every
    non-S3 request against the resource `*`; here S3 requests are matched
    against their bucket and key, SSM's SendCommand against its document
    and instances (ssm_resources), the RDS operations Tender calls against
    their resources with their tag condition keys (rds_checks), every other
    request on its action."""
    from moto.core.authorization import ActionAuthenticatorMixin

    def authorize(self, iam_request_cls, resource="*"):
        headers = dict(self.headers)
        policies = policies_of(headers)
        if policies is None:
            return
        _region, service = credential_scope(headers)
        action = self._get_action()
        name = f"{service}:{action}"
        name = _AUTHORIZED_AS.get(name, name)
        if name == "sts:GetCallerIdentity":
            return
        if service == "s3" and _is_delete_objects(self, resource):
            # Authorized key by key (`delete_objects` below), as S3 does.
            return
        if service == "s3":
            context, absent = _s3_context(self, resource)
            ok = allowed(policies, name, resource, context, absent)
        elif service == "ssm":
            params = {k: self._get_param(k) for k in ("DocumentName", "InstanceIds")}
            denied = ssm_denied(policies, name, params, account_of(headers), _region or "us-east-1")
            ok, resource = denied is None, denied or resource
        elif service == "rds":
            params = getattr(self, "params", None) or {}
            region = _region or getattr(self, "region", None) or "us-east-1"
            refused = rds_denied(policies, name, params, account_of(headers), region)
            if refused is None:
                return
            denied_action, resource, verdict = refused
            world.count(f"denied:{denied_action}")
            print(
                f"realism: denied {denied_action} on {resource} ({name}) to {access_key(headers)}",
                flush=True,
            )
            raise rds_access_denied(self, rds_denial_message(headers, denied_action, resource, verdict))
        else:
            ok = allowed(policies, name, None)
        if ok:
            return
        world.count(f"denied:{name}")
        print(f"realism: denied {name} on {resource} to {access_key(headers)}", flush=True)
        if service == "s3":
            from moto.s3.exceptions import S3AccessDeniedError

            raise S3AccessDeniedError()
        if service == "ssm":
            # A JSON service: AWS answers AccessDeniedException in its JSON.
            from moto.core.exceptions import JsonRESTError

            raise JsonRESTError("AccessDeniedException", ssm_denial_message(headers, name, resource))
        from moto.core.exceptions import AccessDeniedError

        raise AccessDeniedError(user_arn=access_key(headers), action=name)

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize
    _install_delete_objects(world)


def _is_delete_objects(response, resource):
    """A DeleteObjects request (POST /<bucket>?delete), which moto
    authorizes as s3:DeleteObject on the bucket."""
    return (
        "/" not in resource.split(":::", 1)[-1]
        and "delete" in getattr(response, "querystring", {})
        and response._get_action() == "DeleteObject"
    )


def _install_delete_objects(world):
    """DeleteObjects as S3 authorizes it: s3:DeleteObject is checked for
    each key, the request itself needs nothing more, and a key the caller
    may not delete is answered in the 200 response's Errors as
    AccessDenied while the others are deleted ("DeleteObjects",
    "Permissions", S3 API Reference). moto checks only the bucket policy
    per key, so identity policies are applied here."""
    from xml.sax.saxutils import escape

    import xmltodict
    from moto.s3.responses import S3Response

    original = S3Response._bucket_response_delete_keys

    def delete_keys(self, bucket_name, authenticated=True):
        policies = policies_of(dict(self.headers))
        if policies is None or not authenticated:
            return original(self, bucket_name, authenticated)
        body = xmltodict.parse(self.body, strip_whitespace=False)
        objects = body["Delete"].get("Object", [])
        if not isinstance(objects, list):
            objects = [objects]
        context = {"s3:ResourceAccount": bucket_owner(bucket_name) or ""}
        denied = [
            o["Key"]
            for o in objects
            if not allowed(
                policies, "s3:DeleteObject", f"arn:aws:s3:::{bucket_name}/{o['Key']}", context
            )
        ]
        if not denied:
            return original(self, bucket_name, authenticated)
        for key in denied:
            world.count("denied:s3:DeleteObject")
            print(f"realism: denied s3:DeleteObject on {bucket_name}/{key}", flush=True)
        kept = [o for o in objects if o["Key"] not in denied]
        if not kept:
            # Every key denied: moto's unauthenticated path answers each
            # with AccessDenied.
            return original(self, bucket_name, False)
        body["Delete"]["Object"] = kept
        self.body = xmltodict.unparse(body).encode()
        status, headers, text = original(self, bucket_name, authenticated)
        errors = "".join(
            f"<Error><Key>{escape(k)}</Key><Code>AccessDenied</Code>"
            f"<Message>Access Denied</Message></Error>"
            for k in denied
        )
        if isinstance(text, bytes):
            text = text.decode()
        text = text.replace("</DeleteResult>", errors + "</DeleteResult>", 1)
        if isinstance(headers, dict):
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        return status, headers, text

    S3Response._bucket_response_delete_keys = delete_keys
