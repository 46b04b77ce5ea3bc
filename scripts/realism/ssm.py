"""Systems Manager Run Command as AWS documents it.

moto 5.2.5 has no SSM Agent: every SendCommand "succeeds" at once, on any
document and any instance ID (and, with InstanceIds only, on every instance
of the Region), and DescribeInstanceInformation and ListCommandInvocations
are not implemented. Here:

- A managed node is an EC2 instance, `pending` or `running`, whose agent
  the test harness registered (POST /realism/ssm/agents); its PingStatus
  is what the harness says (Online or ConnectionLost). Other instances are
  absent from DescribeInstanceInformation ("does not return information
  for nodes that are either Stopped or Terminated", SSM API Reference).
- SendCommand refuses as AWS does: InvalidDocument (only AWS-RunShellScript
  and AWS-RunPowerShellScript exist here), InvalidParameters,
  InvalidInstanceId ("Instances [[i-…]] not in a valid state for account
  …") for anything but an Online managed node, UnsupportedPlatformType,
  ValidationException for TimeoutSeconds outside 30..2592000. moto then
  records the command for exactly its InstanceIds, `Pending`; an
  invocation not delivered within TimeoutSeconds becomes TimedOut /
  "Delivery Timed Out" ("If this time is reached and the command hasn't
  already started running, it won't run", SendCommand).
- "The Run Command API follows an eventual consistency model"
  (GetCommandInvocation): for REALISM_SSM_NOT_FOUND_SECONDS after
  SendCommand, GetCommandInvocation answers InvocationDoesNotExist and
  ListCommandInvocations lists nothing of the command.
- The harness plays the agent: GET /realism/ssm/deliver hands it the
  pending invocations of its Online nodes (now InProgress), POST
  /realism/ssm/invocations/<command>/<instance> reports the outcome;
  the command's Status and counts follow ("Understanding command
  statuses", SSM User Guide).
- IAM: SendCommand is authorized on the document and on each instance
  with its tags (access.ssm_resources); the reads on the action.
"""

import datetime
import io
import json
import re

from moto.ec2.models import ec2_backends
from moto.ssm import models as ssm_models
from moto.ssm.models import ssm_backends

import access
from world import World

_world: World = None  # set by install()

# (account, region, instance id) -> the agent the harness registered.
_agents = {}

# AWS's Run Command documents: the platform each runs on, its plugin.
DOCUMENTS = {
    "AWS-RunShellScript": ("Linux", "aws:runShellScript"),
    "AWS-RunPowerShellScript": ("Windows", "aws:runPowerShellScript"),
}
DOCUMENT_PARAMETERS = ("commands", "workingDirectory", "executionTimeout")
# executionTimeout: default 3600, at most 172800 (the documents' parameter).
EXECUTION_TIMEOUT = (3600, 172800)
PLATFORMS = {
    "Linux": ("Amazon Linux", "2023"),
    "Windows": ("Microsoft Windows Server 2022 Datacenter", "10.0.20348"),
}
AGENT_VERSION = "3.3.1142.0"
# StandardOutputContent, StandardErrorContent and a plugin's Output hold
# the first this many characters (the API's shapes).
STDOUT_LIMIT, STDERR_LIMIT, PLUGIN_OUTPUT_LIMIT = 24000, 8000, 2500
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")
# What the harness reports -> the invocation's StatusDetails.
RESULT_DETAILS = {
    "Success": "Success",
    "Failed": "Failed",
    "TimedOut": "Execution Timed Out",
    "Cancelled": "Cancelled",
}
_INSTANCE_ID = re.compile(r"^(i-(\w{8}|\w{17})|mi-\w{17})$")


class _Refusal(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind, self.message = kind, message


def _answer(status, value, kind=None):
    body = json.dumps(value).encode()
    headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", "realism")]
    if kind:
        headers.append(("x-amzn-ErrorType", kind))
    return status, headers + [("Content-Length", str(len(body)))], body


def _error(kind, message):
    """An awsJson 1.1 error as AWS sends it (botocore and the Rust SDK read
    `__type` or the x-amzn-ErrorType header, `message` or `Message`)."""
    return _answer(400, {"__type": kind, "message": message, "Message": message}, kind)


def _ok(value):
    return _answer(200, value)


def _validation(value, member, constraint):
    return _Refusal(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{member}' "
        f"failed to satisfy constraint: {constraint}",
    )


def _not_valid(ids, account):
    """SendCommand's InvalidInstanceId, as AWS words it."""
    listed = ", ".join(ids)
    return _Refusal("InvalidInstanceId", f"Instances [[{listed}]] not in a valid state for account {account}")


def _bounded(params, name, low, high, default):
    value = params.get(name)
    if value is None:
        return default
    member = name[0].lower() + name[1:]
    if not isinstance(value, int) or value < low:
        raise _validation(value, member, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise _validation(value, member, f"Member must have value less than or equal to {high}")
    return value


def _epoch(when):
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _iso(when):
    """GetCommandInvocation's StringDateTime: 2026-12-02T10:00:00.123Z."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# --- managed nodes --------------------------------------------------------


def _instance(account, region, instance_id):
    try:
        return ec2_backends[account][region].get_instance(instance_id)
    except Exception:
        return None


def _node(account, region, instance_id):
    """The agent of a managed node (registered, instance pending or
    running), or None."""
    agent = _agents.get((account, region, instance_id))
    instance = _instance(account, region, instance_id)
    if agent is None or instance is None or instance._state.name not in ("pending", "running"):
        return None
    return agent


def _node_information(account, region, agent):
    """A managed node as DescribeInstanceInformation lists it."""
    instance = _instance(account, region, agent["instanceId"])
    name, version = PLATFORMS[agent["platform"]]
    info = {
        "InstanceId": agent["instanceId"],
        "PingStatus": agent["ping"],
        "LastPingDateTime": agent["lastPing"],
        "AgentVersion": agent["agentVersion"],
        "IsLatestVersion": agent["isLatestVersion"],
        "PlatformType": agent["platform"],
        "PlatformName": agent.get("platformName") or name,
        "PlatformVersion": agent.get("platformVersion") or version,
        "RegistrationDate": agent["registered"],
        "ResourceType": "EC2Instance",
        "SourceId": agent["instanceId"],
        "SourceType": "AWS::EC2::Instance",
    }
    address = getattr(instance, "private_ip", None)
    if address:
        info["IPAddress"] = address
        info["ComputerName"] = f"ip-{address.replace('.', '-')}.ec2.internal"
    return info


def _tags(account, region, instance_id):
    return dict(ec2_backends[account][region].tags.get(instance_id, {}))


def _filters(params, account, region):
    """DescribeInstanceInformation's filters as (key, values) pairs."""
    if params.get("Filters") and params.get("InstanceInformationFilterList"):
        raise _Refusal("InvalidFilterKey", "InstanceInformationFilterList and Filters cannot be used together")
    pairs = [(f.get("Key", ""), f.get("Values") or []) for f in params.get("Filters") or []]
    legacy = params.get("InstanceInformationFilterList") or []
    pairs += [(f.get("key", ""), f.get("valueSet") or []) for f in legacy]
    known = ("InstanceIds", "PingStatus", "PlatformTypes", "AgentVersion", "ResourceType")
    for key, values in pairs:
        if key not in known and not key.startswith("tag:") and key != "tag-key":
            raise _Refusal("InvalidFilterKey", f"The filter key {key} is not valid")
        if not values:
            raise _Refusal("InvalidInstanceInformationFilterValue", f"The filter {key} has no values")
        if key == "InstanceIds":
            _require_instances(values, account, region)
    return pairs


def _require_instances(ids, account, region):
    """InvalidInstanceId for an ID that is no instance of the account: an
    instance without an agent is simply not listed."""
    bad = [i for i in ids if not _INSTANCE_ID.match(i) or _instance(account, region, i) is None]
    if bad:
        raise _not_valid(bad, account)


def _matches(info, tags, key, values):
    if key.startswith("tag:"):
        return tags.get(key[4:]) in values
    if key == "tag-key":
        return any(k in values for k in tags)
    field = {"InstanceIds": "InstanceId", "PlatformTypes": "PlatformType"}.get(key, key)
    return info.get(field) in values


def _page(items, params, name, max_results):
    token = str(params.get("NextToken") or "0")
    if not token.isdigit():
        raise _Refusal("InvalidNextToken", "The specified token is not valid.")
    start = int(token)
    answer = {name: items[start:start + max_results]}
    if start + max_results < len(items):
        answer["NextToken"] = str(start + max_results)
    return answer


def describe_instance_information(params, account, region):
    max_results = _bounded(params, "MaxResults", 5, 50, 10)
    pairs = _filters(params, account, region)
    nodes = []
    for (acc, reg, instance_id), agent in list(_agents.items()):
        if (acc, reg) != (account, region) or _node(account, region, instance_id) is None:
            continue
        info = _node_information(account, region, agent)
        tags = _tags(account, region, instance_id)
        if all(_matches(info, tags, k, v) for k, v in pairs):
            nodes.append(info)
    return _ok(_page(nodes, params, "InstanceInformationList", max_results))


# --- SendCommand ----------------------------------------------------------


def _document_name(name):
    """An AWS document's name, given by name or by ARN."""
    m = re.match(r"^arn:aws:ssm:[^:]*::document/(.+)$", name or "")
    return m.group(1) if m else (name or "")


def _check_parameters(document, parameters):
    if not isinstance(parameters, dict):
        raise _Refusal("InvalidParameters", f"Parameters are not valid for document {document}.")
    unknown = sorted(set(parameters) - set(DOCUMENT_PARAMETERS))
    if unknown:
        raise _Refusal(
            "InvalidParameters", f"document {document} does not support parameters {', '.join(unknown)}."
        )
    commands = parameters.get("commands")
    if not commands or not any(c for c in commands):
        raise _Refusal("InvalidParameters", f"Parameter 'commands' of document {document} is required.")
    timeout = (parameters.get("executionTimeout") or [str(EXECUTION_TIMEOUT[0])])[0]
    if not str(timeout).isdigit() or not 1 <= int(timeout) <= EXECUTION_TIMEOUT[1]:
        raise _Refusal(
            "InvalidParameters",
            f"Parameter 'executionTimeout' of document {document} must be a number of seconds "
            f"from 1 to {EXECUTION_TIMEOUT[1]}.",
        )


def send_command(params, account, region):
    """AWS's refusals; None lets moto record the command (patched below)."""
    _bounded(params, "TimeoutSeconds", 30, 2592000, None)
    ids = params.get("InstanceIds") or []
    if len(ids) > 50:
        raise _validation(ids, "instanceIds", "Member must have length less than or equal to 50")
    if len(params.get("Comment") or "") > 100:
        raise _validation(params["Comment"], "comment", "Member must have length less than or equal to 100")
    if params.get("Targets") or not ids:
        # Targets (tags, resource groups) are not modelled by the layer.
        raise _Refusal("InvalidParameters", "realism: SendCommand needs InstanceIds (Targets are not modelled)")
    document = _document_name(params.get("DocumentName"))
    if document not in DOCUMENTS:
        raise _Refusal("InvalidDocument", f"Document with name {params.get('DocumentName')} does not exist.")
    _check_parameters(document, params.get("Parameters") or {})
    if len(set(ids)) != len(ids):
        raise _Refusal("DuplicateInstanceId", "Instance IDs are duplicated.")
    offline = [i for i in ids if (_node(account, region, i) or {}).get("ping") != "Online"]
    if offline:
        raise _not_valid(offline, account)
    platform = DOCUMENTS[document][0]
    other = [i for i in ids if _agents[(account, region, i)]["platform"] != platform]
    if other:
        raise _Refusal(
            "UnsupportedPlatformType",
            f"The platform type of instances [[{', '.join(other)}]] is not supported by document {document}.",
        )
    return None


def _invocation(command, instance_id, plugin):
    invocation = command.invocation_response(instance_id, plugin)
    invocation.update(
        {
            "DocumentVersion": "$DEFAULT",
            "ResponseCode": -1,
            "ExecutionStartDateTime": "",
            "ExecutionElapsedTime": "",
            "ExecutionEndDateTime": "",
            "Status": "Pending",
            "StatusDetails": "Pending",
            "StandardOutputContent": "",
            "StandardErrorContent": "",
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }
    )
    return invocation


def _pending(command):
    """A command as SendCommand leaves it: nothing delivered yet."""
    plugin = DOCUMENTS.get(_document_name(command.document_name), ("", "aws:runShellScript"))[1]
    with _world.lock:
        command.invocations = [_invocation(command, i, plugin) for i in command.instance_ids]
        # instance id -> (started, ended) of what the harness ran
        command._realism_times = {}
        command.target_count = len(command.instance_ids)
        _settle(command)
    _world.created(command.command_id)
    delivery = command.timeout_seconds * _world.settings.ssm_delivery_timeout_scale
    _world.later(("ssm-delivery", command.command_id), delivery, lambda: _delivery_timed_out(command))


def _delivery_timed_out(command):
    with _world.lock:
        late = [i for i in command.invocations if i["Status"] == "Pending"]
        for invocation in late:
            invocation.update(Status="TimedOut", StatusDetails="Delivery Timed Out")
            _world.count("ssm:delivery-timed-out")
        if late:
            _settle(command)


def _max_errors(command):
    text = str(command.max_errors or "0").strip()
    if text.endswith("%") and text[:-1].isdigit():
        return int(text[:-1]) * len(command.invocations) // 100
    return int(text) if text.isdigit() else 0


def _settle(command):
    """The command's Status, StatusDetails and counts from its invocations
    (CompletedCount: terminal ones; ErrorCount: Failed or Execution Timed
    Out; DeliveryTimedOutCount: Delivery Timed Out, which does not count
    against MaxErrors; a command is Failed once more than MaxErrors
    invocations failed, Incomplete when all ended otherwise)."""
    invocations = command.invocations
    details = [i["StatusDetails"] for i in invocations]
    done = [i for i in invocations if i["Status"] in TERMINAL]
    failed = details.count("Failed")
    execution = details.count("Execution Timed Out")
    delivery = details.count("Delivery Timed Out")
    command.completed_count = len(done)
    command.error_count = failed + execution
    command._realism_delivery_timed_out = delivery
    if len(done) < len(invocations):
        pending = all(i["Status"] == "Pending" for i in invocations)
        command.status = command.status_details = "Pending" if pending else "InProgress"
    elif all(d == "Success" for d in details):
        command.status = command.status_details = "Success"
    elif all(d in ("Success", "Cancelled") for d in details):
        command.status = command.status_details = "Cancelled"
    elif failed + execution > _max_errors(command):
        command.status, command.status_details = (
            ("Failed", "Failed") if failed >= execution else ("TimedOut", "Execution Timed Out")
        )
    elif delivery > _max_errors(command) and delivery + details.count("Success") == len(details):
        command.status, command.status_details = "TimedOut", "Delivery Timed Out"
    else:
        command.status, command.status_details = "Failed", "Incomplete"


def _patch_commands():
    init = ssm_models.Command.__init__
    from_targets = ssm_models.Command._get_instance_ids_from_targets
    response_object = ssm_models.Command.response_object

    def command_init(self, *args, **kwargs):
        requested = list(kwargs.get("instance_ids") or [])
        init(self, *args, **kwargs)
        if not self.targets:
            # In the order given (moto: a set's).
            self.instance_ids = list(dict.fromkeys(requested))
        if not kwargs.get("notification_config"):
            # AWS's answer without one (moto: placeholder values).
            self.notification_config = {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""}
        _pending(self)

    def instance_ids_from_targets(self):
        # moto filters EC2 by no filter at all when there are no Targets:
        # every instance of the Region (moto/ssm/models.py:822).
        return from_targets(self) if self.targets else []

    def command_response(self):
        answer = response_object(self)
        answer["DeliveryTimedOutCount"] = getattr(self, "_realism_delivery_timed_out", 0)
        answer["DocumentVersion"] = "$DEFAULT"
        return answer

    ssm_models.Command.__init__ = command_init
    ssm_models.Command._get_instance_ids_from_targets = instance_ids_from_targets
    ssm_models.Command.response_object = command_response


# --- reading invocations --------------------------------------------------


def _fresh(command_id):
    return _world.fresh(command_id, _world.settings.ssm_not_found)


def get_command_invocation(params, account, region):
    if _fresh(params.get("CommandId") or ""):
        _world.count("ssm:invocation-not-found")
        return _error(
            "InvocationDoesNotExist",
            "An error occurred (InvocationDoesNotExist) when calling the GetCommandInvocation operation",
        )
    return None


def _plugin(command, invocation, region):
    started, ended = command._realism_times.get(invocation["InstanceId"], (None, None))
    output = invocation["StandardOutputContent"]
    if invocation["StandardErrorContent"]:
        output += "\n----------ERROR-------\n" + invocation["StandardErrorContent"]
    plugin = {
        "Name": invocation["PluginName"],
        "Status": invocation["Status"],
        "StatusDetails": invocation["StatusDetails"],
        "ResponseCode": invocation["ResponseCode"],
        "Output": output[:PLUGIN_OUTPUT_LIMIT],
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "OutputS3Region": region,
        "OutputS3BucketName": "",
        "OutputS3KeyPrefix": "",
    }
    if started:
        plugin["ResponseStartDateTime"] = _epoch(started)
    if ended:
        plugin["ResponseFinishDateTime"] = _epoch(ended)
    return plugin


def _listed(command, invocation, region, details):
    return {
        "CommandId": command.command_id,
        "InstanceId": invocation["InstanceId"],
        "InstanceName": "",
        "Comment": command.comment,
        "DocumentName": command.document_name,
        "DocumentVersion": "$DEFAULT",
        "RequestedDateTime": _epoch(command.requested_date_time),
        "Status": invocation["Status"],
        "StatusDetails": invocation["StatusDetails"],
        "TraceOutput": "",
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "CommandPlugins": [_plugin(command, invocation, region)] if details else [],
        "ServiceRole": command.service_role_arn,
        "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
        "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
    }


def _command_filter(command, invocation, key, value):
    if key == "Status":
        return invocation["Status"] == value
    if key == "DocumentName":
        return command.document_name == value
    when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    if key == "InvokedAfter":
        return command.requested_date_time >= when
    return command.requested_date_time <= when


def list_command_invocations(params, account, region):
    max_results = _bounded(params, "MaxResults", 1, 50, 50)
    filters = [(f.get("key", ""), f.get("value", "")) for f in params.get("Filters") or []]
    for key, _value in filters:
        if key not in ("Status", "DocumentName", "InvokedAfter", "InvokedBefore"):
            raise _Refusal("InvalidFilterKey", f"The filter key {key} is not valid for ListCommandInvocations")
    rows = []
    with _world.lock:
        for command in reversed(list(ssm_backends[account][region]._commands)):
            if params.get("CommandId") not in (None, command.command_id) or _fresh(command.command_id):
                continue
            for invocation in command.invocations:
                if params.get("InstanceId") not in (None, invocation["InstanceId"]):
                    continue
                if all(_command_filter(command, invocation, k, v) for k, v in filters):
                    rows.append(_listed(command, invocation, region, bool(params.get("Details"))))
    return _ok(_page(rows, params, "CommandInvocations", max_results))


_OPERATIONS = {
    "DescribeInstanceInformation": describe_instance_information,
    "SendCommand": send_command,
    "GetCommandInvocation": get_command_invocation,
    "ListCommandInvocations": list_command_invocations,
}


def check(environ, headers, region):
    """The layer's answer to an SSM request (an awsJson 1.1 POST whose
    X-Amz-Target names the operation), or None to let moto serve it."""
    operation = (environ.get("HTTP_X_AMZ_TARGET") or "").rsplit(".", 1)[-1]
    handler = _OPERATIONS.get(operation)
    if handler is None:
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        params = json.loads(body or b"{}")
    except ValueError:
        return None
    account, region = access.account_of(headers), region or "us-east-1"
    name = f"ssm:{operation}"
    policies = access.policies_of(headers)
    denied = None if policies is None else access.ssm_denied(policies, name, params, account, region)
    if denied is not None:
        _world.count(f"denied:{name}")
        print(f"realism: denied {name} on {denied} to {access.access_key(headers)}", flush=True)
        return _error("AccessDeniedException", access.ssm_denial_message(headers, name, denied))
    try:
        return handler(params, account, region)
    except _Refusal as refusal:
        _world.count(f"ssm:refused:{refusal.kind}")
        return _error(refusal.kind, refusal.message)


# --- the harness's side (control API) -------------------------------------


def register(spec):
    """POST /realism/ssm/agents: the agent of an instance starts (or
    changes) its ping; ping "Gone" removes it."""
    key = (spec.get("account", "123456789012"), spec.get("region", "us-east-1"), spec["instanceId"])
    ping = spec.get("ping", "Online")
    with _world.lock:
        if ping == "Gone":
            return {"removed": _agents.pop(key, None) is not None}
        if spec.get("platform", "Linux") not in PLATFORMS or ping not in ("Online", "ConnectionLost"):
            raise ValueError("platform is Linux or Windows, ping Online, ConnectionLost or Gone")
        now = _epoch(_utcnow())
        agent = _agents.get(key) or {"registered": now, "lastPing": now}
        agent.update(
            {
                "instanceId": key[2],
                "platform": spec.get("platform", "Linux"),
                "ping": ping,
                "agentVersion": spec.get("agentVersion", AGENT_VERSION),
                "isLatestVersion": bool(spec.get("isLatestVersion", True)),
                "platformName": spec.get("platformName"),
                "platformVersion": spec.get("platformVersion"),
            }
        )
        if ping == "Online":
            agent["lastPing"] = now
        _agents[key] = agent
        return dict(agent, account=key[0], region=key[1])


def unregister(spec):
    """DELETE /realism/ssm/agents: as register with ping "Gone"."""
    return register(dict(spec, ping="Gone"))


def agents(account, region):
    """GET /realism/ssm/agents: the registered agents of account and Region."""
    with _world.lock:
        return [dict(a) for (acc, reg, _i), a in _agents.items() if (acc, reg) == (account, region)]


def deliver(account, region, instance_id=None):
    """GET /realism/ssm/deliver: what the Online agents (of `instance_id`
    only, if given) receive now; those invocations become InProgress."""
    out = []
    with _world.lock:
        for command in list(ssm_backends[account][region]._commands):
            ready = [i for i in command.invocations if _deliverable(account, region, i, instance_id)]
            delivered = [_start(command, i) for i in ready]
            if delivered:
                _settle(command)
                out += delivered
    for _ in out:
        _world.count("ssm:delivered")
    return out


def _deliverable(account, region, invocation, instance_id):
    target = invocation["InstanceId"]
    agent = _node(account, region, target)
    return (
        invocation["Status"] == "Pending"
        and instance_id in (None, target)
        and agent is not None
        and agent["ping"] == "Online"
    )


def _start(command, invocation):
    """The agent received `invocation` and runs it: what it was sent."""
    target, started = invocation["InstanceId"], _utcnow()
    _agents[(command.account_id, command.backend_region, target)]["lastPing"] = _epoch(started)
    command._realism_times[target] = (started, None)
    invocation.update(Status="InProgress", StatusDetails="InProgress", ExecutionStartDateTime=_iso(started))
    parameters = command.parameters or {}
    timeout = (parameters.get("executionTimeout") or [str(EXECUTION_TIMEOUT[0])])[0]
    return {
        "commandId": command.command_id,
        "instanceId": target,
        "documentName": command.document_name,
        "parameters": parameters,
        "executionTimeout": int(timeout),
        "comment": command.comment,
    }


def _find(command_id):
    for _account, regions in list(ssm_backends.items()):
        for _region, backend in list(regions.items()):
            for command in list(backend._commands):
                if command.command_id == command_id:
                    return command
    return None


def report(command_id, instance_id, result):
    """POST /realism/ssm/invocations/<command>/<instance>: the agent's
    outcome. Returns (HTTP status, answer)."""
    status = result.get("status")
    if status not in RESULT_DETAILS:
        return 400, {"error": f"status is one of {', '.join(RESULT_DETAILS)}"}
    command = _find(command_id)
    with _world.lock:
        invocations = command.invocations if command else []
        invocation = next((i for i in invocations if i["InstanceId"] == instance_id), None)
        if invocation is None:
            return 404, {"error": f"no invocation of command {command_id} on {instance_id}"}
        if invocation["Status"] in TERMINAL:
            return 409, {"error": f"invocation already {invocation['Status']} ({invocation['StatusDetails']})"}
        ended = _utcnow()
        started = command._realism_times.get(instance_id, (None, None))[0] or ended
        command._realism_times[instance_id] = (started, ended)
        default_code = {"Success": 0, "Failed": 1}.get(status, -1)
        invocation.update(
            {
                "Status": status,
                "StatusDetails": RESULT_DETAILS[status],
                "ResponseCode": int(result.get("responseCode", default_code)),
                "StandardOutputContent": str(result.get("stdout") or "")[:STDOUT_LIMIT],
                "StandardErrorContent": str(result.get("stderr") or "")[:STDERR_LIMIT],
                "ExecutionStartDateTime": _iso(started),
                "ExecutionEndDateTime": _iso(ended),
                "ExecutionElapsedTime": f"PT{(ended - started).total_seconds():.3f}S",
            }
        )
        _settle(command)
        return 200, {"commandStatus": command.status, "commandStatusDetails": command.status_details}


def control(method, path, query, body):
    """The /realism/ssm/ control API: (HTTP status, JSON answer)."""
    account = query.get("account", "123456789012")
    region = query.get("region", "us-east-1")
    if path == "/realism/ssm/agents":
        if method == "POST":
            return 200, register(body)
        if method == "DELETE":
            return 200, unregister(body or query)
        return 200, agents(account, region)
    if path == "/realism/ssm/deliver":
        return 200, deliver(account, region, query.get("instanceId"))
    m = re.match(r"^/realism/ssm/invocations/([^/]+)/([^/]+)$", path)
    if m and method == "POST":
        return report(m.group(1), m.group(2), body)
    return 404, {"error": f"no {method} {path}"}


def install(world):
    global _world
    _world = world
    _patch_commands()
