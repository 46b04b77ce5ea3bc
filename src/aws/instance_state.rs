//! [`InstanceState`]: an EC2 instance's state, as EC2 reports it.
//!
//! As DescribeInstances and TerminateInstances report it; statuses keep its
//! EC2 name (`instanceState`).

use std::fmt;

/// The state of an EC2 instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
    /// A state this build does not know (or none reported).
    Unknown(String),
}

impl InstanceState {
    /// The EC2 name: `pending`, `running`, `shutting-down`, …
    pub fn as_str(&self) -> &str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Unknown(name) => name,
        }
    }

    /// True while the instance costs money or could still run a worker.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Running
                | InstanceState::Stopping
                | InstanceState::Stopped
        )
    }

    /// True once the instance is being terminated or is gone.
    pub fn is_going(&self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }

    /// True while the instance is stopping or stopped: it runs no worker.
    pub fn is_stopped(&self) -> bool {
        matches!(self, InstanceState::Stopping | InstanceState::Stopped)
    }
}

impl From<&str> for InstanceState {
    fn from(name: &str) -> Self {
        match name {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            other => InstanceState::Unknown(other.to_string()),
        }
    }
}

impl From<&aws_sdk_ec2::types::InstanceStateName> for InstanceState {
    fn from(name: &aws_sdk_ec2::types::InstanceStateName) -> Self {
        InstanceState::from(name.as_str())
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_names_round_trip() {
        for name in [
            "pending",
            "running",
            "shutting-down",
            "terminated",
            "stopping",
            "stopped",
            "rebooting",
            "",
        ] {
            assert_eq!(InstanceState::from(name).as_str(), name);
        }
        assert!(InstanceState::from("stopped").is_live());
        assert!(!InstanceState::from("shutting-down").is_live());
        assert!(InstanceState::from("terminated").is_going());
        assert!(!InstanceState::from("").is_live());
    }
}
