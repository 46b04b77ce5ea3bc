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


def _conditions_hold(statement, context, absent):
    """Whether a statement's conditions hold. Keys in `context` are checked;
    keys in `absent` are known to be missing from the request (the
    condition fails unless it is ...IfExists); any other key is one the
    test world cannot know, and is taken to hold (actions are enforced here,
    conditions are proven by tests/iam)."""
    for operator, block in (statement.get("Condition") or {}).items():
        for key, expected in block.items():
            if key not in context:
                if key in absent and not operator.endswith("IfExists"):
                    return False
                continue
            expected = [expected] if isinstance(expected, str) else expected
            actual = context[key]
            op = operator.replace("IfExists", "")
            if op in ("StringEquals", "ArnEquals") and actual not in expected:
                return False
            if op in ("StringLike", "ArnLike") and not any(
                fnmatch.fnmatchcase(actual, e) for e in expected
            ):
                return False
    return True


def allowed(policies, action, resource, context=None, absent=()):
    """Whether identity `policies` allow `action` on `resource` (None: any
    resource, when the test world cannot name the one a request acts on)."""
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
                return False
            allow = True
    return allow


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
    and instances (ssm_resources), every other request on its action."""
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
