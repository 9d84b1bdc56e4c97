//! The core's error type, mapped once at the API edge to a stable code and
//! a message that carries the whole cause chain.

use banger_api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store")]
    Store(#[from] crate::store::StoreError),
    #[error("engine")]
    Engine(#[from] crate::engine::EngineError),
    #[error("guest agent")]
    Agent(#[from] crate::agent::AgentError),
    #[error("{message}")]
    Failed { message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn failed(message: impl Into<String>) -> Error {
        Error::Failed {
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Store(
                crate::store::StoreError::DuplicateVm(_)
                | crate::store::StoreError::DuplicateImage(_),
            ) => "conflict",
            Error::Store(crate::store::StoreError::ImageInUse { .. }) => "conflict",
            Error::Store(_) => "internal",
            Error::Engine(_) | Error::Agent(_) => "engine",
            Error::Failed { .. } | Error::Io { .. } => "failed",
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError {
            code: self.code().into(),
            message: chain(self),
        }
    }
}

/// `err: cause: cause`, skipping wrapper messages that add nothing.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && parts.last().is_none_or(|p| p != &s) {
            parts.push(s);
        }
        cur = e.source();
    }
    // Wrapper-only words ("store", "engine") read badly alone at the front.
    if parts.len() > 1 && matches!(parts[0].as_str(), "store" | "engine" | "guest agent") {
        let first = parts.remove(0);
        if first == "guest agent" {
            parts[0] = format!("guest agent: {}", parts[0]);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_reads_as_one_sentence() {
        let e = Error::Io {
            context: "cannot write /x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(chain(&e), "cannot write /x: disk full");
        let e = Error::from(crate::store::StoreError::DuplicateVm("web".into()));
        assert_eq!(e.to_api().code, "conflict");
        assert!(
            e.to_api()
                .message
                .starts_with("a vm named \"web\" already exists")
        );
    }
}
