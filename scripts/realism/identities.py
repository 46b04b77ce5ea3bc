"""IAM identities of the test world: worker roles with their instance
profiles, the credentials EC2 hands an instance through its profile, and
the `SenderId` SQS records for a message.

- `ensure_role` does what `aws iam create-role`, `put-role-policy`,
  `create-instance-profile` and `add-role-to-instance-profile` do, in one
  call for the tests' convenience (POST /realism/roles).
- `instance_credentials` plays the instance metadata service: the
  credentials of a session of the role of the instance's profile, named
  after the instance, as EC2 makes them (GET
  /realism/instance-credentials/<instance-id>).
- SQS records as `SenderId` the caller's identity: `<role ID>:<session>`
  for a role session, the user ID for an IAM user, the account ID for the
  environment's own key (AWS: the account's root).
"""

import json
import threading

from moto.ec2.models import ec2_backends
from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)

_caller = threading.local()


def ensure_role(account, name, policy):
    iam = iam_backends[account]["aws"]
    try:
        role = iam.get_role(name)
    except Exception:
        role = iam.create_role(
            role_name=name,
            assume_role_policy_document=EC2_TRUST,
            path="/",
            permissions_boundary=None,
            description="Tender test world worker role",
            tags=[],
            max_session_duration=3600,
        )
    iam.put_role_policy(name, "tender", policy if isinstance(policy, str) else json.dumps(policy))
    try:
        profile = iam.get_instance_profile(name)
    except Exception:
        profile = iam.create_instance_profile(name=name, path="/", role_names=[], tags=[])
    if not profile.roles:
        iam.add_role_to_instance_profile(name, name)
    return {"roleArn": role.arn, "instanceProfileArn": profile.arn, "roleId": role.id}


def instance_credentials(account, region, instance_id):
    """The instance profile session of `instance_id`, or None without one."""
    instance = ec2_backends[account][region].get_instance(instance_id)
    profile = getattr(instance, "iam_instance_profile", None)
    arn = None
    if isinstance(profile, dict):
        arn = profile.get("Arn") or profile.get("arn")
    elif profile is not None:
        arn = getattr(profile, "arn", None)
    iam = iam_backends[account]["aws"]
    found = None
    for p in iam.get_instance_profiles():
        if arn and p.arn == arn:
            found = p
        elif not arn and isinstance(profile, dict) and p.name == profile.get("Name"):
            found = p
    if found is None or not found.roles:
        return None
    role = found.roles[0]
    session = sts_backends[account]["aws"].assume_role(
        region_name=region,
        role_session_name=instance_id,
        role_arn=role.arn,
        policy=None,
        duration=3600,
        external_id=None,
    )
    return {
        "AccessKeyId": session.access_key_id,
        "SecretAccessKey": session.secret_access_key,
        "Token": session.session_token,
        "RoleArn": role.arn,
    }


def set_caller(headers):
    _caller.headers = headers


def sender_id():
    from access import access_key, account_of
    from moto.iam.access_control import AssumedRoleAccessKey, IAMUserAccessKey, create_access_key

    headers = getattr(_caller, "headers", None) or {}
    key = access_key(headers)
    if key is None:
        return None
    account = account_of(headers)
    try:
        who = create_access_key(account_id=account, partition="aws", access_key_id=key, headers=dict(headers))
    except Exception:
        return account
    iam = iam_backends[account]["aws"]
    try:
        if isinstance(who, AssumedRoleAccessKey):
            return f"{iam.get_role(who._owner_role_name).id}:{who._session_name}"
        if isinstance(who, IAMUserAccessKey):
            return iam.get_user(who._owner_user_name).id
    except Exception:
        return account
    return account


def install(world):
    from moto.sqs import models as sqs_models

    init = sqs_models.Message.__init__

    def message_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        sender = sender_id()
        if sender:
            self.sender_id = sender

    sqs_models.Message.__init__ = message_init
