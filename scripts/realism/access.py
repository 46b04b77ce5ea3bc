"""Who is calling, and what their identity policies allow.

moto's own access control (INITIAL_NO_AUTH_ACTION_COUNT) decides whether an
action is allowed; it does not model S3's rule for a missing key: "If you
have the s3:ListBucket permission on the bucket, Amazon S3 returns an HTTP
status code 404 (Not Found) error. If you don't have the s3:ListBucket
permission, Amazon S3 returns an HTTP status code 403 (Access Denied)
error." (S3 API Reference, GetObject and HeadObject, "Permissions"). This
module answers that question for the caller of a request.

The evaluation is AWS's for identity policies (an explicit Deny wins, else
some Allow must match action and resource). A statement with a Condition
counts only when every condition key is in the request context; the
implicit ListBucket check of a GET or HEAD carries no `s3:prefix`, so a
ListBucket grant narrowed by `s3:prefix` does not turn 403 into 404 here.
That is the stricter reading: a grant that works here works on AWS.
"""

import fnmatch

from moto.iam.access_control import CreateAccessKeyFailure, IAMPolicy, create_access_key
from moto.iam.models import get_account_id_from


def access_key(headers):
    auth = headers.get("Authorization", "")
    marker = "Credential="
    if marker not in auth:
        return None
    return auth.split(marker, 1)[1].split("/", 1)[0]


def credential_scope(headers):
    """(region, service) of a SigV4-signed request, or (None, None)."""
    auth = headers.get("Authorization", "")
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
    return [IAMPolicy(p)._policy_json for p in principal.collect_policies()]


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


def _conditions_hold(statement, context):
    for operator, block in (statement.get("Condition") or {}).items():
        for key, expected in block.items():
            if key not in context:
                if operator.endswith("IfExists"):
                    continue
                return False
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


def allowed(policies, action, resource, context=None):
    """Whether identity `policies` allow `action` on `resource`."""
    context = context or {}
    allow = False
    for doc in policies:
        statements = doc.get("Statement", [])
        statements = [statements] if isinstance(statements, dict) else statements
        for st in statements:
            if not (_action_matches(st, action) and _resource_matches(st, resource)):
                continue
            if not _conditions_hold(st, context):
                continue
            if st.get("Effect") == "Deny":
                return False
            allow = True
    return allow


def may_list_bucket(headers, bucket):
    """Whether the caller of a request may list `bucket` (see module doc)."""
    policies = policies_of(headers)
    if policies is None:
        return True
    return allowed(policies, "s3:ListBucket", f"arn:aws:s3:::{bucket}")
