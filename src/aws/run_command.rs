//! Systems Manager Run Command on a source instance: whether its agent is
//! reachable, sending a command, and following it (#17, restoring files to
//! the original location; docs/design/restore-to-original-location.md).
//!
//! What AWS documents and this follows: an instance is a *managed node*
//! only while its SSM Agent has registered and pings (one that has not
//! is simply absent from DescribeInstanceInformation, and SendCommand
//! refuses it with `InvalidInstanceId`); an invocation is eventually
//! consistent (GetCommandInvocation answers `InvocationDoesNotExist` for a
//! while after SendCommand); SendCommand's `TimeoutSeconds` bounds only the
//! delivery, the document's `executionTimeout` the run; Run Command keeps
//! the first 24 000 characters of standard output.

use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};

use super::operation::AwsOperation;
use super::{AwsClients, AwsError};

/// Run Command in the account `aws` acts in.
pub struct RunCommand<'a> {
    aws: &'a AwsClients,
}

impl AwsClients {
    pub fn run_command(&self) -> RunCommand<'_> {
        RunCommand { aws: self }
    }
}

/// A managed node as Systems Manager sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedNode {
    /// `Online`, `ConnectionLost`, `Inactive`.
    pub ping: String,
    /// `Linux`, `Windows`, `MacOS`.
    pub platform: String,
    /// When the agent last pinged (RFC 3339), if said.
    pub last_ping: Option<String>,
}

impl ManagedNode {
    pub fn online(&self) -> bool {
        self.ping == PingStatus::Online.as_str()
    }

    pub fn windows(&self) -> bool {
        self.platform == "Windows"
    }
}

/// A command to send to one instance.
#[derive(Clone, Debug)]
pub struct Command<'a> {
    pub instance_id: &'a str,
    /// `AWS-RunPowerShellScript` when true, `AWS-RunShellScript` else.
    pub windows: bool,
    /// The script, one command.
    pub script: &'a str,
    /// For finding it again (`ListCommands`), at most 100 characters.
    pub comment: &'a str,
    /// How long it may wait to be delivered (30 s at least).
    pub delivery_timeout_seconds: i32,
    /// How long it may run.
    pub execution_timeout_seconds: u32,
}

/// Where an invocation is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Not visible yet (`InvocationDoesNotExist` right after sending).
    NotYet,
    Seen {
        /// `Pending`, `InProgress`, `Delayed`, `Success`, `Cancelled`,
        /// `TimedOut`, `Failed`, `Cancelling`.
        status: String,
        /// Finer: `Delivery Timed Out`, `Execution Timed Out`,
        /// `Undeliverable`, `Terminated`, ...
        details: String,
        /// The script's exit status; -1 before it ran.
        response_code: i32,
        stdout: String,
        stderr: String,
    },
}

impl Invocation {
    /// Whether it will not change any more.
    pub fn finished(&self) -> bool {
        matches!(self, Self::Seen { status, .. }
            if matches!(status.as_str(), "Success" | "Cancelled" | "TimedOut" | "Failed"))
    }
}

impl RunCommand<'_> {
    /// The instance as a managed node; `None` when no SSM Agent has
    /// registered it (not running, no instance profile allowing
    /// Systems Manager, or no route to its endpoints).
    pub async fn managed_node(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<ManagedNode>, AwsError> {
        let filter = InstanceInformationStringFilter::builder()
            .key("InstanceIds")
            .values(instance_id)
            .build()
            .map_err(|e| AwsError::Unreachable {
                operation: AwsOperation::DescribeInstanceInformation.name(),
                detail: e.to_string(),
            })?;
        let out = self
            .aws
            .call(
                AwsOperation::DescribeInstanceInformation,
                self.aws
                    .ssm(region)
                    .describe_instance_information()
                    .filters(filter)
                    .max_results(5)
                    .send(),
            )
            .await?;
        Ok(out
            .instance_information_list()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
            .map(|i| ManagedNode {
                ping: i
                    .ping_status()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                platform: i
                    .platform_type()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                last_ping: i.last_ping_date_time().map(|t| t.to_string()),
            }))
    }

    /// Sends `command`; its command ID.
    pub async fn send(&self, region: &str, command: &Command<'_>) -> Result<String, AwsError> {
        let op = AwsOperation::SendCommand;
        let document = if command.windows {
            "AWS-RunPowerShellScript"
        } else {
            "AWS-RunShellScript"
        };
        let out = self
            .aws
            .call(
                op,
                self.aws
                    .ssm(region)
                    .send_command()
                    .document_name(document)
                    .instance_ids(command.instance_id)
                    .parameters("commands", vec![command.script.to_string()])
                    .parameters(
                        "executionTimeout",
                        vec![command.execution_timeout_seconds.to_string()],
                    )
                    .timeout_seconds(command.delivery_timeout_seconds)
                    .comment(command.comment)
                    // SendCommand has no idempotency token: a retry after
                    // an answer that was lost would run it twice.
                    .customize()
                    .config_override(
                        aws_sdk_ssm::config::Builder::default()
                            .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled()),
                    )
                    .send(),
            )
            .await?;
        out.command()
            .and_then(|c| c.command_id())
            .map(String::from)
            .ok_or(AwsError::Service {
                operation: op.name(),
                code: "NoCommandId".into(),
                message: "SendCommand answered without a command ID".into(),
            })
    }

    /// Where the command's invocation on `instance_id` is.
    pub async fn invocation(
        &self,
        region: &str,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Invocation, AwsError> {
        let answer = self
            .aws
            .call(
                AwsOperation::GetCommandInvocation,
                self.aws
                    .ssm(region)
                    .get_command_invocation()
                    .command_id(command_id)
                    .instance_id(instance_id)
                    .send(),
            )
            .await;
        let out = match answer {
            Err(e) if e.code() == Some("InvocationDoesNotExist") => return Ok(Invocation::NotYet),
            other => other?,
        };
        Ok(Invocation::Seen {
            status: out
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            details: out.status_details().unwrap_or_default().to_string(),
            response_code: out.response_code(),
            stdout: out
                .standard_output_content()
                .unwrap_or_default()
                .to_string(),
            stderr: out.standard_error_content().unwrap_or_default().to_string(),
        })
    }
}
