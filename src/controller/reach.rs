//! What jobs saw of their workers' way to AWS, per WorkerConfiguration: a
//! worker lost before its first message never reached SQS, which says more
//! about the network than any route table. The configuration's reconcile
//! shows it in `NetworkReady` until a worker of it is heard from again.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use crate::api::WorkerConfiguration;

/// Notes per configuration name, and a way to wake its reconcile.
pub struct WorkerReach {
    notes: Mutex<HashMap<String, String>>,
    wake: UnboundedSender<ObjectRef<WorkerConfiguration>>,
}

impl WorkerReach {
    pub fn new(wake: UnboundedSender<ObjectRef<WorkerConfiguration>>) -> Self {
        Self {
            notes: Mutex::default(),
            wake,
        }
    }

    /// A worker of `config` was lost before its first message.
    pub fn lost_unheard(&self, config: &str, message: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.insert(config.to_string(), message.clone()) != Some(message) {
            let _ = self.wake.unbounded_send(ObjectRef::new(config));
        }
    }

    /// A worker of `config` reported: its workers reach SQS.
    pub fn heard(&self, config: &str) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.remove(config).is_some() {
            let _ = self.wake.unbounded_send(ObjectRef::new(config));
        }
    }

    /// What was last seen of `config`'s workers not reaching AWS.
    pub fn note(&self, config: &str) -> Option<String> {
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        notes.get(config).cloned()
    }
}
