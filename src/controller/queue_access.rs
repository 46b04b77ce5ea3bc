//! Who may use a configuration's queue: its access policy, set by the
//! configuration's reconcile after every CreateQueue (issue #13).
//!
//! Workers and controller act in the same account, where identity policies
//! already allow them; so the queue policy does not grant, it *denies*
//! everyone else:
//!
//! - `SendMessage` only with EC2 instance-role credentials of an instance
//!   in the workers' account and region (`ec2:SourceInstanceARN`): the
//!   worker role is inside an instance profile whose role ARN Tender cannot
//!   learn without IAM calls, and any other credentials (an IAM user, a
//!   role session named after a worker's instance) cannot send at all. SQS
//!   then names the sender `<role ID>:<instance ID>`, which the pumps
//!   compare with the worker's instance.
//! - `ReceiveMessage`, `DeleteMessage`, `ChangeMessageVisibility` and
//!   `PurgeQueue` only by the controller: its own identity and the role it
//!   assumes in the workers' account (`aws:userid`, `<role ID>:*` for any
//!   session of a role), with an Allow for its own account when that is
//!   another one.
//!
//! Changing the policy stays open to whoever IAM allows (the controller,
//! with `sqs:SetQueueAttributes` on Tender's tagged queues, and admins).

use serde_json::{Value, json};

use super::{Context, Result};
use crate::aws::AwsClients;
use crate::aws::accounts::CallerIdentity;

/// The actions only the controller may take on a worker queue.
pub const CONTROLLER_ACTIONS: [&str; 4] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:PurgeQueue",
];

/// What a queue's policy is made from.
pub struct QueueAccess<'a> {
    pub region: &'a str,
    pub queue_name: &'a str,
    /// The identity the controller acts as in the workers' account (where
    /// the queue is): the configuration's role session, or its own.
    pub in_workers_account: &'a CallerIdentity,
    /// The controller's own identity (it deletes applied messages with it).
    pub own: &'a CallerIdentity,
}

/// The `aws:userid` pattern of an identity: any session of a role
/// (`AROA…:*`), or exactly an IAM user or account.
fn userid_pattern(identity: &CallerIdentity) -> String {
    match identity.user_id.split_once(':') {
        Some((role, _)) => format!("{role}:*"),
        None => identity.user_id.clone(),
    }
}

/// The partition of an ARN (`aws`, `aws-cn`, `aws-us-gov`).
fn partition(arn: &str) -> &str {
    arn.split(':')
        .nth(1)
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
}

/// The queue's access policy.
pub fn queue_policy(access: &QueueAccess<'_>) -> Value {
    let workers = access.in_workers_account;
    let partition = partition(&workers.arn);
    let (region, account) = (access.region, &workers.account);
    let queue_arn = format!(
        "arn:{partition}:sqs:{region}:{account}:{}",
        access.queue_name
    );
    let instances = format!("arn:{partition}:ec2:{region}:{account}:instance/*");
    let mut readers = vec![userid_pattern(workers)];
    if !readers.contains(&userid_pattern(access.own)) {
        readers.push(userid_pattern(access.own));
    }
    let mut statements = vec![
        json!({
            "Sid": "OnlyInstanceCredentialsSend",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"Null": {"ec2:SourceInstanceARN": "true"}}
        }),
        json!({
            "Sid": "OnlyWorkerInstancesSend",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnNotLike": {"ec2:SourceInstanceARN": instances}}
        }),
        json!({
            "Sid": "OnlyTheControllerReceives",
            "Effect": "Deny",
            "Principal": "*",
            "Action": CONTROLLER_ACTIONS,
            "Resource": queue_arn,
            "Condition": {"StringNotLike": {"aws:userid": readers}}
        }),
    ];
    if access.own.account != workers.account {
        statements.push(json!({
            "Sid": "ControllerReceivesFromItsAccount",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:{partition}:iam::{}:root", access.own.account)},
            "Action": CONTROLLER_ACTIONS,
            "Resource": queue_arn,
            "Condition": {"StringLike": {"aws:userid": userid_pattern(access.own)}}
        }));
    }
    json!({
        "Version": "2012-10-17",
        "Id": format!("{queue_arn}/tender-worker-reports"),
        "Statement": statements
    })
}

/// The statement `sid` of a policy document (reading one back).
pub fn statement<'a>(policy: &'a Value, sid: &str) -> Option<&'a Value> {
    policy["Statement"]
        .as_array()?
        .iter()
        .find(|s| s["Sid"] == sid)
}

/// Sets the queue's policy. `aws` acts in the workers' account as
/// `workers`; the controller's own identity is asked for only when that is
/// an assumed role (`assumes_role`).
pub async fn restrict(
    ctx: &Context,
    aws: &AwsClients,
    (workers, assumes_role): (&CallerIdentity, bool),
    (region, queue_name, queue_url): (&str, &str, &str),
) -> Result<()> {
    let own = match assumes_role {
        true => ctx.aws.caller_identity(region).await?,
        false => workers.clone(),
    };
    let policy = queue_policy(&QueueAccess {
        region,
        queue_name,
        in_workers_account: workers,
        own: &own,
    });
    aws.queues()
        .set_queue_policy(region, queue_url, &policy.to_string())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(account: &str, arn: &str, user_id: &str) -> CallerIdentity {
        CallerIdentity {
            account: account.into(),
            arn: arn.into(),
            user_id: user_id.into(),
        }
    }

    fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
        super::statement(policy, sid).unwrap_or_else(|| panic!("no statement {sid} in {policy:#}"))
    }

    #[test]
    fn workers_send_and_only_the_controller_receives() {
        let controller = identity(
            "111122223333",
            "arn:aws:sts::111122223333:assumed-role/tender-controller/pod-a",
            "AROAEXAMPLECONTROLLER:pod-a",
        );
        let policy = queue_policy(&QueueAccess {
            region: "eu-west-1",
            queue_name: "tender-ns-default-abc",
            in_workers_account: &controller,
            own: &controller,
        });
        let queue = "arn:aws:sqs:eu-west-1:111122223333:tender-ns-default-abc";
        assert_eq!(policy["Version"], "2012-10-17");
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 3, "{policy:#}");
        assert!(statements.iter().all(|s| s["Effect"] == "Deny"));
        assert!(statements.iter().all(|s| s["Resource"] == queue));
        let null = statement(&policy, "OnlyInstanceCredentialsSend");
        assert_eq!(null["Action"], "sqs:SendMessage");
        assert_eq!(null["Condition"]["Null"]["ec2:SourceInstanceARN"], "true");
        let send = statement(&policy, "OnlyWorkerInstancesSend");
        assert_eq!(
            send["Condition"]["ArnNotLike"]["ec2:SourceInstanceARN"],
            "arn:aws:ec2:eu-west-1:111122223333:instance/*"
        );
        let receive = statement(&policy, "OnlyTheControllerReceives");
        assert_eq!(receive["Action"], json!(CONTROLLER_ACTIONS));
        assert_eq!(
            receive["Condition"]["StringNotLike"]["aws:userid"],
            json!(["AROAEXAMPLECONTROLLER:*"])
        );
    }

    #[test]
    fn a_controller_in_another_account_is_allowed_in_by_its_own_id() {
        let assumed = identity(
            "444455556666",
            "arn:aws-cn:sts::444455556666:assumed-role/tender-backup/tender-ns-default",
            "AROAEXAMPLEBACKUPROLE:tender-ns-default",
        );
        let own = identity(
            "111122223333",
            "arn:aws-cn:iam::111122223333:user/tender",
            "AIDAEXAMPLEUSER",
        );
        let policy = queue_policy(&QueueAccess {
            region: "cn-north-1",
            queue_name: "tender-q",
            in_workers_account: &assumed,
            own: &own,
        });
        let receive = statement(&policy, "OnlyTheControllerReceives");
        assert_eq!(
            receive["Resource"],
            "arn:aws-cn:sqs:cn-north-1:444455556666:tender-q"
        );
        assert_eq!(
            receive["Condition"]["StringNotLike"]["aws:userid"],
            json!(["AROAEXAMPLEBACKUPROLE:*", "AIDAEXAMPLEUSER"])
        );
        let allow = statement(&policy, "ControllerReceivesFromItsAccount");
        assert_eq!(allow["Effect"], "Allow");
        assert_eq!(
            allow["Principal"]["AWS"],
            "arn:aws-cn:iam::111122223333:root"
        );
        assert_eq!(
            allow["Condition"]["StringLike"]["aws:userid"],
            "AIDAEXAMPLEUSER"
        );
        assert_eq!(
            statement(&policy, "OnlyWorkerInstancesSend")["Condition"]["ArnNotLike"]["ec2:SourceInstanceARN"],
            "arn:aws-cn:ec2:cn-north-1:444455556666:instance/*"
        );
    }
}
