//! The `Status` object API errors travel in, with Kubernetes' reasons and codes.

use crate::validation::FieldError;
use serde::{Deserialize, Serialize};

/// An API error as Kubernetes shapes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: String,
    pub api_version: String,
    pub status: String,
    pub message: String,
    pub reason: String,
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

impl Status {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Status {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
            details: None,
        }
    }

    /// `pods "web" not found`.
    pub fn not_found(plural: &str, name: &str) -> Status {
        Status::new(404, "NotFound", format!("{plural} {name:?} not found")).with_details(plural, name)
    }

    /// `deployments.apps "web" already exists`.
    pub fn already_exists(resource: &str, name: &str) -> Status {
        Status::new(409, "AlreadyExists", format!("{resource} {name:?} already exists"))
            .with_details(resource, name)
    }

    /// An optimistic-concurrency failure.
    pub fn conflict(resource: &str, name: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"),
        )
        .with_details(resource, name)
    }

    /// `Deployment.apps "web" is invalid: spec.replicas: ...`, with one cause per field.
    pub fn invalid(kind: &str, name: &str, errors: &[FieldError]) -> Status {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let mut s = Status::new(422, "Invalid", format!("{kind} {name:?} is invalid: {}", list.join(", ")));
        s.details = Some(StatusDetails {
            name: Some(name.into()),
            group: None,
            kind: Some(kind.into()),
            causes: errors
                .iter()
                .map(|e| StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: e.message.clone(),
                    field: e.field.clone(),
                })
                .collect(),
        });
        s
    }

    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Status {
        Status::new(403, "Forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(500, "InternalError", message)
    }

    /// A watch from a compacted revision.
    pub fn gone(message: impl Into<String>) -> Status {
        Status::new(410, "Expired", message)
    }

    /// A watch or read from a revision the store has not reached (Kubernetes'
    /// `NewTooLargeResourceVersionError`: 504 Timeout, cause `ResourceVersionTooLarge`).
    pub fn too_large_resource_version(asked: u64, current: u64) -> Status {
        let mut s =
            Status::new(504, "Timeout", format!("Too large resource version: {asked}, current: {current}"));
        s.details = Some(StatusDetails {
            causes: vec![StatusCause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            }],
            ..StatusDetails::default()
        });
        s
    }

    fn with_details(mut self, kind: &str, name: &str) -> Status {
        self.details = Some(StatusDetails {
            name: Some(name.into()),
            kind: Some(kind.into()),
            ..StatusDetails::default()
        });
        self
    }
}
