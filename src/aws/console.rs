//! A worker instance's console output (EC2 GetConsoleOutput): what its
//! user data printed, shown to people when a worker does not start.

use base64::Engine;

use super::instances::Instances;
use super::{AwsError, AwsOperation};

/// How much of the console a status message carries: its last lines, at
/// most this many characters.
pub const TAIL_CHARS: usize = 1200;
/// And at most this many lines.
pub const TAIL_LINES: usize = 12;

impl Instances<'_> {
    /// The instance's console output, newest available; `None` while EC2
    /// has none yet. `Latest` asks Nitro instances for the current buffer
    /// (others post it only at boot, reboot and termination, and refuse
    /// `Latest` with `UnsupportedOperation`: then it is asked without).
    /// "GetConsoleOutput", EC2 API Reference.
    pub async fn console_output(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<String>, AwsError> {
        let ec2 = self.aws.ec2(region);
        let op = AwsOperation::GetConsoleOutput;
        let latest = ec2
            .get_console_output()
            .instance_id(instance_id)
            .latest(true)
            .send();
        let out = match self.aws.call(op, latest).await {
            Ok(out) => out,
            Err(e) if e.code() == Some("UnsupportedOperation") => {
                let posted = ec2.get_console_output().instance_id(instance_id).send();
                self.aws.call(op, posted).await?
            }
            Err(e) => return Err(e),
        };
        Ok(out.output().map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }))
    }
}

/// The last lines of a console output, fit for a status message: control
/// characters (a console carries escape sequences and carriage returns)
/// removed, empty lines dropped, at most [`TAIL_LINES`] lines and
/// [`TAIL_CHARS`] characters, joined with " | ".
pub fn tail(console: &str) -> String {
    let lines: Vec<String> = console
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut picked: Vec<&str> = Vec::new();
    let mut len = 0;
    for line in lines.iter().rev().take(TAIL_LINES) {
        if len + line.len() > TAIL_CHARS {
            break;
        }
        len += line.len() + 3;
        picked.push(line);
    }
    picked.reverse();
    picked.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_readable_lines() {
        let console = "[    0.000] Linux version 6.1\r\n\x1b[0m\ncloud-init: running user data\n\ntender-boot: downloading the worker agent\ntender-boot: error: digest mismatch: the downloaded agent's SHA-256 is 00, expected ff; refusing to run it\n";
        assert_eq!(
            tail(console),
            "[    0.000] Linux version 6.1 | [0m | cloud-init: running user data | tender-boot: downloading the worker agent | tender-boot: error: digest mismatch: the downloaded agent's SHA-256 is 00, expected ff; refusing to run it"
        );
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long);
        assert!(t.ends_with("line 99"), "{t}");
        assert_eq!(t.split(" | ").count(), TAIL_LINES);
        let wide = format!("{}\nlast\n", "x".repeat(5000));
        assert_eq!(tail(&wide), "last");
        assert_eq!(tail(""), "");
    }
}
